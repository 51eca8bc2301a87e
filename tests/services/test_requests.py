"""Issue #24: contacts, message requests and blocking, through a real relay
(docs/protocol.md, "Message requests and blocking")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.services.messenger import ServiceError
from app.services.views import ConversationView, MessageStatus
from tests.services.helpers import Person, on_core, wait_for
from tests.support.components import RelayProcess


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    cast = {name: Person(tmp_path, name, relay) for name in ("alice", "bob", "carol")}
    yield cast
    for person in cast.values():
        person.stop()


def _chat(person: Person, title: str) -> ConversationView | None:
    return next((c for c in person.client.conversations().result(20) if c.title == title), None)


def _bodies(person: Person, title: str) -> list[str]:
    chat = _chat(person, title)
    if chat is None:
        return []
    _view, messages = person.client.open_conversation(chat.conversation_id).result(20)
    return [m.body for m in messages if not m.system]


def _status(person: Person, conversation_id: int, body: str) -> MessageStatus:
    _view, messages = person.client.open_conversation(conversation_id).result(20)
    return next(m.status for m in messages if m.body == body)


def _outbox_empty(person: Person) -> bool:
    return not on_core(person, person.client.messenger.store.outbox.pending)


def _stored_bodies(person: Person) -> list[str]:
    """Every message body in the person's store, whatever chat it is in."""
    store = person.client.messenger.store
    return on_core(
        person, lambda: [str(r[0]) for r in store.execute("SELECT body FROM messages").fetchall()]
    )


def _mailbox_empty(person: Person) -> bool:
    relay = person.profile.relay(token=person.client.messenger.relay_token)
    try:
        return not relay.fetch()
    finally:
        relay.close()


