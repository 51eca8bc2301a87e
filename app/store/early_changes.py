"""Deletes and edits that arrived before the message they name (schema.py,
migration 11; docs/protocol.md §5, "Delete for everyone and edits").

Envelopes can overtake each other (a delete sent pairwise while the text waited in
a full mailbox, or one fetched before the other), so a change whose message is not
here yet is kept, with the chat it came through, and applied when the message
arrives. Only the newest `EARLY_CHANGES_KEPT`, none older than the relay keeps an
envelope: the message cannot arrive after that. Every method runs inside the
caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

EARLY_CHANGES_KEPT = 1000
EARLY_CHANGE_MAX_AGE_MS = 30 * 86_400_000


class _Executor(Protocol):
    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any: ...


@dataclass(frozen=True)
class EarlyChange:
    kind: str  # "delete" or "edit"
    sent_at: int
    body: str = field(repr=False)


class EarlyChangeRepository:
    def __init__(self, store: _Executor) -> None:
        self._store = store

    def add(
        self,
        message_uuid: str,
        sender: str,
        group_id: bytes | None,
        *,
        kind: str,
        sent_at: int,
        body: str,
        now: int,
    ) -> None:
        self._store.execute(
            "INSERT INTO early_changes (message_uuid, sender, group_id, kind, sent_at, body,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (message_uuid, sender, group_id, kind, sent_at, body, now),
        )
        self._store.execute(
            "DELETE FROM early_changes WHERE received_at < ?"
            " OR id <= (SELECT MAX(id) FROM early_changes) - ?",
            (now - EARLY_CHANGE_MAX_AGE_MS, EARLY_CHANGES_KEPT),
        )

    def take(self, message_uuid: str, sender: str, group_id: bytes | None) -> list[EarlyChange]:
        """The changes waiting for this message from its author, through the same
        chat (`group_id` None: the direct chat with `sender`), oldest first; they
        are forgotten here. Changes for it from anyone else or another chat stay
        unapplied and age out."""
        rows = self._store.execute(
            "SELECT id, kind, sent_at, body FROM early_changes WHERE message_uuid = ?"
            " AND sender = ? AND group_id IS ? ORDER BY sent_at, id",
            (message_uuid, sender, group_id),
        ).fetchall()
        for row in rows:
            self._store.execute("DELETE FROM early_changes WHERE id = ?", (row[0],))
        return [EarlyChange(str(r[1]), int(r[2]), str(r[3])) for r in rows]
