"""Protocol v2 (issue #18) through real clients and a real relay whose operator keeps
every envelope and puts any bytes into any mailbox (`RecordingMailbox`).

- An old first message, replayed after 25 turns, starts no session and changes
  nothing; the session goes on working both ways.
- A replayed (or duplicated) group update, sender key or timer change is not
  applied twice.
- One crafted envelope is quarantined, acknowledged and shown as "could not be
  decrypted"; the rest of its batch is delivered.
- Mutated envelopes through the whole receive path: only the protocol's errors,
  and the batch is never blocked.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.protocol import group_state as gs
from app.protocol.content import (
    FRAME_PAIRWISE,
    Content,
    GroupChangeContent,
    GroupUpdate,
    SenderKey,
    TimerUpdate,
    decode_frame,
    encode_content,
    encode_frame,
)
from app.protocol.identity import RemoteBundle
from app.protocol.ratchet import Header
from app.protocol.session import NORMAL_MESSAGE, Envelope, SessionStart
from app.services.account import open_messenger
from app.services.client import Client
from app.services.messenger import ServiceError
from app.services.views import MessageStatus
from tests.services.helpers import Person, drain_one_time_keys, on_core, wait_for
from tests.support.components import RelayProcess
from tests.support.mailbox_adversary import RecordingMailbox

T = TypeVar("T")
TURNS = 25
UNDECRYPTABLE = "A message from {} could not be decrypted"


class Cast:
    """Real people on one relay; each can go offline and come back (same profile)."""

    def __init__(self, root: Path, relay: RelayProcess) -> None:
        self.people = {name: Person(root, name, relay) for name in ("alice", "bob", "carol")}
        self.online = set(self.people)

    def __getitem__(self, name: str) -> Person:
        return self.people[name]

    def offline(self, person: Person) -> None:
        person.stop()
        self.online.discard(person.name)

    def back(self, person: Person, *, one_batch_of: int = 0) -> None:
        """Reopens the profile. With `one_batch_of`, the client's core is held until
        that many envelopes have arrived, so they are received as one batch."""
        messenger = open_messenger(person.profile, f"{person.name} passphrase")
        client = Client(messenger, person.profile.relay(timeout=3), tick_seconds=0.2)
        client.set_listener(person.events.append)
        person.client = client
        self.online.add(person.name)
        if not one_batch_of:
            client.start()
            return
        gate = threading.Event()
        client.core(gate.wait, 60)
        client.start()
        try:
            wait_for(
                lambda: len(client._inbox) >= one_batch_of,
                what=f"{one_batch_of} envelopes waiting for {person.name}",
            )
        finally:
            gate.set()

    def stop(self) -> None:
        for name in self.online:
            self.people[name].stop()


@pytest.fixture
def cast(tmp_path: Path, relay: RelayProcess, mailbox: RecordingMailbox) -> Iterator[Cast]:
    people = Cast(tmp_path, relay)
    yield people
    people.stop()


# ---- helpers ------------------------------------------------------------------
def conversation_id(person: Person, title: str) -> int:
    views = person.client.conversations().result(timeout=20)
    return next(v.conversation_id for v in views if v.title == title)


def direct_chat(person: Person, peer: str) -> int:
    """The direct chat with `peer`, made if there is none (no keys are fetched)."""
    return on_core(
        person, lambda: person.client.messenger.direct_conversation(peer)
    ).conversation_id


def rows(person: Person, title: str, *, system: bool = False) -> list[str]:
    views = person.client.conversations().result(timeout=20)
    match = [v for v in views if v.title == title]
    if not match:
        return []
    _view, messages = person.client.open_conversation(match[0].conversation_id).result(20)
    return [m.body for m in messages if m.system == system]


def stored(person: Person, body: str) -> int:
    """How many messages with this body the store holds, in any chat."""
    store = person.client.messenger.store
    query = "SELECT COUNT(*) FROM messages WHERE body = ?"
    return int(on_core(person, lambda: store.execute(query, (body,)).fetchone()[0]))


def state_of(person: Person, peer: str) -> tuple[bytes | None, bytes, int]:
    """Everything a replayed session start could change: the session, the prekeys,
    the number of stored messages."""
    store = person.client.messenger.store

    def read() -> tuple[bytes | None, bytes, int]:
        account = store.account.get()
        assert account is not None
        count = store.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        return store.sessions.get(peer, 1), account.prekeys, int(count)

    return on_core(person, read)


def fetch_bundle(person: Person, of: str) -> dict[str, Any]:
    relay = person.profile.relay(token=person.client.messenger.relay_token)
    try:
        device: dict[str, Any] = relay.fetch_keys(of)["devices"][0]
        return device
    finally:
        relay.close()


def redeliver(person: Person) -> None:
    """Makes the push connection reconnect: the relay then pushes the whole mailbox."""
    assert person.client.push is not None
    person.client.push.drop_connection()


def converse(a: Person, b: Person, turns: int) -> None:
    """`turns` round trips, each waiting for delivery, so every message of one side
    follows a new ratchet key of the other."""
    a_chat, b_chat = direct_chat(a, b.name), direct_chat(b, a.name)
    for turn in range(turns):
        for sender, receiver, chat in ((b, a, b_chat), (a, b, a_chat)):
            text = f"{sender.name} turn {turn}"
            sender.client.send_text(chat, text).result(20)
            wait_for(lambda r=receiver, s=sender, t=text: t in rows(r, s.name), what=text)


def settle(mailbox: RecordingMailbox, a: Person, b: Person) -> None:
    """Waits until a's last message to b is delivered and both mailboxes are empty,
    so that nothing is in flight that would change either side's state."""

    def delivered() -> bool:
        _view, messages = a.client.open_conversation(conversation_id(a, b.name)).result(20)
        last = [m for m in messages if m.outgoing][-1]
        return last.status in (MessageStatus.DELIVERED, MessageStatus.READ)

    wait_for(delivered, what=f"{a.name}'s last message delivered")
    wait_for(
        lambda: mailbox.pending(a.name) == 0 and mailbox.pending(b.name) == 0,
        what="empty mailboxes",
    )
    time.sleep(0.3)  # the last acknowledgement's own receipt, if any, lands


