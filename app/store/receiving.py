"""What receiving remembers, so that a relay can neither replay nor jam the inbox.

- `SessionStartRepository`: the replay memory for session starts. One row per
  accepted prekey message that used no one-time prekey (a start that did cannot be
  replayed: its one-time key is gone). A row is kept while the signed prekey and the
  last-resort KEM prekey it used are still ours, because until then the start could
  be accepted again; `prune` drops the rows of keys we no longer hold (called
  when a session start is remembered and when prekey rotation deletes a retired
  signed and last-resort prekey).
- `HandledContentRepository`: digests of group updates, sender keys and timer
  changes already applied, so none is applied twice. The newest
  `HANDLED_CONTENTS_KEPT` are kept; the ratchet and the session-start memory are
  what refuse a replay at any distance, this catches a duplicate that got past them.
- `QuarantineRepository`: envelopes that could not be opened, exactly as delivered
  (ciphertext and sender, never plaintext), the newest `QUARANTINE_KEPT`.

Tables: migration 3 in `schema.py`. Every method runs inside the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlcipher3.dbapi2 as sqlcipher

from app.store.errors import StoreError

HANDLED_CONTENTS_KEPT = 5000
QUARANTINE_KEPT = 100


class _Executor(Protocol):
    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any: ...


@dataclass(frozen=True)
class QuarantinedEnvelope:
    id: int
    sender: str
    sender_device: int
    body: bytes = field(repr=False)  # ciphertext, as the relay delivered it
    reason: str
    server_time: int
    received_at: int
    conversation_id: int | None


class SessionStartRepository:
    """A `Container[bytes]` of used session-start digests, for `Session.respond`."""

    def __init__(self, store: _Executor) -> None:
        self._store = store

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, bytes):
            return False
        row = self._store.execute(
            "SELECT 1 FROM used_session_starts WHERE digest = ?", (digest,)
        ).fetchone()
        return row is not None

    def remember(
        self, digest: bytes, signed_prekey_id: int, kem_prekey_id: int, *, now: int
    ) -> None:
        self._store.execute(
            "INSERT OR IGNORE INTO used_session_starts"
            " (digest, signed_prekey_id, kem_prekey_id, used_at) VALUES (?, ?, ?, ?)",
            (digest, signed_prekey_id, kem_prekey_id, now),
        )

    def prune(
        self, signed_prekey_ids: int | Collection[int], kem_prekey_ids: int | Collection[int]
    ) -> int:
        """Forgets the starts that used a signed or last-resort KEM prekey other than
        the ones held (an id, or the ids of the current and retired generations):
        those keys are gone, so such a start is refused without the memory."""
        signed = [signed_prekey_ids] if isinstance(signed_prekey_ids, int) else signed_prekey_ids
        kem = [kem_prekey_ids] if isinstance(kem_prekey_ids, int) else kem_prekey_ids
        signed_marks = ", ".join("?" * len(signed))
        kem_marks = ", ".join("?" * len(kem))
        cursor = self._store.execute(
            "DELETE FROM used_session_starts"  # noqa: S608 (placeholders only)
            f" WHERE signed_prekey_id NOT IN ({signed_marks})"
            f" OR kem_prekey_id NOT IN ({kem_marks})",
            (*signed, *kem),
        )
        return max(int(cursor.rowcount), 0)

    def count(self) -> int:
        return int(self._store.execute("SELECT COUNT(*) FROM used_session_starts").fetchone()[0])


class HandledContentRepository:
    def __init__(self, store: _Executor) -> None:
        self._store = store

    def seen(self, digest: bytes) -> bool:
        row = self._store.execute(
            "SELECT 1 FROM handled_contents WHERE digest = ?", (digest,)
        ).fetchone()
        return row is not None

    def remember(self, digest: bytes, *, now: int, keep: int = HANDLED_CONTENTS_KEPT) -> None:
        self._store.execute(
            "INSERT OR IGNORE INTO handled_contents (digest, handled_at) VALUES (?, ?)",
            (digest, now),
        )
        self._store.execute(
            "DELETE FROM handled_contents WHERE id <= (SELECT MAX(id) FROM handled_contents) - ?",
            (keep,),
        )


class QuarantineRepository:
    def __init__(self, store: _Executor) -> None:
        self._store = store

    def add(
        self,
        sender: str,
        sender_device: int,
        body: bytes,
        reason: str,
        server_time: int,
        *,
        now: int,
        conversation_id: int | None,
        keep: int = QUARANTINE_KEPT,
    ) -> int:
        cursor = self._store.execute(
            "INSERT INTO quarantine (sender, sender_device, body, reason, server_time,"
            " received_at, conversation_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sender, sender_device, body, reason, server_time, now, conversation_id),
        )
        self._store.execute(
            "DELETE FROM quarantine WHERE id <= (SELECT MAX(id) FROM quarantine) - ?", (keep,)
        )
        return int(cursor.lastrowid)

    def all(self) -> list[QuarantinedEnvelope]:
        rows: Iterable[tuple[Any, ...]] = self._store.execute(
            "SELECT id, sender, sender_device, body, reason, server_time, received_at,"
            " conversation_id FROM quarantine ORDER BY id"
        ).fetchall()
        return [
            QuarantinedEnvelope(
                int(r[0]),
                str(r[1]),
                int(r[2]),
                bytes(r[3]),
                str(r[4]),
                int(r[5]),
                int(r[6]),
                None if r[7] is None else int(r[7]),
            )
            for r in rows
        ]


def is_device_failure(error: BaseException) -> bool:
    """True when the store failed because of the device (database locked, disk full,
    I/O error, profile closed) rather than because of the data it was given. Such a
    failure must not be blamed on an incoming envelope: the caller keeps it unacked."""
    return isinstance(error, StoreError | sqlcipher.OperationalError | OSError | MemoryError)
