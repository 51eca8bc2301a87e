"""Two and three people exchange messages through a real relay, no UI involved."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.services.events import IdentityChanged
from app.services.views import MessageStatus
from tests.services.helpers import Person, on_core, wait_for
from tests.support.components import RelayProcess


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    created: dict[str, Person] = {}

    def person(name: str) -> Person:
        created[name] = Person(tmp_path, name, relay)
        return created[name]

    yield {name: person(name) for name in ("alice", "bob", "carol")}
    for someone in created.values():
        someone.stop()


def _messages(person: Person, peer_or_title: str) -> list[str]:
    conversations = person.client.conversations().result()
    match = [c for c in conversations if c.title == peer_or_title]
    if not match:
        return []
    _view, messages = person.client.open_conversation(match[0].conversation_id).result()
    return [m.body for m in messages if not m.system]


def test_direct_messages_receipts_and_search(people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    conversation = alice.client.start_direct("bob").result(timeout=20)
    sent = alice.client.send_text(conversation.conversation_id, "hello bob, it's alice").result(20)
    assert sent.status == MessageStatus.SENDING
    wait_for(lambda: _messages(bob, "alice") == ["hello bob, it's alice"], what="bob receives")
    bob_conversation = bob.client.conversations().result()[0]
    assert bob_conversation.unread == 1
    bob.client.send_text(bob_conversation.conversation_id, "hi alice").result(20)
    wait_for(lambda: "hi alice" in _messages(alice, "bob"), what="alice receives")

    def status_of_first() -> MessageStatus:
        _view, messages = alice.client.open_conversation(conversation.conversation_id).result()
        return messages[0].status

    wait_for(lambda: status_of_first() == MessageStatus.DELIVERED, what="delivered receipt")
    bob.client.mark_read(bob_conversation.conversation_id).result()
    wait_for(lambda: status_of_first() == MessageStatus.READ, what="read receipt")
    hits = bob.client.search("alice").result()
    assert {hit.conversation_title for hit in hits} == {"alice"}
    assert len(hits) == 2
    number = alice.client.safety_number("bob").result()
    assert number.digits == bob.client.safety_number("alice").result().digits
    assert len(number.groups) == 12


def test_group_messages_and_membership(people: dict[str, Person], tmp_path: Path) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    group = alice.client.create_group("Trip", ["bob", "carol"]).result(20)
    alice.client.send_text(group.conversation_id, "who brings the map?").result(20)
    for member in (bob, carol):
        wait_for(
            lambda member=member: _messages(member, "Trip") == ["who brings the map?"],
            what=f"{member.name} receives the group message",
        )
    bob_group = next(c for c in bob.client.conversations().result() if c.title == "Trip")
    bob.client.send_text(bob_group.conversation_id, "I do").result(20)
    for member in (alice, carol):
        wait_for(lambda member=member: "I do" in _messages(member, "Trip"), what="bob's reply")
    alice.client.remove_member(group.conversation_id, "carol").result(20)
    wait_for(
        lambda: (
            "carol"
            not in next(c for c in bob.client.conversations().result() if c.title == "Trip").members
        ),
        what="bob sees carol removed",
    )
    alice.client.send_text(group.conversation_id, "carol is gone").result(20)
    wait_for(lambda: "carol is gone" in _messages(bob, "Trip"), what="bob gets the new message")
    assert "carol is gone" not in _messages(carol, "Trip")


def test_attachment_and_identity_change(people: dict[str, Person], tmp_path: Path) -> None:
    alice, bob = people["alice"], people["bob"]
    conversation = alice.client.start_direct("bob").result(20)
    document = tmp_path / "plan.txt"
    document.write_bytes(b"the secret plan " * 10_000)
    alice.client.send_file(conversation.conversation_id, document).result(30)

    def bob_attachment() -> object:
        conversations = bob.client.conversations().result()
        if not conversations:
            return None
        _view, messages = bob.client.open_conversation(conversations[0].conversation_id).result()
        ready = [m.attachment for m in messages if m.attachment and m.attachment.ready]
        return ready[0] if ready else None

    wait_for(bob_attachment, timeout=30, what="bob downloads the attachment")
    attachment = bob_attachment()
    saved = tmp_path / "saved.txt"
    bob.client.save_attachment(attachment.attachment_id, saved).result()  # type: ignore[attr-defined]
    assert saved.read_bytes() == document.read_bytes()
    assert b"the secret plan" not in b"".join(
        p.read_bytes() for p in (bob.profile.path / "attachments").iterdir()
    )
    # Bob's identity changes (a reinstall gets a new key, and publishes a device
    # list under it, past the relay's version): Alice is warned.
    from app.protocol.device_list import sign_device_list
    from app.protocol.identity import DeviceIdentity, LocalPrekeys

    bob_relay = bob.profile.relay(token=bob.client.messenger.relay_token)
    new_device = bob_relay.add_device("new laptop")
    fresh = bob.profile.relay(token=new_device["token"])
    reinstalled = DeviceIdentity.generate()
    fresh.upload_keys(LocalPrekeys.generate(batch=2).upload_json(reinstalled))
    device_id = int(new_device["device_id"])
    fresh.publish_device_list(
        sign_device_list(reinstalled, 2, [(device_id, reinstalled.public)], int(time.time() * 1000))
    )
    bob_relay.remove_device(1)
    alice.client.start_direct("bob").result(20)
    wait_for(
        lambda: any(isinstance(e, IdentityChanged) and e.peer == "bob" for e in alice.events),
        what="identity change warning",
    )
    view = next(c for c in alice.client.conversations().result() if c.title == "bob")
    assert view.identity_changed
    assert not view.verified


def test_messages_arrive_even_when_push_never_delivers_them(people: dict[str, Person]) -> None:
    """Push is the prompt, the mailbox the truth: with Bob's push connection gone
    (stalled, or dropped without a word), the catch-up fetch still brings Alice's
    message, exactly once."""
    alice, bob = people["alice"], people["bob"]
    conversation = alice.client.start_direct("bob").result(timeout=20)
    assert bob.client.push is not None
    bob.client.push.stop()
    alice.client.send_text(conversation.conversation_id, "no push needed").result(20)
    wait_for(lambda: _messages(bob, "alice") == ["no push needed"], what="bob fetches it")
    alice.client.send_text(conversation.conversation_id, "and again").result(20)
    wait_for(lambda: "and again" in _messages(bob, "alice"), what="bob fetches the next")
    assert _messages(bob, "alice") == ["no push needed", "and again"]


def test_two_people_who_write_first_at_the_same_time_keep_talking(
    people: dict[str, Person],
) -> None:
    """Each starts a session before the other's first message arrives, so each
    replaces its own session with the other's start. Without keeping the replaced
    one, every later message of the crossed sessions failed to decrypt, both ways,
    for good (a group's first messages cross like this all the time)."""
    alice, bob = people["alice"], people["bob"]
    for person in (alice, bob):
        assert person.client.push is not None
        person.client.push.stop()
        person.client._fetch_every = 1e9  # only the fetches below
    time.sleep(5.5)  # the catch-up fetch already scheduled passes

    def sent(person: Person) -> bool:
        return not on_core(person, lambda: person.client.messenger.store.outbox.pending(10))

    def fetch(person: Person) -> None:
        person.client.net(person.client._catch_up).result(20)

    to_bob = alice.client.start_direct("bob").result(20)
    to_alice = bob.client.start_direct("alice").result(20)
    alice.client.send_text(to_bob.conversation_id, "alice first").result(20)
    bob.client.send_text(to_alice.conversation_id, "bob first").result(20)
    wait_for(lambda: sent(alice) and sent(bob), what="both first messages are sent")
    for person in (alice, bob):
        fetch(person)
    wait_for(lambda: "alice first" in _messages(bob, "alice"), what="bob gets alice's")
    wait_for(lambda: "bob first" in _messages(alice, "bob"), what="alice gets bob's")
    for turn in range(3):
        alice.client.send_text(to_bob.conversation_id, f"alice {turn}").result(20)
        wait_for(lambda: sent(alice), what="alice's turn is sent")
        fetch(bob)
        wait_for(lambda t=turn: f"alice {t}" in _messages(bob, "alice"), what=f"bob gets {turn}")
        bob.client.send_text(to_alice.conversation_id, f"bob {turn}").result(20)
        wait_for(lambda: sent(bob), what="bob's turn is sent")
        fetch(alice)
        wait_for(lambda t=turn: f"bob {t}" in _messages(alice, "bob"), what=f"alice gets {turn}")
    assert alice.client.undecryptable == 0
    assert bob.client.undecryptable == 0


def test_opening_a_chat_with_someone_who_wrote_first_keeps_their_session(
    people: dict[str, Person],
) -> None:
    """Bob opens the chat Alice started. Opening it fetched Bob new keys of Alice's
    and started a second session over the one her first message made, so what
    Alice sent before she saw Bob's reply no longer decrypted at Bob's."""
    alice, bob = people["alice"], people["bob"]
    to_bob = alice.client.start_direct("bob").result(20)
    alice.client.send_text(to_bob.conversation_id, "hello bob").result(20)
    wait_for(lambda: _messages(bob, "alice") == ["hello bob"], what="bob gets it")
    assert alice.client.push is not None
    alice.client.push.stop()  # she does not see Bob's reply before writing again
    alice.client._fetch_every = 1e9
    to_alice = bob.client.start_direct("alice").result(20)
    bob.client.send_text(to_alice.conversation_id, "hello alice").result(20)
    alice.client.send_text(to_bob.conversation_id, "are you there?").result(20)
    wait_for(lambda: "are you there?" in _messages(bob, "alice"), what="bob gets the second")
    assert bob.client.undecryptable == 0
