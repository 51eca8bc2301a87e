"""Sealed sender end to end: three clients and a real relay (docs/threat-model.md,
"What the relay still learns"). After 1:1 and group messages the relay's database,
WAL and log hold no sender for sealed mail and no group id; forged, expired and
misattributed certificates are refused and reported by the recipient."""

from __future__ import annotations

import base64
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.crypto import SigningKey
from app.net import OutgoingEnvelope
from app.protocol.content import FRAME_PAIRWISE, Text, encode_content, encode_frame
from app.protocol.identity import DeviceIdentity, RemoteBundle
from app.protocol.sealed import SenderCertificate, access_key, seal
from app.protocol.session import Session
from app.services.account import open_messenger
from app.services.client import Client
from app.services.sealing import CERTIFICATE_EXPIRES
from tests.relay.helpers import client
from tests.services.helpers import Person, on_core, wait_for
from tests.support.components import RelayProcess

NAMES = ("alice", "bob", "carol")


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    created = {name: Person(tmp_path, name, relay, sealed=True) for name in NAMES}
    yield created
    for someone in created.values():
        with contextlib.suppress(RuntimeError):  # already stopped by the test
            someone.stop()


def _texts(person: Person, title: str) -> list[str]:
    match = [c for c in person.client.conversations().result() if c.title == title]
    if not match:
        return []
    _view, messages = person.client.open_conversation(match[0].conversation_id).result()
    return [m.body for m in messages if not m.system]


def _conversation_id(person: Person, title: str) -> int:
    wait_for(
        lambda: any(c.title == title for c in person.client.conversations().result()),
        what=f"{person.name} has {title}",
    )
    return next(
        c.conversation_id for c in person.client.conversations().result() if c.title == title
    )


def _holds_keys(person: Person, peers: list[str]) -> bool:
    sealing = person.client.messenger.sealing
    held = on_core(person, lambda: [sealing.peer_access(peer, 1) for peer in peers])
    return all(held) and on_core(person, sealing.certificate) is not None


def _sealed_total(relay: RelayProcess) -> float:
    metrics = requests.get(f"{relay.url}/metrics", verify=str(relay.ca_file), timeout=5).text
    name = "relay_sealed_envelopes_total"
    lines = [line for line in metrics.splitlines() if line.startswith(name)]
    return sum(float(line.split()[-1]) for line in lines)


def _warm_up(member: Person) -> None:
    member_group = _conversation_id(member, "First")
    wait_for(lambda: "from alice" in _texts(member, "First"), what="warm-up")
    member.client.send_text(member_group, f"from {member.name}").result(20)


def _wait_for_keys(person: Person) -> None:
    others = [n for n in NAMES if n != person.name]
    wait_for(lambda: _holds_keys(person, others), what=f"{person.name}'s keys")
    wait_for(
        lambda: {"from alice", "from bob", "from carol"} <= set(_texts(person, "First")),
        what=f"{person.name} has the warm-up",
    )