def both_ways(a: Person, b: Person, tag: str) -> None:
    for sender, receiver in ((a, b), (b, a)):
        text = f"{sender.name} after {tag}"
        sender.client.send_text(conversation_id(sender, receiver.name), text).result(20)
        wait_for(lambda r=receiver, s=sender, t=text: t in rows(r, s.name), what=text)


def group_state(
    person: Person, chat_id: int | None, trip_id: int
) -> tuple[int | None, tuple[str, ...], bytes | None, bytes]:
    """(timer of the direct chat, members, the member sender key of alice, group
    id), read from the store (on the core thread when the client is busy)."""
    store = person.client.messenger.store
    chat = store.conversations.get(chat_id) if chat_id is not None else None
    trip = store.conversations.get(trip_id)
    assert trip is not None and trip.group_id is not None
    return (
        chat.timer_seconds if chat is not None else None,
        tuple(store.groups.members(trip.group_id)),
        store.groups.member_sender_key(trip.group_id, "alice", 1),
        trip.group_id,
    )


def send_content(person: Person, to: str, content: Content) -> None:
    """Sends exactly this content, encrypted afresh: a duplicate of earlier content
    then reaches the receiver as a new, valid message of the live session."""
    messenger = person.client.messenger

    def run() -> None:
        with messenger.store.transaction():
            messenger._encrypt_for(to, encode_content(content), None)

    on_core(person, run)
    person.client.request_flush()


def start_without_one_time_keys(cast: Cast, sender: Person, receiver: Person) -> None:
    """The receiver is offline while someone drains its one-time keys and the sender
    starts a session: the session start uses only the long-lived prekeys."""
    cast.offline(receiver)
    drain_one_time_keys(cast["carol"], receiver.name)
    sender.client.start_direct(receiver.name).result(timeout=20)


