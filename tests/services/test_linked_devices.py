"""One account on two devices, and a relay that adds devices of its own (issue #19;
docs/protocol.md §13, docs/threat-model.md "Devices").

Real relay, real clients: Alice links a phone (the account identity and a device
list naming it come from her laptop), Bob writes to both; the relay, with
Alice's token, registers a device of its own and tries to get read and to be
believed."""

from __future__ import annotations

import base64
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from app.net import OutgoingEnvelope
from app.protocol.content import (
    FRAME_PAIRWISE,
    DeviceListUpdate,
    Text,
    encode_content,
    encode_frame,
)
from app.protocol.device_list import open_device_list, sign_device_list
from app.protocol.identity import DeviceIdentity, LocalPrekeys, RemoteBundle
from app.protocol.session import Session
from app.services.account import open_messenger
from app.services.events import DeviceUnlinked, IdentityChanged
from app.services.messenger import IdentityNotAccepted
from app.services.views import ConversationView
from tests.services.helpers import Person, chat_id, has_chat, on_core, texts, wait_for
from tests.support.components import RelayProcess
from tests.support.mailbox_adversary import RecordedEnvelope, RecordingMailbox


def _talking(alice: Person, bob: Person) -> None:
    """Alice and Bob have written to each other (each holds the other's list)."""
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hi bob").result(20)
    wait_for(lambda: texts(bob, "alice") == ["hi bob"], what="bob receives")
    bob_chat = chat_id(bob, "alice")
    bob.client.accept_request(bob_chat).result(20)
    bob.client.send_text(bob_chat, "hi alice").result(20)
    wait_for(lambda: "hi alice" in texts(alice, "bob"), what="alice receives")


