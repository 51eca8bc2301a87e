"""Prekey rotation through real clients and a real relay (docs/protocol.md §1,
"Prekey lifetimes"), with Alice's clock in the test's hand.

- Alice rotates; the relay serves the new signed prekey once the upload succeeds
  (a failed upload is retried by the next check), and Bob starts a session
  against it.
- A first message Bob made against the old signed prekey, held back by the relay
  until after the rotation, still opens within the grace period.
- After the grace period the old private keys are gone from Alice's store files,
  their replay memory is pruned, and a recorded old first message replayed by the
  relay's operator (`RecordingMailbox`) is quarantined and changes nothing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from app.net import RelayUnavailable
from app.protocol.content import decode_frame
from app.protocol.identity import (
    DAY_MS,
    GRACE_PERIOD_MS,
    ROTATION_PERIOD_MS,
    LocalPrekeys,
    RemoteBundle,
)
from app.protocol.session import SessionStart
from app.services.account import protector_for
from app.services.client import Client
from app.services.messenger import Messenger, now_ms
from app.store import Store
from app.store.database import DB_FILE_NAME
from tests.services.helpers import Person, drain_one_time_keys, on_core, wait_for
from tests.support.components import RelayProcess
from tests.support.mailbox_adversary import RecordedEnvelope, RecordingMailbox

T = TypeVar("T")
UNDECRYPTABLE = "A message from {} could not be decrypted"
# Alice's receiving chains after this many round trips no longer include the first
# one (ratchet.MAX_OLD_CHAINS = 20): only the prekeys can tell about its first message.
TURNS = 22


class Clock:
    """Alice's clock: real time when the test starts, then moved by hand."""

    def __init__(self) -> None:
        self.now = now_ms()

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class Cast:
    """Alice (on the test's clock), Bob and Carol on one relay."""

    def __init__(self, root: Path, relay: RelayProcess) -> None:
        self.people = {name: Person(root, name, relay) for name in ("alice", "bob", "carol")}
        self.online = set(self.people)
        self.clock = Clock()
        alice = self["alice"]
        alice.client.check_prekeys().result(20)  # the start's own check is done
        alice.client.messenger.clock = self.clock

    def __getitem__(self, name: str) -> Person:
        return self.people[name]

    def offline(self, person: Person) -> None:
        person.stop()
        self.online.discard(person.name)

    def back(self, person: Person) -> None:
        """Reopens the profile (Alice's on the test's clock) and starts the client."""
        path = person.profile.path
        store = Store.open(path, protector_for(path, f"{person.name} passphrase"))
        clock = self.clock if person.name == "alice" else now_ms
        client = Client(
            Messenger(store, path, clock=clock), person.profile.relay(timeout=3), tick_seconds=0.2
        )
        client.set_listener(person.events.append)
        person.client = client
        self.online.add(person.name)
        client.start()

    def stop(self) -> None:
        for name in self.online:
            self.people[name].stop()


@pytest.fixture
def cast(tmp_path: Path, relay: RelayProcess, mailbox: RecordingMailbox) -> Iterator[Cast]:
    people = Cast(tmp_path, relay)
    yield people
    people.stop()


# ---- helpers ------------------------------------------------------------------
def prekeys_of(person: Person) -> LocalPrekeys:
    return on_core(person, person.client.messenger.prekeys)


def check(person: Person) -> bool:
    """One prekey check, as the client's timer runs it."""
    return person.client.check_prekeys().result(timeout=20)


def served_signed_prekey(thief: Person, of: str) -> int:
    """The id of the signed prekey the relay hands out for `of` now."""
    relay = thief.profile.relay(token=thief.client.messenger.relay_token)
    try:
        device = relay.fetch_keys(of)["devices"][0]
    finally:
        relay.close()
    return RemoteBundle.from_fetched_device(device).signed_prekey_id


def conversation_id(person: Person, title: str) -> int:
    views = person.client.conversations().result(timeout=20)
    return next(v.conversation_id for v in views if v.title == title)


def rows(person: Person, title: str, *, system: bool = False) -> list[str]:
    views = person.client.conversations().result(timeout=20)
    match = [v for v in views if v.title == title]
    if not match:
        return []
    _view, messages = person.client.open_conversation(match[0].conversation_id).result(20)
    return [m.body for m in messages if m.system == system]


def send(sender: Person, receiver: Person, text: str) -> None:
    sender.client.send_text(conversation_id(sender, receiver.name), text).result(20)
    wait_for(lambda: text in rows(receiver, sender.name), what=text)


def both_ways(a: Person, b: Person, tag: str) -> None:
    send(a, b, f"{a.name} after {tag}")
    send(b, a, f"{b.name} after {tag}")


