"""Issue #18, item 6: a verified contact's new identity blocks sending until accepted.

Real clients and a real relay whose mailbox is recorded (`RecordingMailbox`):

- Bob verifies Alice; Alice reinstalls (same username, new identity key) and writes
  to Bob. Bob's direct message, file and group message are refused with
  `IdentityNotAccepted` naming Alice; his receipts to her are held; nothing from Bob
  reaches the relay for Alice, and dismissing the warning does not unblock.
- Bob accepts the new safety number: what was held goes out, and Alice (on her new
  install) reads his next direct and group messages.
- A contact who was never verified keeps today's behaviour: a warning, and sending
  goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from app.services.events import IdentityChanged
from app.services.messenger import IdentityNotAccepted
from app.services.views import ConversationView, MessageStatus
from app.store.trust import IdentityTrust
from tests.services.helpers import Person, on_core, wait_for
from tests.support.components import RelayProcess
from tests.support.mailbox_adversary import RecordingMailbox

T = TypeVar("T")


class Cast:
    def __init__(self, root: Path, relay: RelayProcess) -> None:
        self.root = root
        self.relay = relay
        self.people = {name: Person(root, name, relay) for name in ("alice", "bob", "carol")}

    def __getitem__(self, name: str) -> Person:
        return self.people[name]

    def reinstall(self, name: str) -> Person:
        self.people[name] = self.people[name].reinstall(self.root, self.relay)
        return self.people[name]

    def stop(self) -> None:
        for person in self.people.values():
            person.stop()


@pytest.fixture
def cast(tmp_path: Path, relay: RelayProcess, mailbox: RecordingMailbox) -> Iterator[Cast]:
    people = Cast(tmp_path, relay)
    yield people
    people.stop()


def conversation(person: Person, title: str) -> ConversationView:
    return next(c for c in person.client.conversations().result(20) if c.title == title)


def bodies(person: Person, title: str) -> list[str]:
    views = [c for c in person.client.conversations().result(20) if c.title == title]
    if not views:
        return []
    _view, messages = person.client.open_conversation(views[0].conversation_id).result(20)
    return [m.body for m in messages if not m.system]


def conversation_exists(person: Person, title: str) -> bool:
    return any(c.title == title for c in person.client.conversations().result(20))


def outbox_empty(person: Person) -> bool:
    return not on_core(person, lambda: person.client.messenger.store.outbox.pending(10))


def test_a_verified_contacts_new_identity_blocks_sending_until_accepted(
    cast: Cast, mailbox: RecordingMailbox, tmp_path: Path
) -> None:
    alice, bob, carol = cast["alice"], cast["bob"], cast["carol"]
    direct = bob.client.start_direct("alice").result(20)
    bob.client.send_text(direct.conversation_id, "hi alice").result(20)
    wait_for(lambda: bodies(alice, "bob") == ["hi alice"], what="alice reads bob")
    group = bob.client.create_group("Trip", ["alice", "carol"]).result(20)
    bob.client.send_text(group.conversation_id, "who brings the map?").result(20)
    for member in (alice, carol):
        wait_for(
            lambda member=member: bodies(member, "Trip") == ["who brings the map?"],
            what=f"{member.name} reads the group",
        )
    bob.client.set_verified("alice", True).result(20)
    assert conversation(bob, "alice").verified

    # Alice reinstalls: same username, a new identity key. She writes to Bob first.
    alice = cast.reinstall("alice")
    mark = mailbox.mark()
    new_direct = alice.client.start_direct("bob").result(20)
    alice.client.send_text(new_direct.conversation_id, "it's me, on a new laptop").result(20)
    wait_for(lambda: "it's me, on a new laptop" in bodies(bob, "alice"), what="bob reads her")
    wait_for(
        lambda: any(isinstance(e, IdentityChanged) and e.peer == "alice" for e in bob.events),
        what="bob is told her identity changed",
    )
    bob_direct = conversation(bob, "alice")
    assert bob_direct.unaccepted == ("alice",)
    assert not bob_direct.verified
    assert "alice's safety number has changed" in bob_direct.send_blocked
    bob_group = conversation(bob, "Trip")
    assert bob_group.unaccepted == ("alice",)
    assert "Nothing is sent to this group" in bob_group.send_blocked
    contact = on_core(bob, lambda: bob.client.messenger.store.contacts.get("alice"))
    assert contact is not None and contact.trust == IdentityTrust.UNACCEPTED
    assert bob.client.safety_number("alice").result(20).unaccepted

    # Direct message, file and group message: refused, naming Alice; nothing stored.
    with pytest.raises(IdentityNotAccepted) as refused:
        bob.client.send_text(bob_direct.conversation_id, "are you really alice?").result(20)
    assert refused.value.members == ("alice",) and not refused.value.group
    assert "Nothing is sent to alice until you accept" in str(refused.value)
    document = tmp_path / "plan.txt"
    document.write_bytes(b"the plan " * 1000)
    with pytest.raises(IdentityNotAccepted):
        bob.client.send_file(bob_direct.conversation_id, document).result(20)
    assert not list((bob.profile.path / "attachments").iterdir())  # nothing encrypted
    with pytest.raises(IdentityNotAccepted) as refused_group:
        bob.client.send_text(bob_group.conversation_id, "alice, is that you?").result(20)
    assert refused_group.value.members == ("alice",) and refused_group.value.group
    assert str(refused_group.value).startswith("alice's safety number has changed")
    assert "are you really alice?" not in bodies(bob, "alice")
    assert "alice, is that you?" not in bodies(bob, "Trip")
    # Retrying an old message is a send too.
    _view, old = bob.client.open_conversation(bob_direct.conversation_id).result(20)
    mine = next(m for m in old if m.outgoing)
    with pytest.raises(IdentityNotAccepted):
        bob.client.retry(mine.message_id).result(20)

    # Receipts are held, not sent; dismissing the warning does not unblock.
    bob.client.mark_read(bob_direct.conversation_id).result(20)
    bob.client.acknowledge_identity("alice").result(20)
    assert conversation(bob, "alice").unaccepted == ("alice",)
    held = on_core(bob, lambda: bob.client.messenger.store.held_sends.count("alice"))
    assert held >= 2  # the delivery and the read receipt of her message
    bob.client.request_flush()
    wait_for(lambda: outbox_empty(bob), what="bob's outbox drains")
    assert mailbox.recorded(sender="bob", recipient="alice", since=mark) == []
    assert mailbox.recorded(sender="bob", recipient="carol", since=mark) == []

    # Bob accepts: the receipts go out, and Alice reads what he sends next.
    assert bob.client.accept_identity("alice").result(20) == held
    assert conversation(bob, "alice").unaccepted == ()
    assert conversation(bob, "Trip").unaccepted == ()
    assert not conversation(bob, "alice").verified  # accepted, not re-verified

    def her_message_read() -> bool:
        _view, messages = alice.client.open_conversation(new_direct.conversation_id).result(20)
        return any(m.outgoing and m.status == MessageStatus.READ for m in messages)

    wait_for(her_message_read, what="the held read receipt reaches alice")
    bob.client.send_text(bob_direct.conversation_id, "welcome back").result(20)
    wait_for(lambda: "welcome back" in bodies(alice, "bob"), what="alice reads bob again")
    # Her new install learns the group (and Bob's sender key) on acceptance.
    wait_for(lambda: conversation_exists(alice, "Trip"), what="alice's new install has the group")
    bob.client.send_text(bob_group.conversation_id, "alice is back").result(20)
    for member in (alice, carol):
        wait_for(
            lambda member=member: "alice is back" in bodies(member, "Trip"),
            what=f"{member.name} reads the group after acceptance",
        )
    assert mailbox.recorded(sender="bob", recipient="alice", since=mark)


def test_verifying_the_new_number_also_accepts_it(cast: Cast, mailbox: RecordingMailbox) -> None:
    alice, bob = cast["alice"], cast["bob"]
    direct = bob.client.start_direct("alice").result(20)
    bob.client.send_text(direct.conversation_id, "hi").result(20)
    wait_for(lambda: bodies(alice, "bob") == ["hi"], what="alice reads bob")
    bob.client.set_verified("alice", True).result(20)
    alice = cast.reinstall("alice")
    mark = mailbox.mark()
    # This time Bob finds the new key himself, fetching her keys.
    bob.client.start_direct("alice").result(20)
    assert conversation(bob, "alice").unaccepted == ("alice",)
    with pytest.raises(IdentityNotAccepted):
        bob.client.send_text(direct.conversation_id, "still there?").result(20)
    bob.client.set_verified("alice", True).result(20)
    view = conversation(bob, "alice")
    assert view.unaccepted == () and view.verified
    bob.client.send_text(direct.conversation_id, "verified you again").result(20)
    wait_for(lambda: "verified you again" in bodies(alice, "bob"), what="alice reads bob")
    assert mailbox.recorded(sender="bob", recipient="alice", since=mark)


def test_a_contact_never_verified_keeps_the_warning_and_sending(
    cast: Cast, mailbox: RecordingMailbox
) -> None:
    alice, bob = cast["alice"], cast["bob"]
    direct = bob.client.start_direct("alice").result(20)
    bob.client.send_text(direct.conversation_id, "hi").result(20)
    wait_for(lambda: bodies(alice, "bob") == ["hi"], what="alice reads bob")
    alice = cast.reinstall("alice")
    bob.client.start_direct("alice").result(20)
    view = conversation(bob, "alice")
    assert view.identity_changed and view.unaccepted == () and view.send_blocked == ""
    bob.client.send_text(direct.conversation_id, "sent despite the warning").result(20)
    wait_for(lambda: "sent despite the warning" in bodies(alice, "bob"), what="alice reads it")