# ---- (a) an old first message ---------------------------------------------------
def test_an_old_first_message_replayed_after_25_turns_is_refused(
    cast: Cast, mailbox: RecordingMailbox
) -> None:
    alice, bob = cast["alice"], cast["bob"]
    start_without_one_time_keys(cast, alice, bob)
    alice.client.send_text(conversation_id(alice, "bob"), "the first message").result(20)
    cast.back(bob)
    wait_for(lambda: rows(bob, "alice") == ["the first message"], what="bob gets it")
    first = mailbox.recorded(sender="alice", recipient="bob")[0]
    _kind, payload = decode_frame(first.body)
    start = SessionStart.of_envelope(payload)
    assert start is not None and start.one_time_prekey_id is None

    converse(alice, bob, TURNS)
    settle(mailbox, alice, bob)
    before = state_of(bob, "alice")
    mailbox.replay(first)
    redeliver(bob)
    wait_for(lambda: bob.client.replayed == 1, what="the replay reaches bob and is dropped")
    wait_for(lambda: mailbox.pending("bob") == 0, what="the replay acknowledged")

    assert state_of(bob, "alice") == before
    assert stored(bob, "the first message") == 1
    assert rows(bob, "alice", system=True) == []
    assert bob.client.undecryptable == 0
    both_ways(alice, bob, "the replay")


# ---- (b) group updates, sender keys and timer changes ---------------------------
def test_replayed_group_update_sender_key_and_timer_change_are_not_applied_again(
    cast: Cast, mailbox: RecordingMailbox
) -> None:
    alice, bob = cast["alice"], cast["bob"]
    start_without_one_time_keys(cast, alice, bob)
    # Each of these is a first (prekey) message of the one session start.
    alice.client.set_timer(conversation_id(alice, "bob"), 3600).result(20)
    group = alice.client.create_group("Trip", ["bob"]).result(20)
    alice.client.send_text(conversation_id(alice, "bob"), "first").result(20)
    cast.back(bob)
    wait_for(lambda: "first" in rows(bob, "alice"), what="bob gets the first messages")
    firsts = mailbox.recorded(sender="alice", recipient="bob")
    assert len(firsts) == 5  # device list, timer, group update, sender key, text

    converse(alice, bob, TURNS)
    # Later state an old replay would put back: timer off, carol in the group, and
    # alice's sender key chain moved on.
    alice.client.set_timer(conversation_id(alice, "bob"), 0).result(20)
    alice.client.add_member(group.conversation_id, "carol").result(20)
    alice.client.send_text(group.conversation_id, "to the group").result(20)
    wait_for(lambda: "to the group" in rows(bob, "Trip"), what="bob gets the group text")
    alice.client.send_text(conversation_id(alice, "bob"), "settled").result(20)
    wait_for(lambda: "settled" in rows(bob, "alice"), what="bob settles")
    settle(mailbox, alice, bob)

    chat_id, trip_id = conversation_id(bob, "alice"), conversation_id(bob, "Trip")

    def snapshot() -> tuple[object, ...]:
        return (
            on_core(bob, lambda: group_state(bob, chat_id, trip_id)),
            tuple(rows(bob, "alice", system=True)),
            tuple(rows(bob, "Trip", system=True)),
            state_of(bob, "alice"),
        )

    before = snapshot()
    assert before[0][0] == 0 and "carol" in before[0][1]
    for envelope in firsts:
        mailbox.replay(envelope)
    redeliver(bob)
    wait_for(lambda: bob.client.replayed == len(firsts), what="every replay dropped")
    wait_for(lambda: mailbox.pending("bob") == 0, what="the replays acknowledged")
    assert snapshot() == before
    both_ways(alice, bob, "the replays")


