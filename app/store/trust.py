"""How far a contact's identity key is trusted, and what waits for that trust.

States (columns `verified`, `identity_changed`, `identity_unaccepted` of `contacts`):

- `UNVERIFIED`: the key first seen (trust on first use). Sending allowed.
- `VERIFIED`: the user compared safety numbers and marked the contact verified.
- `CHANGED`: a contact that was never verified (or whose verification the user
  cleared) presented another key. A warning in the direct chat; sending allowed.
- `UNACCEPTED`: a contact that was verified presented another key. Nothing is
  encrypted to the contact until the user accepts the new safety number
  (docs/protocol.md §8, "Identity changes"): the services refuse the user's
  messages and keep automatic sends in `held_sends`.

Every transition is in `TRANSITIONS`; an event a state does not list leaves it as
it is. Accepting with "mark as verified" is `ACCEPT` then `VERIFY`.

Tables: migration 4 in `schema.py`. Every method runs inside the caller's
transaction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol


class IdentityTrust(enum.StrEnum):
    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    CHANGED = "changed"
    UNACCEPTED = "unaccepted"

    @staticmethod
    def of(verified: bool, changed: bool, unaccepted: bool) -> IdentityTrust:
        if unaccepted:
            return IdentityTrust.UNACCEPTED
        if verified:
            return IdentityTrust.VERIFIED
        return IdentityTrust.CHANGED if changed else IdentityTrust.UNVERIFIED

    @property
    def columns(self) -> tuple[int, int, int]:
        """(verified, identity_changed, identity_unaccepted) as stored."""
        return _COLUMNS[self]


class TrustEvent(enum.StrEnum):
    KEY_CHANGED = "key changed"  # the contact presented an identity key unlike the stored one
    VERIFY = "verify"  # "Mark as verified"
    UNVERIFY = "unverify"  # "Clear verification"
    DISMISS = "dismiss"  # the warning banner's "Dismiss"
    ACCEPT = "accept"  # "Accept new safety number"


_COLUMNS = {
    IdentityTrust.UNVERIFIED: (0, 0, 0),
    IdentityTrust.VERIFIED: (1, 0, 0),
    IdentityTrust.CHANGED: (0, 1, 0),
    IdentityTrust.UNACCEPTED: (0, 1, 1),
}

TRANSITIONS: dict[IdentityTrust, dict[TrustEvent, IdentityTrust]] = {
    IdentityTrust.UNVERIFIED: {
        TrustEvent.KEY_CHANGED: IdentityTrust.CHANGED,
        TrustEvent.VERIFY: IdentityTrust.VERIFIED,
    },
    IdentityTrust.VERIFIED: {
        TrustEvent.KEY_CHANGED: IdentityTrust.UNACCEPTED,
        TrustEvent.UNVERIFY: IdentityTrust.UNVERIFIED,
    },
    IdentityTrust.CHANGED: {
        TrustEvent.VERIFY: IdentityTrust.VERIFIED,
        TrustEvent.DISMISS: IdentityTrust.UNVERIFIED,
        TrustEvent.ACCEPT: IdentityTrust.UNVERIFIED,
    },
    # Only accepting (or verifying, which accepts the key it verifies) ends the
    # block: dismissing the banner or clearing a verification that is already gone
    # must not, and another change keeps it blocked.
    IdentityTrust.UNACCEPTED: {
        TrustEvent.VERIFY: IdentityTrust.VERIFIED,
        TrustEvent.ACCEPT: IdentityTrust.UNVERIFIED,
    },
}


def next_trust(state: IdentityTrust, event: TrustEvent) -> IdentityTrust:
    return TRANSITIONS[state].get(event, state)


class _Executor(Protocol):
    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any: ...


@dataclass(frozen=True)
class HeldSend:
    id: int
    recipient: str
    body: bytes = field(repr=False)  # plaintext content, never yet encrypted
    held_at: int


class HeldSendRepository:
    """Automatic sends (receipts, sender keys, group updates, timer changes) to a
    contact in `UNACCEPTED`, oldest first, until the new identity is accepted."""

    def __init__(self, store: _Executor) -> None:
        self._store = store

    def add(self, recipient: str, body: bytes, *, now: int) -> None:
        self._store.execute(
            "INSERT INTO held_sends (recipient, body, held_at) VALUES (?, ?, ?)",
            (recipient, body, now),
        )

    def for_recipient(self, recipient: str) -> list[HeldSend]:
        rows = self._store.execute(
            "SELECT id, recipient, body, held_at FROM held_sends WHERE recipient = ? ORDER BY id",
            (recipient,),
        ).fetchall()
        return [HeldSend(int(r[0]), str(r[1]), bytes(r[2]), int(r[3])) for r in rows]

    def count(self, recipient: str) -> int:
        row = self._store.execute(
            "SELECT COUNT(*) FROM held_sends WHERE recipient = ?", (recipient,)
        ).fetchone()
        return int(row[0])

    def remove(self, ids: list[int]) -> None:
        for held_id in ids:
            self._store.execute("DELETE FROM held_sends WHERE id = ?", (held_id,))
