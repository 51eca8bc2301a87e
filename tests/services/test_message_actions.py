"""Replies and reactions between real clients through a real relay (issue #24)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.protocol.content import Reaction, encode_content
from app.services.views import MessageView
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


def _reactions_on(person: Person, title: str, body: str) -> tuple[tuple[str, int], ...] | None:
    message = _find(person, title, body)
    return None if message is None else message.reactions


def test_reply_and_reactions_in_a_direct_chat(people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    lunch = alice.client.send_text(chat.conversation_id, "lunch at noon?").result(20)
    wait_for(lambda: _find(bob, "alice", "lunch at noon?"), what="bob receives")
    original = _find(bob, "alice", "lunch at noon?")
    assert original is not None
    reply = bob.client.send_text(original.conversation_id, "yes!", original.message_id).result(20)
    assert reply.quote is not None and reply.quote.author == "alice"
    assert reply.quote.message_id == original.message_id

    wait_for(lambda: _find(alice, "bob", "yes!"), what="alice receives the reply")
    received = _find(alice, "bob", "yes!")
    assert received is not None and received.quote is not None
    assert (received.quote.author, received.quote.snippet) == ("alice", "lunch at noon?")
    assert received.quote.message_id == lunch.message_id  # clicking it finds hers

    alice.client.react(received.message_id, "👍").result(20)
    wait_for(lambda: _reactions_on(bob, "alice", "yes!") == (("👍", 1),), what="bob sees 👍")
    # Another emoji replaces it; the same one again takes it away.
    changed = alice.client.react(received.message_id, "❤️").result(20)
    assert (changed.reactions, changed.own_reaction) == ((("❤️", 1),), "❤️")
    wait_for(lambda: _reactions_on(bob, "alice", "yes!") == (("❤️", 1),), what="bob sees ❤️")
    removed = alice.client.react(received.message_id, "❤️").result(20)
    assert (removed.reactions, removed.own_reaction) == ((), "")
    wait_for(lambda: _reactions_on(bob, "alice", "yes!") == (), what="bob sees it removed")
    mine = _find(bob, "alice", "yes!")
    assert mine is not None and mine.own_reaction == ""


def test_reply_and_reactions_in_a_group(people: dict[str, Person]) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    group = alice.client.create_group("Trip", ["bob", "carol"]).result(20)
    alice.client.send_text(group.conversation_id, "who brings the map?").result(20)
    for member in (bob, carol):
        wait_for(
            lambda member=member: _find(member, "Trip", "who brings the map?"),
            what=f"{member.name} receives",
        )
    for member in (bob, carol):
        message = _find(member, "Trip", "who brings the map?")
        assert message is not None
        member.client.react(message.message_id, "😂").result(20)
    wait_for(
        lambda: _reactions_on(alice, "Trip", "who brings the map?") == (("😂", 2),),
        what="alice sees both reactions",
    )
    wait_for(
        lambda: _reactions_on(carol, "Trip", "who brings the map?") == (("😂", 2),),
        what="carol sees bob's reaction too",
    )
    question = _find(bob, "Trip", "who brings the map?")
    assert question is not None
    bob.client.send_text(question.conversation_id, "I do", question.message_id).result(20)
    wait_for(lambda: _find(carol, "Trip", "I do"), what="carol receives the reply")
    reply = _find(carol, "Trip", "I do")
    assert reply is not None and reply.quote is not None
    assert (reply.quote.author, reply.quote.snippet) == ("alice", "who brings the map?")


def test_a_reaction_naming_a_message_of_another_chat_is_ignored(
    people: dict[str, Person],
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "just between us").result(20)
    wait_for(lambda: _find(bob, "alice", "just between us"), what="bob receives")
    carol_chat = carol.client.start_direct("bob").result(20)
    carol.client.send_text(carol_chat.conversation_id, "hi bob").result(20)
    wait_for(lambda: _find(bob, "carol", "hi bob"), what="bob receives carol's")
    target = _find(bob, "alice", "just between us")
    assert target is not None
    uuid = on_core(bob, lambda: bob.client.messenger.store.messages.get(target.message_id)).uuid  # type: ignore[union-attr]

    # Carol learnt the id somehow and crafts reactions on it over her own session
    # with bob, naming its true author and a wrong one: neither is in her chat.
    def craft() -> None:
        messenger = carol.client.messenger
        with messenger.store.transaction():
            for author in ("alice", "bob"):
                crafted = Reaction(uuid, author, messenger.clock(), "💩")
                messenger._encrypt_for("bob", encode_content(crafted), None)

    on_core(carol, craft)
    carol.client.request_flush()
    wait_for(
        lambda: not on_core(carol, lambda: carol.client.messenger.store.outbox.pending(10)),
        what="carol's crafted reactions are sent",
    )
    # Her session delivers in order: once this arrives, the reactions were handled.
    carol.client.send_text(carol_chat.conversation_id, "after the reactions").result(20)
    wait_for(lambda: _find(bob, "carol", "after the reactions"), what="bob got carol's later text")
    assert _reactions_on(bob, "alice", "just between us") == ()
    # A reaction in the right chat from the right person still counts.
    alice_view = _find(alice, "bob", "just between us")
    assert alice_view is not None
    alice.client.react(alice_view.message_id, "🙏").result(20)
    wait_for(
        lambda: _reactions_on(bob, "alice", "just between us") == (("🙏", 1),),
        what="alice's reaction arrives",
    )