def test_duplicate_group_update_sender_key_and_timer_change_in_new_messages_are_dropped(
    cast: Cast,
) -> None:
    """The same content sent again under fresh encryption (so the ratchet accepts
    it): still applied only once."""
    alice, bob = cast["alice"], cast["bob"]
    alice.client.start_direct("bob").result(20)
    group = alice.client.create_group("Trip", ["bob"]).result(20)
    wait_for(lambda: rows(bob, "Trip", system=True), what="bob is in the group")
    trip_id = conversation_id(bob, "Trip")
    gid = group_state(bob, None, trip_id)[3]

    def marker(text: str) -> None:
        alice.client.send_text(conversation_id(alice, "bob"), text).result(20)
        wait_for(lambda: text in rows(bob, "alice"), what=text)

    now = int(time.time() * 1000)

    def signed_state() -> GroupChangeContent:
        change = on_core(alice, lambda: alice.client.messenger.store.groups.state(gid)[0])
        assert change is not None
        return GroupChangeContent(change)

    # Carol added, then removed: two real, signed changes of the group's state.
    alice.client.add_member(group.conversation_id, "carol").result(20)
    with_carol = signed_state()
    alice.client.remove_member(group.conversation_id, "carol").result(20)
    wait_for(
        lambda: any("removed carol" in row for row in rows(bob, "Trip", system=True)),
        what="bob sees carol removed",
    )
    hour = TimerUpdate(str(uuid.uuid4()), now, 3600)
    off = TimerUpdate(str(uuid.uuid4()), now + 1, 0)
    own_key = on_core(alice, lambda: alice.client.messenger._own_sender_key(gid))
    distribution = SenderKey(own_key.distribution().to_bytes())
    # Version 1's unsigned member list is not applied at all any more.
    unsigned = GroupUpdate(str(uuid.uuid4()), now, gid, "Trip", ("alice", "bob", "carol"))
    for content in (hour, off, distribution):
        send_content(alice, "bob", content)
    alice.client.send_text(group.conversation_id, "moves alice's chain on").result(20)
    wait_for(lambda: "moves alice's chain on" in rows(bob, "Trip"), what="group text")
    marker("before the duplicates")

    chat_id = conversation_id(bob, "alice")

    def snapshot() -> tuple[object, ...]:
        return (
            on_core(bob, lambda: group_state(bob, chat_id, trip_id)),
            tuple(rows(bob, "alice", system=True)),
            tuple(rows(bob, "Trip", system=True)),
        )

    before = snapshot()
    assert before[0][0] == 0 and before[0][1] == ("alice", "bob")
    for content in (with_carol, unsigned, hour, distribution):
        send_content(alice, "bob", content)
    marker("after the duplicates")
    assert snapshot() == before