def _alice_with_a_phone(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> tuple[Person, Person, Person]:
    """Alice and Bob have talked; then Alice links a phone (stopped with them)."""
    alice, bob = people["alice"], people["bob"]
    _talking(alice, bob)
    people["alice-phone"] = alice.add_device(tmp_path, relay)
    return alice, bob, people["alice-phone"]


def _ghost(relay: RelayProcess, owner: Person) -> tuple[str, int, DeviceIdentity]:
    """What a malicious relay can do with an account: register a device with keys
    of its own (it holds every token; here it uses the owner's)."""
    owner_relay = owner.profile.relay(token=owner.client.messenger.relay_token)
    try:
        added = owner_relay.add_device("relay's own")
    finally:
        owner_relay.close()
    identity = DeviceIdentity.generate()
    ghost = owner.profile.relay(token=str(added["token"]))
    try:
        ghost.upload_keys(LocalPrekeys.generate(batch=4).upload_json(identity))
    finally:
        ghost.close()
    return str(added["token"]), int(added["device_id"]), identity


def _mailbox(owner: Person, token: str) -> list[object]:
    client = owner.profile.relay(token=token)
    try:
        return list(client.fetch())
    finally:
        client.close()


def test_a_linked_device_reads_and_writes_as_the_account(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> None:
    alice, bob = people["alice"], people["bob"]
    _talking(alice, bob)
    on_core(alice, lambda: alice.client.messenger.set_verified("bob", True))

    phone = alice.add_device(tmp_path, relay)
    people["alice-phone"] = phone
    # Bob is told, in the chat, by Alice's laptop.
    wait_for(
        lambda: "alice linked a new device" in texts(bob, "alice", system=True),
        what="bob sees the new device",
    )
    assert not any(isinstance(e, IdentityChanged) for e in bob.events)
    # One account identity: the same safety number on every device, and the phone
    # has Bob as the laptop had him, verified.
    number = bob.client.safety_number("alice").result()
    assert alice.client.safety_number("bob").result().digits == number.digits
    assert phone.client.safety_number("bob").result().digits == number.digits
    assert phone.client.safety_number("bob").result().verified

    bob.client.send_text(chat_id(bob, "alice"), "to both of you").result(20)
    wait_for(lambda: "to both of you" in texts(phone, "bob"), what="the phone receives")
    wait_for(lambda: "to both of you" in texts(alice, "bob"), what="the laptop receives")
    phone.client.send_text(chat_id(phone, "bob"), "from alice's phone").result(20)
    wait_for(lambda: "from alice's phone" in texts(bob, "alice"), what="bob hears the phone")
    time.sleep(1)  # anything duplicated would have arrived by now
    assert texts(phone, "bob").count("to both of you") == 1
    assert texts(alice, "bob").count("to both of you") == 1
    assert texts(bob, "alice").count("from alice's phone") == 1
    assert not any(isinstance(e, IdentityChanged) for e in bob.events)


def test_a_device_the_relay_adds_is_never_encrypted_to_nor_believed(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob = people["alice"], people["bob"]
    _talking(alice, bob)
    on_core(bob, lambda: bob.client.messenger.set_verified("alice", True))
    ghost_token, ghost_device, ghost_identity = _ghost(relay, alice)

    # Bob fetches Alice's keys again: the relay lists its device; Bob's client
    # starts no session with it, and his next message is not encrypted to it.
    bob.client.start_direct("alice").result(20)
    bob_sessions = bob.client.messenger.store.sessions
    assert on_core(bob, lambda: bob_sessions.devices("alice")) == [1]
    bob.client.send_text(chat_id(bob, "alice"), "for alice only").result(20)
    wait_for(lambda: "for alice only" in texts(alice, "bob"), what="alice receives")
    assert _mailbox(alice, ghost_token) == []

    # The relay's device writes to Bob, first replaying Alice's real device list
    # (which does not name it), then a text: refused, quarantined, nothing shown,
    # and Alice stays verified.
    fetched = bob.profile.relay(token=ghost_token)
    try:
        bundle = RemoteBundle.from_fetched_device(fetched.fetch_keys("bob")["devices"][0])
        alice_list = on_core(alice, alice.client.messenger.own_device_list)
        session = Session.initiate(ghost_identity, bundle)
        frames = [
            encode_content(DeviceListUpdate(alice_list)),
            encode_content(Text(str(uuid.uuid4()), int(time.time() * 1000), "ghost says hi")),
        ]
        fetched.send(
            [
                OutgoingEnvelope(
                    uuid.uuid4().hex, "bob", 1, encode_frame(FRAME_PAIRWISE, session.encrypt(f))
                )
                for f in frames
            ]
        )
    finally:
        fetched.close()
    wait_for(lambda: bob.client.undecryptable >= 2, what="bob refuses both")
    quarantined = on_core(bob, bob.client.messenger.store.quarantine.all)
    assert {q.reason for q in quarantined} == {"UnlistedDevice"}
    assert "ghost says hi" not in texts(bob, "alice")
    assert bob.client.safety_number("alice").result().verified
    assert not any(isinstance(e, IdentityChanged) for e in bob.events)
    assert ghost_device not in on_core(bob, lambda: bob_sessions.devices("alice"))


def test_a_relay_made_account_identity_is_an_identity_change_that_blocks_sending(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob = people["alice"], people["bob"]
    _talking(alice, bob)
    on_core(bob, lambda: bob.client.messenger.set_verified("alice", True))
    ghost_token, ghost_device, ghost_identity = _ghost(relay, alice)
    # The relay publishes a list of its own making (it cannot sign one under
    # Alice's account identity, so it signs under its device's identity).
    forged = sign_device_list(
        ghost_identity, 99, [(ghost_device, ghost_identity.public)], int(time.time() * 1000)
    )
    ghost = bob.profile.relay(token=ghost_token)
    try:
        ghost.publish_device_list(forged)
    finally:
        ghost.close()

    bob.client.start_direct("alice").result(20)
    wait_for(
        lambda: any(isinstance(e, IdentityChanged) and e.peer == "alice" for e in bob.events),
        what="bob is warned",
    )
    number = bob.client.safety_number("alice").result()
    assert not number.verified and number.unaccepted
    assert number.digits != alice.client.safety_number("bob").result().digits
    with pytest.raises(IdentityNotAccepted):
        bob.client.send_text(chat_id(bob, "alice"), "are you there?").result(20)
    # Not even the first message of the session bob started with the relay's
    # device (his own device list) went: everything queued is sent, none to it.
    bob.client.request_flush()
    wait_for(
        lambda: on_core(bob, bob.client.messenger.store.outbox.pending) == [],
        what="bob's outbox is sent",
    )
    assert _mailbox(alice, ghost_token) == []


def test_unlinking_stops_delivery_to_the_removed_device_within_one_message(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> None:
    alice, bob, phone = _alice_with_a_phone(people, tmp_path, relay)
    bob.client.send_text(chat_id(bob, "alice"), "before").result(20)
    wait_for(lambda: "before" in texts(phone, "bob"), what="the phone receives")
    old_list = on_core(alice, alice.client.messenger.own_device_list)

    phone_id = phone.client.messenger.device_id
    alice.client.remove_device(phone_id).result(20)
    wait_for(
        lambda: "alice removed a device" in texts(bob, "alice", system=True),
        what="bob sees the removal",
    )
    bob.client.send_text(chat_id(bob, "alice"), "after").result(20)
    wait_for(lambda: "after" in texts(alice, "bob"), what="the laptop receives")
    assert on_core(bob, lambda: bob.client.messenger.store.sessions.devices("alice")) == [1]
    wait_for(
        lambda: any(isinstance(e, DeviceUnlinked) for e in phone.events),
        what="the phone is told",
    )
    assert "after" not in texts(phone, "bob")

    # A relay serving the older list (naming the phone) brings nothing back.
    account = on_core(alice, lambda: alice.client.messenger.account_identity.public)
    assert phone_id in open_device_list(old_list, account).device_ids()
    stale = {"username": "alice", "devices": [], "device_list": _b64(old_list)}
    on_core(bob, lambda: bob.client.messenger.install_bundles("alice", stale))
    assert on_core(bob, lambda: bob.client.messenger.devices.devices("alice")) == [1]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unread(person: Person, title: str) -> int:
    conversations = person.client.conversations().result()
    return next(c.unread for c in conversations if c.title == title)


def test_sent_messages_reads_and_verification_follow_to_every_device(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> None:
    alice, bob, phone = _alice_with_a_phone(people, tmp_path, relay)

    # Sent on the laptop: on the phone too, as Alice's own message, once.
    alice.client.send_text(chat_id(alice, "bob"), "sent from the laptop").result(20)
    wait_for(
        lambda: "sent from the laptop" in texts(phone, "bob", outgoing=True),
        what="the phone's transcript",
    )
    phone.client.send_text(chat_id(phone, "bob"), "sent from the phone").result(20)
    wait_for(
        lambda: "sent from the phone" in texts(alice, "bob", outgoing=True),
        what="the laptop's transcript",
    )
    wait_for(lambda: "sent from the phone" in texts(bob, "alice"), what="bob receives")

    # Read on the phone: read on the laptop.
    bob.client.send_text(chat_id(bob, "alice"), "read me once").result(20)
    wait_for(lambda: "read me once" in texts(alice, "bob"), what="the laptop receives")
    wait_for(lambda: "read me once" in texts(phone, "bob"), what="the phone receives")
    assert _unread(alice, "bob") >= 1
    phone.client.mark_read(chat_id(phone, "bob")).result(20)
    wait_for(lambda: _unread(alice, "bob") == 0, what="the laptop sees it read")

    # Verified on the laptop: verified on the phone.
    assert not phone.client.safety_number("bob").result().verified
    alice.client.set_verified("bob", True).result(20)
    wait_for(lambda: phone.client.safety_number("bob").result().verified, what="phone verifies")
    time.sleep(1)
    assert texts(phone, "bob", outgoing=True).count("sent from the laptop") == 1
    assert texts(bob, "alice").count("sent from the phone") == 1


def test_blocking_follows_to_every_device_and_a_late_list_undoes_nothing(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess, mailbox: RecordingMailbox
) -> None:
    alice, bob, phone = _alice_with_a_phone(people, tmp_path, relay)
    phone_device = phone.client.messenger.device_id

    def blocked(person: Person) -> list[str]:
        return person.client.blocked_contacts().result(20)

    # Blocked on the laptop: blocked on the phone.
    alice.client.set_blocked("bob", True).result(20)
    wait_for(lambda: blocked(phone) == ["bob"], what="the phone blocks bob")
    # Unblocked on the phone: unblocked on the laptop.
    phone.client.set_blocked("bob", False).result(20)
    wait_for(lambda: blocked(alice) == [], what="the laptop unblocks bob")
    bob.client.send_text(chat_id(bob, "alice"), "after the unblock").result(20)
    for device in (alice, phone):
        wait_for(
            lambda device=device: "after the unblock" in texts(device, "bob"),
            what=f"{device.name} reads bob again",
        )

    # The relay holds the laptop's next list (bob blocked again) back from the
    # phone, lets the one after it (bob unblocked) through, then delivers the
    # held one: older than what the phone holds, it changes nothing.
    phone.stop()
    mark = mailbox.mark()

    def to_the_phone() -> list[RecordedEnvelope]:
        return [
            e
            for e in mailbox.recorded(sender="alice", recipient="alice", since=mark)
            if e.device_id == phone_device
        ]

    alice.client.set_blocked("bob", True).result(20)
    wait_for(lambda: len(to_the_phone()) == 1, what="the laptop's block queued for the phone")
    (held,) = to_the_phone()
    mailbox.withhold(held)
    alice.client.set_blocked("bob", False).result(20)
    wait_for(lambda: len(to_the_phone()) == 2, what="the laptop's unblock queued")
    phone.restart()
    wait_for(lambda: mailbox.pending("alice") == 0, what="the phone takes the unblock")
    mailbox.replay(held)
    wait_for(lambda: mailbox.pending("alice") == 0, what="the phone takes the held list")
    assert blocked(phone) == [] and blocked(alice) == []

    # A device whose clock is behind still dates its change past the newest it saw.
    on_core(phone, lambda: setattr(phone.client.messenger, "clock", lambda: 1))
    phone.client.set_blocked("bob", True).result(20)
    wait_for(lambda: blocked(alice) == ["bob"], what="the laptop takes the phone's block")


def test_requests_answered_and_chats_started_on_one_device_are_so_on_the_others(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> None:
    alice, _bob, phone = _alice_with_a_phone(people, tmp_path, relay)
    carol = people["carol"] = Person(tmp_path, "carol", relay)
    dave = people["dave"] = Person(tmp_path, "dave", relay)

    def view(person: Person, title: str) -> ConversationView | None:
        found = [c for c in person.client.conversations().result() if c.title == title]
        return found[0] if found else None

    # A stranger writes: a request on both devices; accepted on the phone, the
    # laptop's is answered too.
    chat = carol.client.start_direct("alice").result(20)
    carol.client.send_text(chat.conversation_id, "hi").result(20)
    for device in (alice, phone):
        wait_for(
            lambda device=device: (found := view(device, "carol")) is not None and found.request,
            what=f"{device.name} shows carol's request",
        )
    phone.client.accept_request(chat_id(phone, "carol")).result(20)
    wait_for(
        lambda: (found := view(alice, "carol")) is not None and not found.request,
        what="the laptop takes the phone's answer",
    )
    # A group a stranger adds Alice to: accepted on the laptop, on the phone too.
    dave.client.create_group("Dave's club", ["alice"]).result(20)
    for device in (alice, phone):
        wait_for(
            lambda device=device: view(device, "Dave's club") is not None,
            what=f"{device.name} is in dave's group",
        )
    assert view(phone, "Dave's club").request  # type: ignore[union-attr]
    alice.client.accept_request(chat_id(alice, "Dave's club")).result(20)
    wait_for(
        lambda: not view(phone, "Dave's club").request,  # type: ignore[union-attr]
        what="the phone takes the laptop's answer",
    )
    # A chat started on the laptop, before any message: on the phone, a contact.
    alice.client.start_direct("dave").result(20)
    wait_for(lambda: view(phone, "dave") is not None, what="the phone has the chat with dave")
    assert not view(phone, "dave").request  # type: ignore[union-attr]


@pytest.mark.parametrize("sealed", [False, True], ids=["authenticated", "sealed"])
def test_every_device_of_a_member_reads_and_writes_in_a_group(
    tmp_path: Path, relay: RelayProcess, sealed: bool
) -> None:
    """Three people, four devices: Alice on two."""
    alice = Person(tmp_path, "alice", relay, sealed=sealed)
    bob = Person(tmp_path, "bob", relay, sealed=sealed)
    carol = Person(tmp_path, "carol", relay, sealed=sealed)
    everyone = [alice, bob, carol]
    try:
        _talking(alice, bob)
        phone = alice.add_device(tmp_path, relay, sealed=sealed)
        everyone.append(phone)
        group = bob.client.create_group("Trip", ["alice", "carol"]).result(20)
        bob.client.send_text(group.conversation_id, "hello trip").result(20)
        for member in (alice, phone, carol):
            wait_for(
                lambda member=member: "hello trip" in texts(member, "Trip"),
                what="every device in the group",
            )
        carol.client.accept_request(chat_id(carol, "Trip")).result(20)
        # Each of Alice's devices sends on a sender key chain of its own.
        phone.client.send_text(chat_id(phone, "Trip"), "from the phone").result(20)
        alice.client.send_text(chat_id(alice, "Trip"), "from the laptop").result(20)
        for text in ("from the phone", "from the laptop"):
            for reader in (bob, carol):
                wait_for(
                    lambda text=text, reader=reader: text in texts(reader, "Trip"),
                    what=f"{reader.name} reads {text}",
                )
        carol.client.send_text(chat_id(carol, "Trip"), "carol here").result(20)
        for member in (alice, phone, bob):
            wait_for(
                lambda member=member: "carol here" in texts(member, "Trip"),
                what="carol reaches every device",
            )
        wait_for(
            lambda: "from the phone" in texts(alice, "Trip", outgoing=True),
            what="the laptop's transcript",
        )
        assert bob.client.undecryptable == carol.client.undecryptable == 0
        assert phone.client.undecryptable == alice.client.undecryptable == 0
        time.sleep(1)
        assert texts(carol, "Trip").count("from the phone") == 1
    finally:
        for someone in everyone:
            someone.stop()


def test_a_group_made_on_one_device_is_on_the_others(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> None:
    alice, bob, phone = _alice_with_a_phone(people, tmp_path, relay)
    group = alice.client.create_group("Made on the laptop", ["bob"]).result(20)
    wait_for(lambda: has_chat(phone, "Made on the laptop"), what="the phone has the group")
    alice.client.send_text(group.conversation_id, "first").result(20)
    wait_for(lambda: "first" in texts(bob, "Made on the laptop"), what="bob reads it")
    bob.client.send_text(chat_id(bob, "Made on the laptop"), "hi both").result(20)
    wait_for(lambda: "hi both" in texts(phone, "Made on the laptop"), what="the phone reads")
    assert phone.client.undecryptable == 0


def test_an_account_from_before_lists_keeps_its_safety_number_and_verification(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    """Made by the previous version: no list in its store nor at the relay. Its
    contacts hold no list for it either. At its next start it makes one (its one
    device, its identity the account's) and sends it to them: nothing changes for
    them but that they now hold the list."""
    alice, bob = people["alice"], people["bob"]
    _talking(alice, bob)
    on_core(bob, lambda: bob.client.messenger.set_verified("alice", True))
    number = bob.client.safety_number("alice").result().digits
    # Back to how the previous version left things.
    store = alice.client.messenger.store
    on_core(alice, lambda: store.device_lists.delete("alice"))
    alice.stop()
    bob_store = bob.client.messenger.store
    on_core(bob, lambda: bob_store.device_lists.delete("alice"))
    with sqlite3.connect(relay.data_dir / "relay.sqlite3") as connection:
        connection.execute("DELETE FROM device_lists")
    assert on_core(bob, lambda: bob.client.messenger.devices.held("alice")) is None

    messenger = open_messenger(alice.profile, "alice passphrase")
    restarted = Person(alice.profile.path, "alice", relay, linked=(alice.profile, messenger))
    people["alice"] = restarted
    wait_for(
        lambda: on_core(bob, lambda: bob.client.messenger.devices.held("alice")) is not None,
        what="bob gets alice's first list",
    )
    assert bob.client.safety_number("alice").result().digits == number
    assert bob.client.safety_number("alice").result().verified
    assert not any(isinstance(e, IdentityChanged) for e in bob.events)
    bob.client.send_text(chat_id(bob, "alice"), "still you").result(20)
    wait_for(lambda: "still you" in texts(restarted, "bob"), what="alice receives")