def test_a_strangers_first_message_is_a_request_and_reads_wait_for_accept(
    people: dict[str, Person],
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hello, we met at the conference").result(20)
    wait_for(lambda: _chat(bob, "alice") is not None, what="bob receives")
    request = _chat(bob, "alice")
    assert request is not None and request.request
    # The sender chose bob: for her he is a contact, not a request.
    own = _chat(alice, "bob")
    assert own is not None and not own.request
    assert alice.client.contacts().result(20) == ["bob"]
    assert bob.client.contacts().result(20) == []

    # Delivery receipts still go (as in Signal); read receipts do not.
    wait_for(
        lambda: (
            _status(alice, chat.conversation_id, "hello, we met at the conference")
            == MessageStatus.DELIVERED
        ),
        what="the delivery receipt",
    )
    bob.client.mark_read(request.conversation_id).result(20)
    wait_for(lambda: _outbox_empty(bob), what="bob's outbox drains")
    time.sleep(1.0)  # room for a read receipt to arrive, were one sent
    assert (
        _status(alice, chat.conversation_id, "hello, we met at the conference")
        == MessageStatus.DELIVERED
    )

    accepted = bob.client.accept_request(request.conversation_id).result(20)
    assert not accepted.request
    assert bob.client.contacts().result(20) == ["alice"]
    wait_for(
        lambda: (
            _status(alice, chat.conversation_id, "hello, we met at the conference")
            == MessageStatus.READ
        ),
        what="the read receipt held back until accepting",
    )


def test_blocking_drops_and_stores_nothing_and_unblocking_restores(
    people: dict[str, Person],
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "first").result(20)
    wait_for(lambda: _bodies(bob, "alice") == ["first"], what="bob receives the first")
    request = _chat(bob, "alice")
    assert request is not None
    bob.client.block_request(request.conversation_id).result(20)
    assert bob.client.blocked_contacts().result(20) == ["alice"]
    blocked = _chat(bob, "alice")
    assert blocked is not None and blocked.blocked

    alice.client.send_text(chat.conversation_id, "second, while blocked").result(20)
    wait_for(
        lambda: _status(alice, chat.conversation_id, "second, while blocked") == MessageStatus.SENT,
        what="the relay takes it",
    )
    # Acknowledged at the relay, and nothing of it kept: no message, no search hit.
    wait_for(lambda: _mailbox_empty(bob), what="bob acknowledges the blocked envelope")
    assert "second, while blocked" not in _stored_bodies(bob)
    assert bob.client.search("blocked").result(20) == []
    # No delivery receipt went back either.
    time.sleep(1.0)
    assert _status(alice, chat.conversation_id, "second, while blocked") == MessageStatus.SENT
    # Nor can bob write to her.
    with pytest.raises(ServiceError, match="Unblock"):
        bob.client.send_text(request.conversation_id, "hi?").result(20)
    assert "hi?" not in _stored_bodies(bob)

    bob.client.set_blocked("alice", False).result(20)
    assert bob.client.blocked_contacts().result(20) == []
    alice.client.send_text(chat.conversation_id, "third, after the unblock").result(20)
    wait_for(
        lambda: "third, after the unblock" in _bodies(bob, "alice"),
        what="bob receives again after unblocking",
    )
    assert _bodies(bob, "alice") == ["first", "third, after the unblock"]
    # Unblocking is not accepting: still a request, and replying answers it.
    again = _chat(bob, "alice")
    assert again is not None and again.request and not again.blocked
    bob.client.send_text(again.conversation_id, "hello alice").result(20)
    wait_for(lambda: "hello alice" in _bodies(alice, "bob"), what="alice receives the reply")
    assert bob.client.contacts().result(20) == ["alice"]


def test_deleting_a_request_removes_it_and_a_new_message_asks_again(
    people: dict[str, Person],
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "spam?").result(20)
    wait_for(lambda: _chat(bob, "alice") is not None, what="bob receives")
    request = _chat(bob, "alice")
    assert request is not None
    bob.client.delete_conversation(request.conversation_id).result(20)
    assert _chat(bob, "alice") is None
    assert "spam?" not in _stored_bodies(bob)
    alice.client.send_text(chat.conversation_id, "not spam").result(20)
    wait_for(lambda: _bodies(bob, "alice") == ["not spam"], what="a new request")
    again = _chat(bob, "alice")
    assert again is not None and again.request


def test_a_group_from_a_stranger_is_a_request_until_accepted(
    people: dict[str, Person],
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    alice.client.start_direct("carol").result(20)
    carol.client.start_direct("alice").result(20)  # carol knows alice, bob does not
    group = alice.client.create_group("Book club", ["bob", "carol"]).result(20)
    assert sorted(alice.client.contacts().result(20)) == ["bob", "carol"]
    wait_for(lambda: _chat(bob, "Book club") is not None, what="bob is added")
    wait_for(lambda: _chat(carol, "Book club") is not None, what="carol is added")
    bob_group = _chat(bob, "Book club")
    carol_group = _chat(carol, "Book club")
    assert bob_group is not None and bob_group.request
    assert carol_group is not None and not carol_group.request
    alice.client.send_text(group.conversation_id, "chapter 3 for friday").result(20)
    wait_for(lambda: _bodies(bob, "Book club") == ["chapter 3 for friday"], what="bob reads")
    bob.client.mark_read(bob_group.conversation_id).result(20)
    wait_for(lambda: _outbox_empty(bob), what="bob's outbox drains")
    time.sleep(1.0)
    assert _status(alice, group.conversation_id, "chapter 3 for friday") != MessageStatus.READ
    assert not bob.client.accept_request(bob_group.conversation_id).result(20).request
    wait_for(
        lambda: _status(alice, group.conversation_id, "chapter 3 for friday") == MessageStatus.READ,
        what="bob's read receipt after accepting the group",
    )


def test_blocking_from_a_group_request_leaves_it(people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    group = alice.client.create_group("Deals", ["bob", "carol"]).result(20)
    wait_for(lambda: _chat(bob, "Deals") is not None, what="bob is added")
    bob_group = _chat(bob, "Deals")
    assert bob_group is not None and bob_group.request
    bob.client.block_request(bob_group.conversation_id).result(20)
    assert _chat(bob, "Deals") is None
    assert bob.client.blocked_contacts().result(20) == ["alice"]
    wait_for(
        lambda: "bob" not in (_chat(alice, "Deals") or group).members,
        what="alice sees bob leave",
    )