# ---- (c) one crafted message does not block the inbox ---------------------------
def test_a_crafted_message_is_quarantined_and_the_rest_of_its_batch_delivered(
    cast: Cast, mailbox: RecordingMailbox
) -> None:
    alice, bob, carol = cast["alice"], cast["bob"], cast["carol"]
    carol.client.start_direct("bob").result(20)
    # Bob writes first and alice never answers (she is offline, so not even a
    # receipt): bob's session still holds her signed prekey as her ratchet key.
    cast.offline(alice)
    bob.client.start_direct("alice").result(20)
    bob.client.send_text(conversation_id(bob, "alice"), "hi alice").result(20)
    # (The session's first message is Bob's device list, then his text.)
    wait_for(lambda: mailbox.pending("alice") == 2, what="bob's message queued")
    cast.offline(bob)
    fetched = fetch_bundle(carol, "alice")
    signed_prekey = RemoteBundle.from_fetched_device(fetched).signed_prekey.to_bytes()
    header = Header(signed_prekey, 0, 0).to_bytes()
    crafted = encode_frame(
        FRAME_PAIRWISE, Envelope(NORMAL_MESSAGE, None, header, bytes(64)).to_bytes()
    )

    carol_chat = conversation_id(carol, "bob")
    carol.client.send_text(carol_chat, "before it").result(20)
    # (Carol's device list first, as her session's first message.)
    wait_for(lambda: mailbox.pending("bob") == 2, what="carol's first message queued")
    mailbox.queue("bob", crafted, sender="alice")
    carol.client.send_text(carol_chat, "after it").result(20)
    wait_for(lambda: mailbox.pending("bob") == 4, what="carol's second message queued")

    cast.back(bob, one_batch_of=4)
    wait_for(lambda: rows(bob, "carol") == ["before it", "after it"], what="carol's texts")
    wait_for(lambda: mailbox.pending("bob") == 0, what="the whole batch acknowledged")
    assert rows(bob, "alice", system=True) == [UNDECRYPTABLE.format("alice")]
    assert bob.client.undecryptable == 1
    quarantined = on_core(bob, bob.client.messenger.store.quarantine.all)
    assert [(q.sender, q.body, q.reason) for q in quarantined] == [
        ("alice", crafted, "AuthenticationError")
    ]
    # Alice's real messages still work both ways.
    cast.back(alice)
    wait_for(lambda: rows(alice, "bob") == ["hi alice"], what="alice gets bob's message")
    both_ways(alice, bob, "the crafted message")


# ---- (d) mutated envelopes through the receive path -----------------------------
PROTOCOL_ERRORS = {
    "AuthenticationError",
    "ExpiredPrekey",
    "MalformedMessage",
    "NoSession",
    "BundleError",
}
MUTATIONS = 160


def _mutations(
    rng: random.Random, originals: list[bytes], count: int, carol_signed_prekey: bytes
) -> list[tuple[str, bytes]]:
    """(sender, body): mutated copies of alice's envelopes, as from her or others,
    and normal messages "from carol" under her signed prekey as the ratchet key,
    which bob's session with carol (no reply yet) still holds as hers."""
    out = []
    for number in range(count):
        sender = rng.choice(["alice"] * 6 + ["carol", "nobody"])
        body = bytearray(rng.choice(originals))
        at = rng.randrange(len(body))
        how = number % 9
        if how == 0:
            body[at] ^= 1 << rng.randrange(8)
        elif how == 1:
            del body[at:]
        elif how == 2:
            body += rng.randbytes(rng.randrange(1, 64))
        elif how == 3:
            body[at : at + 16] = rng.randbytes(16)
        elif how == 4:
            body[1] = rng.choice([0, 1, 2, 3, 255])  # frame kind
        elif how == 5:
            body[3] = rng.choice([0, 1, 2, 3])  # envelope type: normal <-> prekey
        elif how == 6:
            # A normal message's ratchet key (or a prekey message's identity) of the
            # attacker's choosing.
            body[4:36] = rng.randbytes(32)
        elif how == 7:
            sender = "carol"
            header = Header(carol_signed_prekey, rng.randrange(3), rng.randrange(3))
            envelope = Envelope(NORMAL_MESSAGE, None, header.to_bytes(), rng.randbytes(48))
            body = bytearray(encode_frame(FRAME_PAIRWISE, envelope.to_bytes()))
        # how == 8: an exact copy, i.e. a plain replay
        out.append((sender, bytes(body)))
    return out