def first_message_without_one_time_keys(cast: Cast, text: str) -> None:
    """Alice is away while Carol drains her one-time keys; Bob starts a session and
    writes `text`, which waits in Alice's mailbox. The start uses only Alice's
    signed prekey and last-resort KEM prekey."""
    alice, bob = cast["alice"], cast["bob"]
    cast.offline(alice)
    drain_one_time_keys(cast["carol"], "alice")
    bob.client.start_direct("alice").result(20)
    bob.client.send_text(conversation_id(bob, "alice"), text).result(20)


def start_of(envelope: RecordedEnvelope) -> SessionStart:
    _kind, payload = decode_frame(envelope.body)
    start = SessionStart.of_envelope(payload)
    assert start is not None and start.one_time_prekey_id is None
    return start


def withhold(mailbox: RecordingMailbox, recipient: str) -> None:
    """The operator takes what waits for `recipient` out of the mailbox (its recorder
    keeps the copies, to deliver them when it likes)."""
    with contextlib.closing(sqlite3.connect(str(mailbox.path), timeout=30)) as db, db:
        db.execute(
            "DELETE FROM envelopes WHERE account_id = (SELECT id FROM accounts WHERE username = ?)",
            (recipient,),
        )


def redeliver(person: Person) -> None:
    """Makes the push connection reconnect: the relay then pushes the whole mailbox."""
    assert person.client.push is not None
    person.client.push.drop_connection()


def in_store_files(person: Person, secret: bytes) -> bool:
    """Whether `secret` is anywhere in the profile's database files, free pages and
    write-ahead log included: every page decrypted as SQLCipher 4 wrote it (AES-256-
    CBC under the raw key, IV in the page's reserved tail; the first page starts
    after its 16-byte salt)."""
    store = person.client.messenger.store
    page_size = int(on_core(person, lambda: store.execute("PRAGMA page_size").fetchone()[0]))
    key, reserve = store._db_key, 80  # 16 IV + 64 HMAC-SHA512
    database = person.profile.path / DB_FILE_NAME
    pages: list[tuple[bytes, int]] = []
    data = database.read_bytes()
    pages += [
        (data[at : at + page_size], 16 if at == 0 else 0) for at in range(0, len(data), page_size)
    ]
    wal = database.with_name(DB_FILE_NAME + "-wal")
    log = wal.read_bytes() if wal.exists() else b""
    at = 32
    while at + 24 + page_size <= len(log):
        frame = log[at + 24 : at + 24 + page_size]
        pages.append((frame, 16 if int.from_bytes(log[at : at + 4], "big") == 1 else 0))
        at += 24 + page_size
    for page, start in pages:
        if len(page) != page_size:
            continue
        iv = page[page_size - reserve : page_size - reserve + 16]
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        if secret in decryptor.update(page[start : page_size - reserve]) + decryptor.finalize():
            return True
    return False


