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