def test_mutated_envelopes_never_escape_the_protocol_errors_nor_block_the_batch(
    cast: Cast, mailbox: RecordingMailbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    alice, bob, carol = cast["alice"], cast["bob"], cast["carol"]
    alice.client.start_direct("bob").result(20)
    group = alice.client.create_group("Trip", ["bob"]).result(20)
    alice.client.send_text(group.conversation_id, "group text").result(20)
    wait_for(lambda: "group text" in rows(bob, "Trip"), what="bob gets the group text")
    converse(alice, bob, 2)
    # Bob writes to carol, who is away: his session with her has had no reply.
    cast.offline(carol)
    bob.client.start_direct("carol").result(20)
    bob.client.send_text(conversation_id(bob, "carol"), "hi carol").result(20)
    wait_for(lambda: mailbox.pending("carol") == 2, what="bob's message to carol queued")
    settle(mailbox, alice, bob)
    originals = [e.body for e in mailbox.recorded(sender="alice", recipient="bob")]
    assert any(body[1] != FRAME_PAIRWISE for body in originals)  # group frames too
    carol_signed_prekey = RemoteBundle.from_fetched_device(
        fetch_bundle(alice, "carol")
    ).signed_prekey.to_bytes()
    # (Alice's session moves on with her valid message; carol sends none.)
    carol_session = state_of(bob, "carol")[0]

    cast.offline(bob)
    for sender, body in _mutations(random.Random(18), originals, MUTATIONS, carol_signed_prekey):
        mailbox.queue("bob", body, sender=sender)
    alice.client.send_text(conversation_id(alice, "bob"), "after the noise").result(20)
    wait_for(lambda: mailbox.pending("bob") == MUTATIONS + 1, what="everything queued")

    cast.back(bob, one_batch_of=MUTATIONS + 1)
    # (Searched for: the chat's newest rows are the quarantined ones.)
    wait_for(lambda: stored(bob, "after the noise") == 1, what="the valid message")
    wait_for(lambda: mailbox.pending("bob") == 0, what="every envelope acknowledged")
    assert bob.client.undecryptable + bob.client.replayed == MUTATIONS
    quarantined = on_core(bob, bob.client.messenger.store.quarantine.all)
    assert {q.reason for q in quarantined} <= PROTOCOL_ERRORS
    assert not [r for r in caplog.records if "unexpectedly" in r.getMessage()]
    assert state_of(bob, "carol")[0] == carol_session
    both_ways(alice, bob, "the noise")
    cast.back(carol)
    wait_for(lambda: rows(carol, "bob") == ["hi carol"], what="carol gets bob's message")
    both_ways(carol, bob, "the noise")


# ---- (e) group changes: signed, by admins, never replayed back --------------------
def _members(person: Person, title: str) -> tuple[str, ...]:
    trip = conversation_id(person, title)

    def read() -> tuple[str, ...]:
        group = person.client.messenger.store.groups.by_conversation(trip)
        assert group is not None
        return tuple(person.client.messenger.store.groups.members(group.group_id))

    return on_core(person, read)


def test_only_admins_change_members_a_forged_change_is_refused_and_anyone_may_leave(
    cast: Cast,
) -> None:
    alice, bob, carol = cast["alice"], cast["bob"], cast["carol"]
    group = alice.client.create_group("Trip", ["bob", "carol"]).result(20)
    for person in (bob, carol):
        wait_for(lambda person=person: rows(person, "Trip", system=True), what="joined")
    bob_trip = conversation_id(bob, "Trip")
    with pytest.raises(ServiceError, match="only the group's admins"):
        bob.client.remove_member(bob_trip, "carol").result(20)

    # Bob signs a change he may not make and sends it to Carol himself.
    def forge() -> GroupChangeContent:
        messenger = bob.client.messenger
        held = messenger.store.groups.by_conversation(bob_trip)
        assert held is not None
        change_bytes, _parent = messenger.store.groups.state(held.group_id)
        assert change_bytes is not None
        current = gs.GroupChange.from_bytes(change_bytes).state
        state = gs.GroupState(
            current.group_id,
            current.epoch + 1,
            current.title,
            tuple(sorted({*current.members, "dave"})),
            current.admins,
            current.digest(),
        )
        unsigned = gs.GroupChange(state, "bob", b"")
        signature = messenger.identity.signing_key.sign(unsigned.signed_bytes())
        return GroupChangeContent(gs.GroupChange(state, "bob", signature).to_bytes())

    send_content(bob, "carol", on_core(bob, forge))
    wait_for(
        lambda: any("was refused" in row for row in rows(carol, "Trip", system=True)),
        what="carol refuses bob's change",
    )
    assert _members(carol, "Trip") == ("alice", "bob", "carol")

    # Anyone may leave, by a change they sign.
    bob.client.remove_member(bob_trip, "bob").result(20)
    for person in (alice, carol):
        wait_for(
            lambda person=person: any("bob left" in r for r in rows(person, "Trip", system=True)),
            what=f"{person.name} sees bob leave",
        )
        assert _members(person, "Trip") == ("alice", "carol")
    alice.client.send_text(group.conversation_id, "after bob left").result(20)
    wait_for(lambda: "after bob left" in rows(carol, "Trip"), what="carol reads on")


def test_a_replayed_creation_does_not_put_a_removed_member_back(
    cast: Cast, mailbox: RecordingMailbox
) -> None:
    alice, bob, carol = cast["alice"], cast["bob"], cast["carol"]
    group = alice.client.create_group("Trip", ["bob", "carol"]).result(20)
    wait_for(lambda: rows(bob, "Trip", system=True), what="bob joined")
    creation = mailbox.recorded(sender="alice", recipient="bob")
    alice.client.remove_member(group.conversation_id, "carol").result(20)
    wait_for(
        lambda: any("removed carol" in r for r in rows(bob, "Trip", system=True)),
        what="bob sees carol removed",
    )
    for envelope in creation:
        mailbox.replay(envelope)
    redeliver(bob)
    wait_for(lambda: mailbox.pending("bob") == 0, what="the replays handled")
    assert _members(bob, "Trip") == ("alice", "bob")
    alice.client.send_text(group.conversation_id, "carol is gone").result(20)
    wait_for(lambda: "carol is gone" in rows(bob, "Trip"), what="bob reads on")
    assert "carol is gone" not in rows(carol, "Trip")


def test_an_admin_telling_members_different_lists_is_seen_and_everyone_keeps_one(
    cast: Cast,
) -> None:
    alice, bob, carol = cast["alice"], cast["bob"], cast["carol"]
    bob.client.start_direct("carol").result(20)  # members hand states on to each other
    bob.client.send_text(conversation_id(bob, "carol"), "hi carol").result(20)
    wait_for(lambda: "hi carol" in rows(carol, "bob"), what="bob and carol talk")
    group = alice.client.create_group("Trip", ["bob", "carol"]).result(20)
    for person in (bob, carol):
        wait_for(lambda person=person: rows(person, "Trip", system=True), what="joined")

    # Alice signs two different next states and sends each to one member only.
    def two_states() -> tuple[GroupChangeContent, GroupChangeContent]:
        messenger = alice.client.messenger
        held = messenger.store.groups.by_conversation(group.conversation_id)
        assert held is not None
        change_bytes, _parent = messenger.store.groups.state(held.group_id)
        assert change_bytes is not None
        current = gs.GroupChange.from_bytes(change_bytes).state
        key = messenger.identity.signing_key
        to_bob = gs.change(current, "alice", key, title="Trip (for bob)")
        to_carol = gs.change(current, "alice", key, title="Trip (for carol)")
        return GroupChangeContent(to_bob.to_bytes()), GroupChangeContent(to_carol.to_bytes())

    for_bob, for_carol = on_core(alice, two_states)
    send_content(alice, "bob", for_bob)
    send_content(alice, "carol", for_carol)
    kept = min(
        (gs.GroupChange.from_bytes(c.change).state for c in (for_bob, for_carol)),
        key=lambda state: state.digest(),
    )

    def title(person: Person) -> str:
        views = person.client.conversations().result(timeout=20)
        return next(v.title for v in views if v.title.startswith("Trip"))

    for person in (bob, carol):
        wait_for(lambda person=person: title(person) == kept.title, what=f"{person.name} converges")
        wait_for(
            lambda person=person: any(
                "differs from another one" in r for r in rows(person, kept.title, system=True)
            ),
            what=f"{person.name} says what it saw",
        )
