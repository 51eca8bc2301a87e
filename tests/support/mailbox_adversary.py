"""Adversaries as fixtures: a relay operator that keeps every envelope and replays it.

`RecordingMailbox` is the mailbox half of what `adversary.RecordingRelay` is for the
vault. It works on a real relay process from the inside, as its operator could: a
trigger in the relay's own SQLite database copies every envelope as it is queued,
so none is lost when the recipient acknowledges it, and `queue` puts any bytes
(a recorded envelope, a mutated one, one built by hand) into any mailbox, as from
any sender, at any time. The relay then delivers it like any other envelope, over
the same push connection, and deletes it when the client acknowledges it.

A queued envelope is pushed when the recipient's push loop next looks at its
mailbox: when someone sends it a real message, when it (re)connects, or within the
relay's idle interval.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.components import RelayProcess

_RECORDER = """
CREATE TABLE IF NOT EXISTS adversary_recorded (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    account_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    sender TEXT,  -- NULL for sealed envelopes: the relay does not know who sent them
    sender_device INTEGER,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS adversary_record AFTER INSERT ON envelopes BEGIN
    INSERT INTO adversary_recorded
        (seq, account_id, device_id, client_id, sender, sender_device, body, created_at)
    VALUES (new.seq, new.account_id, new.device_id, new.client_id, new.sender,
            new.sender_device, new.body, new.created_at);
END;
"""


@dataclass(frozen=True)
class RecordedEnvelope:
    id: int
    seq: int
    recipient: str
    device_id: int
    sender: str
    sender_device: int
    body: bytes = field(repr=False)
    client_id: str

    @property
    def queued_by_adversary(self) -> bool:
        return self.client_id.startswith("adversary-")


class RecordingMailbox:
    def __init__(self, relay: RelayProcess) -> None:
        self.path = relay.data_dir / "relay.sqlite3"
        with self._connect() as db:
            db.executescript(_RECORDER)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        try:
            yield db
        finally:
            db.close()

    def _account_id(self, db: sqlite3.Connection, username: str) -> int:
        row = db.execute("SELECT id FROM accounts WHERE username = ?", (username,)).fetchone()
        if row is None:
            raise LookupError(f"the relay has no account {username!r}")
        return int(row[0])

    # ---- what it saw ----------------------------------------------------------
    def mark(self) -> int:
        """A bookmark: `recorded(since=mark)` lists what was queued after it."""
        with self._connect() as db:
            row = db.execute("SELECT COALESCE(MAX(id), 0) FROM adversary_recorded").fetchone()
            return int(row[0])

    def recorded(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        since: int = 0,
        include_own: bool = False,
    ) -> list[RecordedEnvelope]:
        """Every envelope queued, oldest first (those the adversary queued itself only
        with `include_own`)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT r.id, r.seq, a.username, r.device_id, r.sender, r.sender_device,"
                " r.body, r.client_id FROM adversary_recorded r"
                " JOIN accounts a ON a.id = r.account_id WHERE r.id > ? ORDER BY r.id",
                (since,),
            ).fetchall()
        found = [
            RecordedEnvelope(
                int(r[0]), int(r[1]), str(r[2]), int(r[3]), str(r[4]), int(r[5]), bytes(r[6]), r[7]
            )
            for r in rows
        ]
        return [
            e
            for e in found
            if (sender is None or e.sender == sender)
            and (recipient is None or e.recipient == recipient)
            and (include_own or not e.queued_by_adversary)
        ]

    def pending(self, recipient: str) -> int:
        """Envelopes in `recipient`'s mailbox not yet acknowledged."""
        with self._connect() as db:
            account = self._account_id(db, recipient)
            return int(
                db.execute(
                    "SELECT COUNT(*) FROM envelopes WHERE account_id = ?", (account,)
                ).fetchone()[0]
            )

    # ---- what it does -----------------------------------------------------------
    def queue(
        self,
        recipient: str,
        body: bytes,
        *,
        sender: str,
        sender_device: int = 1,
        device_id: int = 1,
    ) -> int:
        """Puts `body` into a mailbox as from `sender`; returns its seq."""
        with self._connect() as db:
            account = self._account_id(db, recipient)
            cursor = db.execute(
                "INSERT INTO envelopes (account_id, device_id, client_id, sender,"
                " sender_device, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    account,
                    device_id,
                    f"adversary-{uuid.uuid4().hex}",
                    sender,
                    sender_device,
                    body,
                    int(time.time() * 1000),
                ),
            )
            return int(cursor.lastrowid or 0)

    def withhold(self, envelope: RecordedEnvelope) -> None:
        """Takes a queued envelope out of its mailbox before it is fetched (a relay
        holding it back; `replay` delivers it later)."""
        with self._connect() as db:
            db.execute("DELETE FROM envelopes WHERE seq = ?", (envelope.seq,))

    def replay(self, envelope: RecordedEnvelope, *, to: str | None = None) -> int:
        """Delivers a recorded envelope again (to its recipient, or to `to`)."""
        return self.queue(
            to or envelope.recipient,
            envelope.body,
            sender=envelope.sender,
            sender_device=envelope.sender_device,
            device_id=envelope.device_id,
        )