def test_the_relay_keeps_no_sender_and_no_group_id(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob, carol = (people[name] for name in NAMES)
    # Warm-up: a direct chat and a group share everyone's profile key (the first
    # messages go authenticated: nobody holds a delivery token yet).
    direct = alice.client.start_direct("bob").result(20)
    alice.client.send_text(direct.conversation_id, "hi bob").result(20)
    wait_for(lambda: _texts(bob, "alice") == ["hi bob"], what="bob receives")
    bob_direct = bob.client.start_direct("alice").result(20)
    bob.client.send_text(bob_direct.conversation_id, "hi alice").result(20)
    first = alice.client.create_group("First", ["bob", "carol"]).result(20)
    alice.client.send_text(first.conversation_id, "from alice").result(20)
    for member in (bob, carol):
        _warm_up(member)
    for person in (alice, bob, carol):
        _wait_for_keys(person)
    sealed_before = _sealed_total(relay)

    # Carol goes offline, so what is sent to her stays on the relay to be looked at.
    carol.stop()
    second = alice.client.create_group("Second", ["bob", "carol"]).result(20)
    conversation = on_core(
        alice, lambda: alice.client.messenger.store.conversations.get(second.conversation_id)
    )
    assert conversation is not None and conversation.group_id
    group_id = conversation.group_id
    alice.client.send_text(second.conversation_id, "sealed to the group").result(20)
    wait_for(lambda: "sealed to the group" in _texts(bob, "Second"), what="bob gets it sealed")
    bob.client.send_text(_conversation_id(bob, "Second"), "sealed reply").result(20)
    wait_for(lambda: "sealed reply" in _texts(alice, "Second"), what="alice gets bob's reply")
    alice.client.send_text(direct.conversation_id, "sealed 1:1").result(20)
    wait_for(lambda: "sealed 1:1" in _texts(bob, "alice"), what="bob gets the 1:1")
    alice_to_carol = alice.client.start_direct("carol").result(20)
    alice.client.send_text(alice_to_carol.conversation_id, "sealed to carol").result(20)
    # Sent sealed: the relay counted them, and every envelope waiting for Carol
    # (group messages from two senders, a 1:1, group updates) has no sender.
    assert _sealed_total(relay) - sealed_before >= 6
    database = sqlite3.connect(relay.data_dir / "relay.sqlite3")
    carol_id = database.execute("SELECT id FROM accounts WHERE username = 'carol'").fetchone()[0]

    def waiting() -> list[tuple[object, object]]:
        return database.execute(
            "SELECT sender, sender_device FROM envelopes WHERE account_id = ?", (carol_id,)
        ).fetchall()

    wait_for(lambda: len(waiting()) >= 4, what="mail waits for carol")
    time.sleep(1)  # anything still in flight lands
    rows = waiting()
    database.close()
    assert rows and all(row == (None, None) for row in rows), rows
    # Nowhere in the relay's files: not the database, its WAL, or the log.
    encodings = [group_id, group_id.hex().encode(), base64.b64encode(group_id)]
    files = [relay.data_dir / name for name in ("relay.sqlite3", "relay.sqlite3-wal", "relay.log")]
    for path in files:
        if path.exists():
            data = path.read_bytes()
            assert not any(encoded in data for encoded in encodings), path.name
    log = (relay.data_dir / "relay.log").read_bytes()
    for name in NAMES:
        assert name.encode() not in log


def test_forged_expired_and_misattributed_certificates_are_refused(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob = people["alice"], people["bob"]
    direct = alice.client.start_direct("bob").result(20)
    alice.client.send_text(direct.conversation_id, "hello").result(20)
    wait_for(lambda: _texts(bob, "alice") == ["hello"], what="bob receives")
    wait_for(lambda: bool(on_core(alice, alice.client.messenger.sealing.certificate)), what="cert")
    bob_sealing = bob.client.messenger.sealing
    token = access_key(on_core(bob, bob_sealing.profile_key))
    wait_for(lambda: on_core(bob, lambda: bob_sealing.access_due() is None), what="registered")
    bob_identity = on_core(bob, lambda: bob.client.messenger.identity.public)
    alice_identity = on_core(alice, lambda: alice.client.messenger.identity.public)
    alice_certificate = on_core(alice, alice.client.messenger.sealing.certificate)
    assert alice_certificate is not None
    now = int(time.time() * 1000)

    # Mallory starts a session with Bob under her own identity key ...
    rogue = DeviceIdentity.generate()
    fetcher = client(relay)
    fetcher.register("mallory", "laptop")
    bundle = RemoteBundle.from_fetched_device(fetcher.fetch_keys("bob")["devices"][0])
    text = Text(str(uuid.uuid4()), now, "I am alice", 0)
    frame = encode_frame(
        FRAME_PAIRWISE, Session.initiate(rogue, bundle).encrypt(encode_content(text))
    )
    relay_key = SigningKey(bytes.fromhex((relay.data_dir / "sender-certificate.key").read_text()))
    forged = SenderCertificate.issue(
        SigningKey.generate(), "alice", 1, alice_identity.to_bytes(), now + 3_600_000
    )
    expired = SenderCertificate.issue(relay_key, "alice", 1, alice_identity.to_bytes(), now - 1)
    sealed = {
        # ... and wraps it in Alice's genuine certificate: the identities differ.
        "IdentityMismatch": seal(bob_identity, alice_certificate, frame),
        "CertificateError": seal(bob_identity, forged.to_bytes(), frame),
        "ExpiredCertificate": seal(bob_identity, expired.to_bytes(), frame),
    }
    stranger = client(relay)
    answers = stranger.send_sealed(
        [OutgoingEnvelope(uuid.uuid4().hex, "bob", 1, body, token) for body in sealed.values()]
    )
    assert set(answers.values()) == {"queued"}

    def reasons() -> list[str]:
        return [q.reason for q in on_core(bob, bob.client.messenger.store.quarantine.all)]

    wait_for(lambda: sorted(reasons()) == sorted(sealed), what="bob refuses all three")
    assert bob.client.undecryptable == 3
    # Nothing of Mallory's reached a chat, under Alice's name or any other.
    assert _texts(bob, "alice") == ["hello"]
    assert [c.title for c in bob.client.conversations().result()] == ["alice"]


def _outbox_empty(person: Person) -> bool:
    return not on_core(person, lambda: person.client.messenger.store.outbox.pending(50))


def test_a_typing_indicator_to_a_contact_with_a_token_goes_sealed(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hi bob").result(20)
    wait_for(lambda: _texts(bob, "alice") == ["hi bob"], what="bob receives")
    bob_chat = _conversation_id(bob, "alice")
    bob.client.accept_request(bob_chat).result(20)  # typing: contacts only
    bob.client.send_text(bob_chat, "hi alice").result(20)
    wait_for(lambda: _texts(alice, "bob") == ["hi bob", "hi alice"], what="alice receives")
    wait_for(lambda: _holds_keys(alice, ["bob"]), what="alice holds bob's token")
    wait_for(lambda: _outbox_empty(alice), what="alice's outbox")
    wait_for(lambda: _outbox_empty(bob), what="bob's outbox")
    time.sleep(0.5)  # receipts still in flight land before counting

    sealed_before = _sealed_total(relay)
    assert alice.client.send_typing(chat.conversation_id, True).result(20) == 1
    assert _sealed_total(relay) == sealed_before + 1

    def bob_sees_typing() -> bool:
        return any(
            getattr(e, "sender", None) == "alice" and getattr(e, "started", None) is True
            for e in list(bob.events)
        )

    wait_for(bob_sees_typing, what="bob sees alice typing")

    # With Bob offline the indicator waits on the relay: stored without a sender.
    bob.stop()
    assert alice.client.send_typing(chat.conversation_id, False).result(20) == 1
    assert _sealed_total(relay) == sealed_before + 2
    database = sqlite3.connect(relay.data_dir / "relay.sqlite3")
    bob_id = database.execute("SELECT id FROM accounts WHERE username = 'bob'").fetchone()[0]
    rows = database.execute(
        "SELECT sender, sender_device FROM envelopes WHERE account_id = ?", (bob_id,)
    ).fetchall()
    database.close()
    assert rows and all(row == (None, None) for row in rows), rows


def test_a_device_added_after_the_key_was_shared_gets_it_before_the_next_message(
    people: dict[str, Person], relay: RelayProcess, tmp_path: Path
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hi bob").result(20)
    wait_for(lambda: _texts(bob, "alice") == ["hi bob"], what="bob receives")
    bob_sealing = bob.client.messenger.sealing
    wait_for(lambda: on_core(bob, lambda: bob_sealing.peer_access("alice", 1)), what="bob's key")
    wait_for(lambda: _outbox_empty(alice), what="alice's outbox")

    # Bob adds a second device after Alice shared her key with his first one.
    phone = bob.add_device(tmp_path, relay, sealed=True)
    people["bob-phone"] = phone  # stopped by the fixture
    phone_device = phone.client.messenger.device_id
    assert phone_device != 1
    # Alice learns of it (a new session to it) and writes again.
    alice.client.start_direct("bob").result(20)
    sessions = alice.client.messenger.store.sessions
    assert on_core(alice, lambda: sessions.devices("bob")) == [1, phone_device]
    alice.client.send_text(chat.conversation_id, "on every device").result(20)

    wait_for(lambda: "on every device" in _texts(phone, "alice"), what="the phone receives")
    phone_sealing = phone.client.messenger.sealing
    assert on_core(phone, lambda: phone_sealing.peer_access("alice", 1)) == access_key(
        on_core(alice, alice.client.messenger.sealing.profile_key)
    )
    # Once per device: nothing is due again, for either device.
    alice_sealing = alice.client.messenger.sealing
    assert on_core(alice, lambda: alice_sealing.devices_to_share("bob")) == []


def test_a_typing_indicator_whose_token_is_refused_goes_authenticated(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hi bob").result(20)
    wait_for(lambda: _texts(bob, "alice") == ["hi bob"], what="bob receives")
    bob_chat = _conversation_id(bob, "alice")
    bob.client.accept_request(bob_chat).result(20)  # typing: contacts only
    bob.client.send_text(bob_chat, "hi alice").result(20)
    wait_for(lambda: _texts(alice, "bob") == ["hi bob", "hi alice"], what="alice receives")
    wait_for(lambda: _holds_keys(alice, ["bob"]), what="alice holds bob's token")
    wait_for(lambda: _outbox_empty(alice), what="alice's outbox")
    wait_for(lambda: _outbox_empty(bob), what="bob's outbox")

    # Alice holds a wrong key for Bob (as if he had changed his since): the relay
    # refuses the token it gives.
    sealing = alice.client.messenger.sealing
    on_core(alice, lambda: sealing.set_peer_profile_key("bob", 1, bytes(32)))
    assert on_core(alice, lambda: sealing.peer_access("bob", 1)) is not None
    sealed_before = _sealed_total(relay)
    assert alice.client.send_typing(chat.conversation_id, True).result(20) == 1

    def bob_sees_typing() -> bool:
        return any(
            getattr(e, "sender", None) == "alice" and getattr(e, "started", None) is True
            for e in list(bob.events)
        )

    wait_for(bob_sees_typing, what="bob sees alice typing")
    assert _sealed_total(relay) == sealed_before  # it went authenticated
    assert on_core(alice, lambda: sealing.peer_access("bob", 1)) is None  # forgotten


# ---- sealed channels (docs/protocol.md §11) ---------------------------------------
def _restart(person: Person) -> None:
    """Stops the client (unless it is already) and opens the same profile again, as
    a relaunch does."""
    with contextlib.suppress(RuntimeError):  # stopped before, to go offline
        person.stop()
    messenger = open_messenger(person.profile, f"{person.name} passphrase")
    person.client = Client(messenger, person.profile.relay(timeout=3), tick_seconds=0.2)
    person.client.set_listener(person.events.append)
    person.client.start()


def _mailbox(relay: RelayProcess, username: str) -> list[tuple[int, bytes, object, object]]:
    """(seq, body, sender, sender device) of what waits for `username` on the relay."""
    database = sqlite3.connect(relay.data_dir / "relay.sqlite3")
    try:
        account = database.execute(
            "SELECT id FROM accounts WHERE username = ?", (username,)
        ).fetchone()[0]
        rows = database.execute(
            "SELECT seq, body, sender, sender_device FROM envelopes WHERE account_id = ?"
            " ORDER BY seq",
            (account,),
        ).fetchall()
    finally:
        database.close()
    return [(row[0], bytes(row[1]), row[2], row[3]) for row in rows]


def _contacts_with_keys(alice: Person, bob: Person) -> int:
    """Alice and Bob write to each other until each holds the other's delivery token;
    then Alice's channel to Bob is dropped, so her next copy opens a new one.
    Returns Alice's chat with Bob."""
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hi bob").result(20)
    wait_for(lambda: _texts(bob, "alice") == ["hi bob"], what="bob receives")
    bob_chat = _conversation_id(bob, "alice")
    bob.client.accept_request(bob_chat).result(20)
    bob.client.send_text(bob_chat, "hi alice").result(20)
    wait_for(lambda: _texts(alice, "bob") == ["hi bob", "hi alice"], what="alice receives")
    wait_for(lambda: _holds_keys(alice, ["bob"]), what="alice holds bob's token")
    wait_for(lambda: _outbox_empty(alice) and _outbox_empty(bob), what="outboxes")
    time.sleep(0.5)  # receipts still in flight land
    channels = alice.client.messenger.store.sealed_channels
    on_core(alice, lambda: channels.delete_send_channel("bob", 1))
    return chat.conversation_id


def _send(person: Person, chat: int, text: str) -> None:
    person.client.send_text(chat, text).result(20)
    wait_for(lambda: _outbox_empty(person), what=f"{text!r} leaves the outbox")


def _common_run(first: bytes, second: bytes, length: int = 8) -> bool:
    runs = {first[i : i + length] for i in range(len(first) - length + 1)}
    return any(second[i : i + length] in runs for i in range(len(second) - length + 1))


def test_messages_after_the_first_go_over_a_channel_that_survives_restarts(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = _contacts_with_keys(alice, bob)
    bob.stop()  # what Alice sends waits on the relay, to be looked at
    for text in ("one", "two", "three"):
        _send(alice, chat, text)
    waiting = _mailbox(relay, "bob")
    assert waiting and all((sender, device) == (None, None) for _s, _b, sender, device in waiting)
    bodies = [body for _seq, body, _sender, _device in waiting]
    # The first opens the channel (a version 1 envelope, ephemeral key and
    # certificate inside); the others carry only a tag. (A receipt or other
    # automatic copy that follows goes over the channel too.)
    assert len(bodies) >= 3
    assert [body[0] for body in bodies] == [1] + [2] * (len(bodies) - 1)
    for index, first in enumerate(bodies):
        for second in bodies[index + 1 :]:
            assert not _common_run(first[1:], second[1:])

    _restart(alice)  # the sending end's chain key and index come back from the store
    _send(alice, chat, "four")
    after_restart = _mailbox(relay, "bob")
    assert len(after_restart) > len(bodies)
    assert [body[0] for _s, body, _x, _y in after_restart] == [1] + [2] * (len(after_restart) - 1)
    assert after_restart[-1][1][1:17] not in {body[1:17] for body in bodies}

    _restart(bob)
    wait_for(
        lambda: _texts(bob, "alice") == ["hi bob", "hi alice", "one", "two", "three", "four"],
        what="bob opens the opener and the channel envelopes",
    )
    _restart(bob)  # the receiving end's window comes back from the store
    _send(alice, chat, "five")
    wait_for(lambda: "five" in _texts(bob, "alice"), what="bob opens after a restart")
    assert bob.client.undecryptable == 0
    assert on_core(bob, bob.client.messenger.store.quarantine.all) == []


def test_replayed_and_unknown_channel_envelopes_are_refused(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = _contacts_with_keys(alice, bob)
    token = access_key(on_core(bob, bob.client.messenger.sealing.profile_key))
    bob.stop()
    for text in ("one", "two", "three", "four"):
        _send(alice, chat, text)
    recorded = [body for _seq, body, _s, _d in _mailbox(relay, "bob")]
    assert len(recorded) >= 4
    assert [body[0] for body in recorded] == [1] + [2] * (len(recorded) - 1)
    recorded = recorded[:4]
    _restart(bob)
    expected = ["hi bob", "hi alice", "one", "two", "three", "four"]
    wait_for(lambda: _texts(bob, "alice") == expected, what="bob receives")
    quarantined_before = len(on_core(bob, bob.client.messenger.store.quarantine.all))
    replayed_before = bob.client.replayed
    reported_before = bob.client.replayed + bob.client.undecryptable

    # The relay sends what it recorded again, in another order, and a channel
    # envelope whose tag no channel expects.
    replays = [recorded[2], recorded[0], recorded[3], recorded[1]]
    unknown = bytes([2]) + bytes(16) + recorded[1][17:]
    stranger = client(relay)
    answers = stranger.send_sealed(
        [OutgoingEnvelope(uuid.uuid4().hex, "bob", 1, body, token) for body in [*replays, unknown]]
    )
    assert set(answers.values()) == {"queued"}
    wait_for(
        lambda: bob.client.replayed + bob.client.undecryptable == reported_before + 5,
        what="bob reports all five",
    )
    time.sleep(0.5)
    # Nothing delivered twice, nothing in any chat.
    assert _texts(bob, "alice") == expected
    assert [c.title for c in bob.client.conversations().result()] == ["alice"]
    reasons = [q.reason for q in on_core(bob, bob.client.messenger.store.quarantine.all)]
    new = reasons[quarantined_before:]
    # The unknown tag is quarantined as refused; the replayed channel envelopes are
    # reported as replays (quarantined under that name until the messenger drops a
    # ReplayError from a sealed envelope as it does a ratchet replay), and the
    # replayed opener's inner message is a ratchet replay.
    assert new.count("UnknownChannelTag") == 1
    assert set(new) <= {"UnknownChannelTag", "ChannelReplay"}
    assert new.count("ChannelReplay") + bob.client.replayed - replayed_before == 4
    # A new channel message still opens: the window was not disturbed.
    _send(alice, chat, "five")
    wait_for(lambda: _texts(bob, "alice") == [*expected, "five"], what="bob receives five")


def test_expiry_and_a_changed_identity_end_a_channel(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = _contacts_with_keys(alice, bob)
    for text in ("one", "two"):
        _send(alice, chat, text)
    expected = ["hi bob", "hi alice", "one", "two"]
    wait_for(lambda: _texts(bob, "alice") == expected, what="bob receives")
    bob_store = bob.client.messenger.store

    def reasons() -> list[str]:
        return [q.reason for q in on_core(bob, bob_store.quarantine.all)]

    # Bob's copy of the certificate the channel is bound to has expired: a channel
    # envelope under it is refused as an expired certificate would be.
    on_core(bob, lambda: bob_store.execute("UPDATE sealed_receive_channels SET expires = 1"))
    _send(alice, chat, "three")
    wait_for(lambda: "ExpiredCertificate" in reasons(), what="bob refuses the expired channel")
    assert _texts(bob, "alice") == expected

    # Alice's certificate expires: she fetches a new one, and her next copy is a
    # fresh version 1 envelope that opens a new channel bound to it.
    sealing = alice.client.messenger.sealing
    old = on_core(alice, sealing.certificate)
    on_core(alice, lambda: alice.client.messenger.store.settings.set(CERTIFICATE_EXPIRES, 1))
    bob.stop()
    _send(alice, chat, "four")
    assert on_core(alice, sealing.certificate) not in (None, old)
    assert [body[0] for _s, body, _x, _y in _mailbox(relay, "bob")] == [1]
    _restart(bob)
    wait_for(lambda: _texts(bob, "alice")[-1:] == ["four"], what="bob opens the new channel")
    _send(alice, chat, "five")  # on the new channel
    wait_for(lambda: _texts(bob, "alice")[-1:] == ["five"], what="bob receives five")

    # Bob's session with Alice's device now belongs to another identity (as after
    # a reinstall): a channel envelope certified for Alice's old identity does not
    # lend her name to it.
    bob_store = bob.client.messenger.store
    rogue = DeviceIdentity.generate().public.to_bytes()

    def swap_identity() -> None:
        state = bob_store.sessions.get("alice", 1)
        assert state is not None
        session = Session.from_bytes(state)
        session.remote_identity = rogue
        bob_store.sessions.save("alice", 1, session.to_bytes(), now=int(time.time() * 1000))

    on_core(bob, swap_identity)
    _send(alice, chat, "six")
    wait_for(lambda: "IdentityMismatch" in reasons(), what="bob refuses the mismatch")
    assert "six" not in _texts(bob, "alice")
