"""Delete for everyone, delete for me, edits and typing indicators between real
clients through a real relay (issue #24; docs/protocol.md §5, types 12-14)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.protocol.content import CHANGE_WINDOW_MS, Delete, Edit, Text, encode_content
from app.services.events import MessagesExpired, TypingChanged
from app.services.messenger import ServiceError
from app.services.views import DELETED_TEXT, MessageView
from app.store import Message
from tests.services.helpers import Person, on_core, wait_for
from tests.support.components import RelayProcess


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    created = {name: Person(tmp_path, name, relay) for name in ("alice", "bob", "carol")}
    yield created
    for someone in created.values():
        someone.stop()


def _chat(person: Person, title: str) -> list[MessageView]:
    match = [c for c in person.client.conversations().result() if c.title == title]
    if not match:
        return []
    _view, messages = person.client.open_conversation(match[0].conversation_id).result()
    return [m for m in messages if not m.system]


def _find(person: Person, title: str, body: str) -> MessageView | None:
    return next((m for m in _chat(person, title) if m.body == body), None)


def _row(person: Person, message_id: int) -> Message | None:
    return on_core(person, lambda: person.client.messenger.store.messages.get(message_id))


def _send_crafted(person: Person, conversation_id: int, *contents: object) -> None:
    """Sends contents as they are, past every check the sending side makes."""

    def run() -> None:
        messenger = person.client.messenger
        conversation = messenger.store.conversations.get(conversation_id)
        assert conversation is not None
        with messenger.store.transaction():
            for content in contents:
                messenger._deliver(conversation, encode_content(content), None)  # type: ignore[arg-type]

    on_core(person, run)
    person.client.request_flush()


def _typing(person: Person) -> list[TypingChanged]:
    return [e for e in list(person.events) if isinstance(e, TypingChanged)]


def _assert_fully_deleted(person: Person, message_id: int, text: str) -> None:
    row = _row(person, message_id)
    assert row is not None and row.kind == "deleted"
    assert (row.body, row.quote_uuid, row.quote_text, row.reactions) == ("", None, None, None)
    assert (
        on_core(person, lambda: person.client.messenger.store.attachments.for_message(row.id))
        is None
    )
    assert not person.client.search(text.split(maxsplit=1)[0]).result(20)


def test_edit_and_delete_for_everyone_in_a_direct_chat(people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    typo = alice.client.send_text(chat.conversation_id, "meet at the statoin").result(20)
    secret = alice.client.send_text(chat.conversation_id, "launchcode 1234").result(20)
    wait_for(lambda: _find(bob, "alice", "launchcode 1234"), what="bob receives both")
    received = _find(bob, "alice", "launchcode 1234")
    assert received is not None
    bob.client.react(received.message_id, "😮").result(20)
    reply = bob.client.send_text(received.conversation_id, "wow", received.message_id).result(20)
    wait_for(lambda: _find(alice, "bob", "wow"), what="alice receives the reply")

    edited = alice.client.edit_text(typo.message_id, "meet at the station").result(20)
    assert (edited.body, edited.edited) == ("meet at the station", True)
    wait_for(lambda: _find(bob, "alice", "meet at the station"), what="bob sees the edit")
    shown = _find(bob, "alice", "meet at the station")
    assert shown is not None and shown.edited
    assert _find(bob, "alice", "meet at the statoin") is None
    assert not bob.client.search("statoin").result(20)  # the old text is not kept

    gone = alice.client.delete_for_everyone(secret.message_id).result(20)
    assert (gone.deleted, gone.body) == (True, DELETED_TEXT)
    wait_for(
        lambda: (_row(bob, received.message_id) or received).kind == "deleted",  # type: ignore[union-attr]
        what="bob's copy is deleted",
    )
    view = next(m for m in _chat(bob, "alice") if m.message_id == received.message_id)
    assert (view.body, view.deleted, view.reactions) == (DELETED_TEXT, True, ())
    _assert_fully_deleted(bob, received.message_id, "launchcode 1234")
    _assert_fully_deleted(alice, secret.message_id, "launchcode 1234")
    # The reply's quote no longer carries the deleted text, on either side.
    bob_reply = _row(bob, reply.message_id)
    assert bob_reply is not None and bob_reply.quote_text == ""
    alice_reply = _find(alice, "bob", "wow")
    assert alice_reply is not None and alice_reply.quote is not None
    assert alice_reply.quote.snippet == DELETED_TEXT  # says so, quoting nothing of it
    # A deleted message can be neither edited nor deleted again.
    with pytest.raises(ServiceError):
        alice.client.edit_text(secret.message_id, "again").result(20)


def test_edit_and_delete_in_a_group(people: dict[str, Person]) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    group = alice.client.create_group("Trip", ["bob", "carol"]).result(20)
    first = alice.client.send_text(group.conversation_id, "we leave at 9").result(20)
    second = alice.client.send_text(group.conversation_id, "bring cash").result(20)
    for member in (bob, carol):
        wait_for(lambda member=member: _find(member, "Trip", "bring cash"), what="members receive")
    alice.client.edit_text(first.message_id, "we leave at 10").result(20)
    alice.client.delete_for_everyone(second.message_id).result(20)
    for member in (bob, carol):
        wait_for(
            lambda member=member: _find(member, "Trip", "we leave at 10"),
            what=f"{member.name} sees the edit",
        )
        wait_for(
            lambda member=member: any(m.deleted for m in _chat(member, "Trip")),
            what=f"{member.name} sees the delete",
        )
        assert _find(member, "Trip", "bring cash") is None
        assert [m.body for m in _chat(member, "Trip")] == ["we leave at 10", DELETED_TEXT]


def test_deletes_and_edits_from_anyone_but_the_author_or_through_another_chat_are_ignored(
    people: dict[str, Person],
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "only alice may change this").result(20)
    wait_for(lambda: _find(bob, "alice", "only alice may change this"), what="bob receives")
    target = _find(bob, "alice", "only alice may change this")
    assert target is not None
    row = _row(bob, target.message_id)
    assert row is not None
    now = on_core(alice, alice.client.messenger.clock)

    # Carol, in her own chat with bob: naming alice as the author, and herself.
    carol_chat = carol.client.start_direct("bob").result(20)
    carol.client.send_text(carol_chat.conversation_id, "hi bob").result(20)
    wait_for(lambda: _find(bob, "carol", "hi bob"), what="bob receives carol's")
    _send_crafted(
        carol,
        carol_chat.conversation_id,
        Delete(row.uuid, "alice", now),
        Edit(row.uuid, "alice", now, "carol was here"),
        Delete(row.uuid, "carol", now),
        Edit(row.uuid, "carol", now, "carol was here"),
    )
    # Alice herself, but through a group, for a message of the direct chat.
    group = alice.client.create_group("Other", ["bob"]).result(20)
    wait_for(
        lambda: any(c.title == "Other" for c in bob.client.conversations().result()),
        what="bob joins the group",
    )
    _send_crafted(
        alice,
        group.conversation_id,
        Delete(row.uuid, "alice", now),
        Edit(row.uuid, "alice", now, "through the wrong chat"),
    )
    # Each sender's later text arrives after its crafted contents were handled.
    carol.client.send_text(carol_chat.conversation_id, "after carol's").result(20)
    alice.client.send_text(group.conversation_id, "after alice's").result(20)
    wait_for(lambda: _find(bob, "carol", "after carol's"), what="carol's later text")
    wait_for(lambda: _find(bob, "Other", "after alice's"), what="alice's later group text")
    unchanged = _row(bob, target.message_id)
    assert unchanged is not None
    assert (unchanged.kind, unchanged.body, unchanged.edited_at) == (
        "text",
        "only alice may change this",
        None,
    )
    # Nothing of theirs waits to be applied either: the message was there.
    early = on_core(
        bob, lambda: bob.client.messenger.store.early_changes.take(row.uuid, "carol", None)
    )
    assert early == []


def test_the_24_hour_limit(people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    old = alice.client.send_text(chat.conversation_id, "yesterday's news").result(20)
    wait_for(lambda: _find(bob, "alice", "yesterday's news"), what="bob receives")
    received = _find(bob, "alice", "yesterday's news")
    assert received is not None
    messenger = alice.client.messenger
    real_clock = messenger.clock
    late = lambda: real_clock() + CHANGE_WINDOW_MS + 60_000  # noqa: E731
    on_core(alice, lambda: setattr(messenger, "clock", late))
    with pytest.raises(ServiceError, match="24 hours"):
        alice.client.delete_for_everyone(old.message_id).result(20)
    with pytest.raises(ServiceError, match="24 hours"):
        alice.client.edit_text(old.message_id, "rewritten").result(20)
    # Sent anyway, past the sender's check: the receiver refuses them too.
    row = _row(alice, old.message_id)
    assert row is not None
    _send_crafted(
        alice,
        chat.conversation_id,
        Edit(row.uuid, "alice", late(), "rewritten"),
        Delete(row.uuid, "alice", late()),
    )
    on_core(alice, lambda: setattr(messenger, "clock", real_clock))
    alice.client.send_text(chat.conversation_id, "marker").result(20)
    wait_for(lambda: _find(bob, "alice", "marker"), what="bob receives the later text")
    kept = _row(bob, received.message_id)
    assert kept is not None and (kept.kind, kept.body) == ("text", "yesterday's news")
    # Delete for me has no time limit, and tells nobody.
    alice.client.delete_for_me(old.message_id).result(20)
    assert _row(alice, old.message_id) is None
    assert any(
        isinstance(e, MessagesExpired) and old.message_id in e.message_ids for e in alice.events
    )
    assert _row(bob, received.message_id) is not None


def test_a_delete_or_edit_that_arrives_before_its_message_is_applied_when_it_comes(
    people: dict[str, Person],
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hello").result(20)
    wait_for(lambda: _find(bob, "alice", "hello"), what="bob receives")
    now = on_core(alice, alice.client.messenger.clock)
    deleted_id, edited_id = str(uuid.uuid4()), str(uuid.uuid4())
    _send_crafted(
        alice,
        chat.conversation_id,
        Delete(deleted_id, "alice", now + 2),
        Edit(edited_id, "alice", now + 3, "the edited text"),
        Text(deleted_id, now, "overtaken and deleted"),
        Text(edited_id, now + 1, "overtaken and edited"),
    )
    wait_for(lambda: _find(bob, "alice", "the edited text"), what="the edited message arrives")
    wait_for(lambda: any(m.deleted for m in _chat(bob, "alice")), what="the deleted one arrives")
    assert _find(bob, "alice", "overtaken and edited") is None
    assert not bob.client.search("overtaken").result(20)


def _outbox(person: Person) -> list[object]:
    return on_core(person, lambda: person.client.messenger.store.outbox.pending(50))  # type: ignore[return-value]


def _typing_seen(
    person: Person, conversation_id: int, who: str, started: bool
) -> Callable[[], bool]:
    return lambda: any(
        (e.conversation_id, e.sender, e.started) == (conversation_id, who, started)
        for e in _typing(person)
    )


def test_typing_goes_straight_to_the_relay_and_is_shown(people: dict[str, Person]) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hi").result(20)
    wait_for(lambda: _find(bob, "alice", "hi"), what="bob receives")
    bob_chat = next(c for c in bob.client.conversations().result() if c.title == "alice")
    bob.client.accept_request(bob_chat.conversation_id).result(20)  # typing: contacts only
    wait_for(lambda: not _outbox(alice), what="alice's outbox empties")

    assert alice.client.send_typing(chat.conversation_id, True).result(20) == 1
    assert not _outbox(alice)  # never queued, so never retried
    wait_for(_typing_seen(bob, bob_chat.conversation_id, "alice", True), what="bob sees typing")
    assert alice.client.send_typing(chat.conversation_id, False).result(20) == 1
    wait_for(_typing_seen(bob, bob_chat.conversation_id, "alice", False), what="typing stops")
    assert not _outbox(alice)
    # Nothing of it is stored: no message row came of it.
    assert [m.body for m in _chat(bob, "alice")] == ["hi"]

    # In a group, to every member through the Sender Key.
    group = alice.client.create_group("Crew", ["bob", "carol"]).result(20)
    alice.client.send_text(group.conversation_id, "crew!").result(20)
    for member in (bob, carol):
        wait_for(lambda member=member: _find(member, "Crew", "crew!"), what="members receive")
    crew = next(c for c in carol.client.conversations().result() if c.title == "Crew")
    assert crew.request  # added by a stranger: carol accepts the group first
    carol.client.accept_request(crew.conversation_id).result(20)
    wait_for(lambda: not _outbox(alice), what="alice's outbox empties")
    assert alice.client.send_typing(group.conversation_id, True).result(20) == 2
    for member in (bob, carol):
        crew = next(c for c in member.client.conversations().result() if c.title == "Crew")
        wait_for(
            _typing_seen(member, crew.conversation_id, "alice", True),
            what=f"{member.name} sees alice typing in the group",
        )


def test_typing_respects_requests_and_the_setting(people: dict[str, Person]) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    # Carol is a stranger to bob: her chat is a request on his side.
    carol_chat = carol.client.start_direct("bob").result(20)
    carol.client.send_text(carol_chat.conversation_id, "hello stranger").result(20)
    wait_for(lambda: _find(bob, "carol", "hello stranger"), what="bob gets the request")
    wait_for(lambda: not _outbox(carol), what="carol's outbox empties")
    carol.client.send_typing(carol_chat.conversation_id, True).result(20)
    carol.client.send_text(carol_chat.conversation_id, "still there?").result(20)
    wait_for(lambda: _find(bob, "carol", "still there?"), what="bob gets carol's next text")
    assert not [e for e in _typing(bob) if e.sender == "carol"]
    # Nor does bob send any into the request.
    bob_request = next(c for c in bob.client.conversations().result() if c.title == "carol")
    assert bob.client.send_typing(bob_request.conversation_id, True).result(20) == 0

    # Off: none sent, and none shown.
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hi").result(20)
    wait_for(lambda: _find(bob, "alice", "hi"), what="bob receives")
    bob_chat = next(c for c in bob.client.conversations().result() if c.title == "alice")
    bob.client.accept_request(bob_chat.conversation_id).result(20)
    wait_for(lambda: not _outbox(alice), what="alice's outbox empties")
    bob.client.set_typing_indicators(False).result(20)
    assert bob.client.typing_indicators().result(20) is False
    alice.client.send_typing(chat.conversation_id, True).result(20)
    alice.client.send_text(chat.conversation_id, "marker").result(20)
    wait_for(lambda: _find(bob, "alice", "marker"), what="bob gets the marker")
    assert not [e for e in _typing(bob) if e.sender == "alice"]
    alice.client.set_typing_indicators(False).result(20)
    assert alice.client.send_typing(chat.conversation_id, True).result(20) == 0