# ---- rotation and a session against the new key -----------------------------------
def test_bob_starts_a_session_against_alices_rotated_prekey_after_a_retried_upload(
    cast: Cast, mailbox: RecordingMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, carol = cast["alice"], cast["bob"], cast["carol"]
    old = prekeys_of(alice).signed_prekey_id
    assert served_signed_prekey(carol, "alice") == old
    assert check(alice) and prekeys_of(alice).signed_prekey_id == old  # not due yet

    cast.clock.advance(ROTATION_PERIOD_MS)

    def unreachable(_body: object) -> object:
        raise RelayUnavailable("the relay is down")

    monkeypatch.setattr(alice.client.relay, "upload_keys", unreachable)
    assert not check(alice)
    # The new key is stored first; the relay still serves the old one, which stays
    # however long the relay is away (its grace period has not started).
    new = prekeys_of(alice).signed_prekey_id
    assert new > old and not prekeys_of(alice).current_published
    assert served_signed_prekey(carol, "alice") == old
    cast.clock.advance(GRACE_PERIOD_MS + ROTATION_PERIOD_MS)
    assert not check(alice)
    assert prekeys_of(alice).held_signed_prekey_ids() == {old, new}

    monkeypatch.undo()
    assert check(alice)
    assert served_signed_prekey(carol, "alice") == new
    prekeys = prekeys_of(alice)
    assert prekeys.signed_prekey_id == new and prekeys.current_published
    assert prekeys.held_signed_prekey_ids() == {old, new}  # kept for late first messages
    assert check(alice) and prekeys_of(alice).to_bytes() == prekeys.to_bytes()  # idempotent

    first_message_without_one_time_keys(cast, "against the new key")
    # (The session's first message is Bob's device list, then his text.)
    wait_for(lambda: mailbox.pending("alice") == 2, what="bob's message queued")
    assert start_of(mailbox.recorded(recipient="alice")[0]).signed_prekey_id == new
    cast.back(alice)
    wait_for(lambda: rows(alice, "bob") == ["against the new key"], what="alice gets it")
    both_ways(alice, bob, "the rotation")
    assert alice.client.undecryptable == 0


# ---- a late first message within the grace period ----------------------------------
def test_a_first_message_made_against_the_old_prekey_opens_late_within_the_grace_period(
    cast: Cast, mailbox: RecordingMailbox
) -> None:
    alice, bob, carol = cast["alice"], cast["bob"], cast["carol"]
    old = prekeys_of(alice).signed_prekey_id
    first_message_without_one_time_keys(cast, "written before the rotation")
    # (The session's first message is Bob's device list, then his text.)
    wait_for(lambda: mailbox.pending("alice") == 2, what="bob's message queued")
    first = mailbox.recorded(sender="bob", recipient="alice")[0]
    assert start_of(first).signed_prekey_id == old
    withhold(mailbox, "alice")  # delayed by the relay

    cast.clock.advance(ROTATION_PERIOD_MS)
    cast.back(alice)  # the check at start rotates
    assert check(alice)
    new = prekeys_of(alice).signed_prekey_id
    assert new > old and served_signed_prekey(carol, "alice") == new

    cast.clock.advance(GRACE_PERIOD_MS - DAY_MS)
    assert check(alice)
    assert old in prekeys_of(alice).held_signed_prekey_ids()
    for late in mailbox.recorded(sender="bob", recipient="alice")[:2]:  # list, then text
        mailbox.replay(late)
    redeliver(alice)
    wait_for(lambda: rows(alice, "bob") == ["written before the rotation"], what="the late one")
    assert alice.client.undecryptable == 0
    both_ways(alice, bob, "the late first message")


# ---- after the grace period --------------------------------------------------------
def test_an_old_first_message_replayed_after_the_grace_period_is_quarantined_and_changes_nothing(
    cast: Cast, mailbox: RecordingMailbox
) -> None:
    alice, bob = cast["alice"], cast["bob"]
    first_message_without_one_time_keys(cast, "the first message")
    cast.back(alice)
    wait_for(lambda: rows(alice, "bob") == ["the first message"], what="alice gets it")
    first = mailbox.recorded(sender="bob", recipient="alice")[0]
    start = start_of(first)
    store = alice.client.messenger.store
    assert on_core(alice, lambda: start.digest in store.session_starts)  # replay memory
    for turn in range(TURNS):
        send(alice, bob, f"alice turn {turn}")
        send(bob, alice, f"bob turn {turn}")
    old = prekeys_of(alice).generations[0]
    old_private = (old.signed_prekey.to_bytes(), old.last_resort_kem.to_bytes())
    assert all(in_store_files(alice, secret) for secret in old_private)

    cast.clock.advance(ROTATION_PERIOD_MS)
    assert check(alice)
    cast.clock.advance(GRACE_PERIOD_MS - 1)
    assert check(alice)
    assert start.signed_prekey_id in prekeys_of(alice).held_signed_prekey_ids()
    assert on_core(alice, lambda: start.digest in store.session_starts)
    cast.clock.advance(1)
    assert check(alice)
    # Deleted: the private keys are gone from the store's files, not just
    # unreferenced, and the replay memory of the starts that used them is pruned.
    prekeys = prekeys_of(alice)
    assert start.signed_prekey_id not in prekeys.held_signed_prekey_ids()
    assert start.kem_prekey_id not in prekeys.held_last_resort_ids()
    assert not any(in_store_files(alice, secret) for secret in old_private)
    assert in_store_files(alice, prekeys.signed_prekey.to_bytes())  # the scan sees keys
    assert on_core(alice, lambda: start.digest not in store.session_starts)

    def state() -> tuple[bytes | None, bytes, int]:
        account = store.account.get()
        assert account is not None
        texts = store.execute("SELECT COUNT(*) FROM messages WHERE kind != 'system'")
        return store.sessions.get("bob", 1), account.prekeys, int(texts.fetchone()[0])

    before = on_core(alice, state)
    mailbox.replay(first)
    redeliver(alice)
    wait_for(lambda: alice.client.undecryptable == 1, what="the replay is quarantined")
    wait_for(lambda: mailbox.pending("alice") == 0, what="the replay acknowledged")
    assert on_core(alice, state) == before
    quarantined = on_core(alice, store.quarantine.all)
    assert [(q.sender, q.body, q.reason) for q in quarantined] == [
        ("bob", first.body, "ExpiredPrekey")
    ]
    assert rows(alice, "bob", system=True) == [UNDECRYPTABLE.format("bob")]
    both_ways(alice, bob, "the replay")
