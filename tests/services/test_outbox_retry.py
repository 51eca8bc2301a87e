"""The client never loses a message to a refusal it can wait out (issue #21).

Against a real relay: a mailbox flooded to its quota holds up only its own
recipient's copy, which goes once the mailbox drains; a whole send refused by the
relay's rate limit is sent again, message and read receipt alike; a recipient that
does not exist, an outbox item the relay will never take and a copy refused for 30
days fail. Then the retry policy itself, without any I/O (app/services/delivery.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.net import OutgoingEnvelope, RateLimited, RelayClient, RelayUnavailable
from app.net.relay_client import SendOutcome, parse_retry_after
from app.services import delivery
from app.services.account import open_messenger
from app.services.client import Client
from app.services.messenger import now_ms
from app.services.views import MessageStatus
from app.store import OutboxItem
from tests.services.helpers import Person, on_core, wait_for
from tests.support.components import RelayProcess

DAY_MS = 86_400_000
# Every authenticated request is refused at this rate: the account bucket's burst
# (4x the rate) is 0.8, never a whole token, so the relay answers 429 each time.
NOTHING_PASSES_RATE = "0.2"


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    created = {name: Person(tmp_path, name, relay) for name in ("alice", "bob", "carol")}
    yield created
    for person in created.values():
        person.stop()


def _conversation_id(person: Person, title: str) -> int | None:
    match = [c for c in person.client.conversations().result() if c.title == title]
    return match[0].conversation_id if match else None


def _texts(person: Person, title: str) -> list[str]:
    conversation_id = _conversation_id(person, title)
    if conversation_id is None:
        return []
    _view, messages = person.client.open_conversation(conversation_id).result()
    return [m.body for m in messages if not m.system]


def _status(person: Person, title: str, body: str) -> MessageStatus | None:
    conversation_id = _conversation_id(person, title)
    assert conversation_id is not None
    _view, messages = person.client.open_conversation(conversation_id).result()
    return next((m.status for m in messages if m.body == body), None)


def _outbox(person: Person) -> list[OutboxItem]:
    return on_core(person, lambda: person.client.messenger.store.outbox.pending(10_000))


def _reopen(person: Person) -> None:
    """The person's app, stopped, is opened again on the same profile."""
    messenger = open_messenger(person.profile, f"{person.name} passphrase")
    person.client = Client(messenger, person.profile.relay(timeout=3), tick_seconds=0.2)
    person.client.set_listener(person.events.append)
    person.client.start()


def _flood(relay: RelayProcess, recipient: str) -> int:
    """Another account fills `recipient`'s mailbox with junk envelopes up to the
    relay's quota; returns how many were queued."""
    flooder = RelayClient(relay.url, relay.ca_file, timeout=60)
    flooder.register("mallory", "flooder")
    queued = 0
    try:
        for batch_number in range(20):
            batch = [
                OutgoingEnvelope(f"flood-{batch_number}-{n}", recipient, 1, os.urandom(48))
                for n in range(1000)
            ]
            outcomes = flooder.send(batch)
            queued += sum(outcome == "queued" for outcome in outcomes.values())
            if any(outcome == "mailbox_full" for outcome in outcomes.values()):
                return queued
    finally:
        flooder.close()
    raise AssertionError("the mailbox never filled")


def test_a_full_mailbox_holds_up_only_its_recipients_copy(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    group = alice.client.create_group("Trip", ["bob", "carol"]).result(20)
    wait_for(
        lambda: all(_conversation_id(m, "Trip") is not None for m in (bob, carol)),
        what="bob and carol join the group",
    )
    carol_to_bob = carol.client.start_direct("bob").result(20)
    wait_for(lambda: not _outbox(alice) and not _outbox(carol), what="the setup is sent")
    bob.stop()  # offline, so that his mailbox stays full
    flooded = _flood(relay, "bob")

    alice.client.send_text(group.conversation_id, "meet at the station").result(20)
    carol.client.send_text(carol_to_bob.conversation_id, "are you there?").result(20)
    wait_for(lambda: "meet at the station" in _texts(carol, "Trip"), what="carol gets it at once")

    def waiting_for_bob(person: Person) -> bool:
        outbox = _outbox(person)
        backoff = on_core(person, lambda: person.client.messenger.store.outbox.backoff("bob", 1))
        return bool(outbox) and backoff is not None and {i.recipient for i in outbox} == {"bob"}

    wait_for(lambda: waiting_for_bob(alice), what="alice's copy for bob waits")
    wait_for(lambda: waiting_for_bob(carol), what="carol's message for bob waits")
    backoff = on_core(alice, lambda: alice.client.messenger.store.outbox.backoff("bob", 1))
    assert backoff is not None
    # The wait is at least what the relay asked for (its retry_after is 60 s).
    assert backoff.not_before - now_ms() >= 55_000
    # Still on its way to Bob, not failed (Carol's delivery receipt may have come).
    assert _status(alice, "Trip", "meet at the station") in (
        MessageStatus.SENDING,
        MessageStatus.DELIVERED,
    )
    assert _status(carol, "bob", "are you there?") == MessageStatus.SENDING

    # A month on, Carol's copy is still refused: only now is it failed.
    carol.client.messenger.clock = lambda: now_ms() + 31 * DAY_MS
    wait_for(
        lambda: _status(carol, "bob", "are you there?") == MessageStatus.FAILED,
        what="carol's message fails after the deadline",
    )
    assert not _outbox(carol)

    _reopen(bob)
    wait_for(lambda: bob.client.undecryptable >= flooded, timeout=120, what="bob drains the flood")
    mailbox = bob.profile.relay(token=bob.client.messenger.relay_token)
    wait_for(lambda: not mailbox.fetch(limit=1), what="bob's acknowledgements reach the relay")
    mailbox.close()
    # Alice's app at the end of the relay's wait (rather than the test waiting it).
    offset = backoff.not_before - now_ms() + 1000
    alice.client.messenger.clock = lambda: now_ms() + offset
    wait_for(lambda: "meet at the station" in _texts(bob, "Trip"), what="bob gets it")
    wait_for(lambda: not _outbox(alice), what="alice's outbox empties")
    assert _status(alice, "Trip", "meet at the station") in (
        MessageStatus.SENT,
        MessageStatus.DELIVERED,
        MessageStatus.READ,
    )
    assert "are you there?" not in _texts(bob, "carol")


def test_a_message_and_a_read_receipt_survive_the_rate_limit(
    people: dict[str, Person], relay: RelayProcess
) -> None:
    alice, bob = people["alice"], people["bob"]
    conversation = alice.client.start_direct("bob").result(20)
    alice.client.send_text(conversation.conversation_id, "hello").result(20)
    wait_for(lambda: _texts(bob, "alice") == ["hello"], what="bob gets the first message")
    bob_conversation = _conversation_id(bob, "alice")
    assert bob_conversation is not None
    bob.client.send_text(bob_conversation, "hi alice").result(20)
    wait_for(lambda: "hi alice" in _texts(alice, "bob"), what="alice gets the reply")
    wait_for(lambda: not _outbox(alice) and not _outbox(bob), what="both outboxes empty")

    relay.extra_args = ["--rate", NOTHING_PASSES_RATE]
    relay.restart()
    before = alice.client.send_backoffs
    alice.client.send_text(conversation.conversation_id, "sent while refused").result(20)
    alice.client.mark_read(conversation.conversation_id).result(20)  # a read receipt for bob
    wait_for(lambda: alice.client.send_backoffs > before, what="the relay refuses alice's send")
    assert len(_outbox(alice)) == 2
    assert _status(alice, "bob", "sent while refused") == MessageStatus.SENDING

    relay.extra_args = []
    relay.restart()
    wait_for(lambda: "sent while refused" in _texts(bob, "alice"), what="bob gets the message")
    wait_for(
        lambda: _status(bob, "alice", "hi alice") == MessageStatus.READ,
        what="bob's message is read",
    )
    wait_for(lambda: not _outbox(alice), what="alice's outbox empties")
    assert _status(alice, "bob", "sent while refused") != MessageStatus.FAILED


def test_an_item_the_relay_refuses_fails_alone(people: dict[str, Person]) -> None:
    """One outbox item the relay will never take (over its 256 KiB envelope limit:
    it answers the whole request 413) is found by splitting the batch; only it is
    dropped, and the message queued with it goes."""
    alice, bob = people["alice"], people["bob"]
    conversation = alice.client.start_direct("bob").result(20)
    wait_for(lambda: not _outbox(alice), what="the setup is sent")
    messenger = alice.client.messenger

    def queue_both() -> None:
        with messenger.store.transaction():
            messenger.store.outbox.add(
                "oversized", None, "bob", 1, b"\x00" * (300 * 1024), now=messenger.clock()
            )
            messenger.send_text(conversation.conversation_id, "sent beside a bad item")

    on_core(alice, queue_both)
    wait_for(lambda: "sent beside a bad item" in _texts(bob, "alice"), what="bob gets it")
    wait_for(lambda: not _outbox(alice), what="the bad item leaves the outbox")
    assert _status(alice, "bob", "sent beside a bad item") != MessageStatus.FAILED


def test_a_recipient_that_does_not_exist_fails_the_message(people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    conversation = alice.client.start_direct("bob").result(20)
    wait_for(lambda: not _outbox(alice), what="the setup is sent")
    revoking = bob.profile.relay(token=bob.client.messenger.relay_token)
    revoking.revoke_token()  # bob's only device is gone from the relay
    revoking.close()
    alice.client.send_text(conversation.conversation_id, "anyone there?").result(20)
    wait_for(
        lambda: _status(alice, "bob", "anyone there?") == MessageStatus.FAILED,
        what="the message fails",
    )
    assert not _outbox(alice)


def test_a_group_member_who_is_gone_does_not_fail_what_the_others_received(
    people: dict[str, Person],
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    group = alice.client.create_group("Book club", ["bob", "carol"]).result(20)
    wait_for(
        lambda: all(_conversation_id(m, "Book club") is not None for m in (bob, carol)),
        what="bob and carol join the group",
    )
    wait_for(lambda: not _outbox(alice), what="the setup is sent")
    revoking = bob.profile.relay(token=bob.client.messenger.relay_token)
    revoking.revoke_token()  # bob's only device is gone from the relay
    revoking.close()
    # Offline, so that no delivery receipt of hers can paper over a "failed".
    people.pop("carol").stop()
    alice.client.send_text(group.conversation_id, "chapter 3 by friday").result(20)
    wait_for(lambda: not _outbox(alice), what="both copies leave the outbox")
    assert _status(alice, "Book club", "chapter 3 by friday") == MessageStatus.SENT


# ---- the policy, without I/O -----------------------------------------------------


def test_each_answer_has_its_verdict() -> None:
    assert delivery.verdict(SendOutcome("queued")) is delivery.Verdict.SENT
    assert delivery.verdict("duplicate") is delivery.Verdict.SENT
    assert delivery.verdict("unknown_recipient") is delivery.Verdict.FAILED
    assert delivery.verdict(delivery.REJECTED) is delivery.Verdict.FAILED
    assert delivery.verdict(SendOutcome("mailbox_full", 60.0)) is delivery.Verdict.LATER
    # Nothing is lost to an answer this client does not know.
    assert delivery.verdict(delivery.UNANSWERED) is delivery.Verdict.LATER
    assert delivery.verdict("some_future_status") is delivery.Verdict.LATER


def test_the_first_wait_is_what_the_relay_asked_for() -> None:
    assert delivery.retry_delay(1, 60.0, 0.0) == 60.0
    assert delivery.retry_delay(1, 60.0, 0.999) == pytest.approx(60.0 * (1 + delivery.JITTER), 1e-3)
    assert delivery.retry_delay(1, None, 0.0) == delivery.BASE_DELAY_SECONDS
    assert delivery.retry_delay(1, 0.0, 0.0) == delivery.BASE_DELAY_SECONDS


def test_repeats_double_the_wait_up_to_the_cap() -> None:
    waits = [delivery.retry_delay(n, 60.0, 0.0) for n in range(1, 8)]
    assert waits == [60.0, 120.0, 240.0, 480.0, 900.0, 900.0, 900.0]
    jittered = [delivery.retry_delay(n, 60.0, 0.5) for n in range(1, 8)]
    assert all(a < b for a, b in zip(waits[:4], jittered[:4], strict=True))
    assert max(jittered) <= delivery.MAX_DELAY_SECONDS * (1 + delivery.JITTER)
    # However many refusals, and a relay asking for hours, the wait stays bounded.
    assert delivery.retry_delay(10_000, None, 0.999) <= delivery.MAX_DELAY_SECONDS * 1.2
    assert delivery.retry_delay(1, 86_400.0, 0.0) == delivery.MAX_DELAY_SECONDS
    assert delivery.retry_delay(3, 1.0, 0.0) == 4.0


def test_an_item_expires_after_the_relays_retention() -> None:
    queued = 1_700_000_000_000
    assert not delivery.expired(queued, queued + 30 * DAY_MS - 1)
    assert delivery.expired(queued, queued + 30 * DAY_MS)


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412450.0) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412510.0) == 0.0


def test_a_refusal_of_the_whole_request_carries_the_relays_wait() -> None:
    def answer(status: int, headers: dict[str, str]) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        response.headers.update(headers)
        response._content = b'{"error": "busy"}'
        return response

    overloaded = RelayClient._error(answer(503, {"Retry-After": "30"}))
    assert isinstance(overloaded, RelayUnavailable)
    assert (overloaded.status, overloaded.retry_after) == (503, 30.0)
    failed = RelayClient._error(answer(500, {}))
    assert isinstance(failed, RelayUnavailable) and failed.retry_after is None
    limited = RelayClient._error(answer(429, {"Retry-After": "2"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.0
    unsure = RelayClient._error(answer(429, {"Retry-After": "later"}))
    assert isinstance(unsure, RateLimited) and unsure.retry_after == 1.0
