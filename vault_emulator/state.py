"""A vault record's state and how it is sealed into storage (pure code).

Everything the attempt limit depends on — the counter, the limit, the login
tickets still open, the login requests already counted, the one replace ticket —
sits inside one AES-256-GCM seal under the fleet's record key, whose associated
data binds the record id and the storage's own `created` and `version` for that
key. So a value cannot be edited (the counter is authenticated), moved to another
id, put back over a newer one (the version moves on), or put back after the key
was deleted and re-created (`created` moves on). A value that fails any of this
is `Tampered`, and the node answers "locked out" without evaluating anything.

The one value written at version 1 is a `PENDING` placeholder, made before the
storage knows `created`; it holds no password file and no key, so bringing it
back gains nothing. Specification: docs/vault-protocol.md, "Stored records".
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from app.crypto import DecryptionError, aead_open, aead_seal
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import ProtocolError
from vault_emulator.records import Versioned

# Version 3 adds a split record's share and reset verifier; every other record is
# still written as version 2, byte for byte (tests/vectors/vault_v2.json).
STATE_VERSION = 3
RECORD_AD = b"Cipherline vault record v2"

PENDING = 0
ACTIVE = 1
ERASED = 2

REASON_NONE = 0
REASON_LOCKED_OUT = 1
REASON_DELETED = 2
REASON_TAMPERED = 3

# Counted login requests are remembered (to refuse them when replayed) for the
# request window; at most this many, newest kept.
MAX_SEEN = 128


class Tampered(Exception):
    """A stored value that does not verify where it is found."""


@dataclass(frozen=True)
class RecordState:
    status: int
    # Fresh for every registration, part of the OPAQUE credential identifier, so a
    # new record never reuses an old one's OPRF key. Empty for records migrated
    # from version 1, whose identifier was the record id alone.
    generation: bytes = b""
    password_file: bytes = b""
    stored_key: bytes = b""
    key_format: int = 0
    limit: int = 0
    attempts: int = 0
    open_tickets: tuple[bytes, ...] = ()
    seen: tuple[tuple[bytes, int], ...] = ()
    replace_ticket: bytes = b""
    reason: int = REASON_NONE
    expires: int = 0
    # A split record (key format 3): this domain's OPRF key share, and SHA-256 of
    # the reset key that proves a right password here.
    share: bytes = b""
    verifier: bytes = b""

    def __repr__(self) -> str:
        return f"RecordState(status={self.status}, attempts={self.attempts}/{self.limit})"

    @property
    def attempts_left(self) -> int:
        return max(self.limit - self.attempts, 0)

    def erased(self, reason: int) -> RecordState:
        """A tombstone: the id stays taken for good and nothing secret is kept."""
        return RecordState(ERASED, reason=reason)

    def without_ticket(self, ticket_id: bytes) -> RecordState:
        return replace(self, open_tickets=tuple(t for t in self.open_tickets if t != ticket_id))

    def to_bytes(self) -> bytes:
        split = bool(self.share or self.verifier)
        writer = (
            Writer()
            .u8(STATE_VERSION if split else 2)
            .u8(self.status)
            .bytes8(self.generation)
            .bytes16(self.password_file)
            .bytes8(self.stored_key)
            .u8(self.key_format)
            .u16(self.limit)
            .u16(self.attempts)
            .u8(len(self.open_tickets))
        )
        for ticket in self.open_tickets:
            writer.raw(ticket)
        writer.u8(len(self.seen))
        for digest, when in self.seen:
            writer.raw(digest).u64(when)
        writer.bytes8(self.replace_ticket).u8(self.reason).u64(self.expires)
        if split:
            writer.bytes8(self.share).bytes8(self.verifier)
        return writer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> RecordState:
        reader = Reader(data, "record state")
        version = reader.u8()
        if version not in {2, STATE_VERSION}:
            raise ProtocolError(f"unknown record state version {version}")
        status, generation = reader.u8(), reader.bytes8()
        password_file, stored_key = reader.bytes16(), reader.bytes8()
        key_format, limit, attempts = reader.u8(), reader.u16(), reader.u16()
        tickets = tuple(reader.raw(16) for _ in range(reader.u8()))
        seen = tuple((reader.raw(16), reader.u64()) for _ in range(reader.u8()))
        state = RecordState(
            status,
            generation,
            password_file,
            stored_key,
            key_format,
            limit,
            attempts,
            tickets,
            seen,
            reader.bytes8(),
            reader.u8(),
            reader.u64(),
        )
        if version == STATE_VERSION:
            state = replace(state, share=reader.bytes8(), verifier=reader.bytes8())
        reader.end()
        return state


def _ad(record_id: bytes, created: int, version: int) -> bytes:
    return RECORD_AD + record_id + created.to_bytes(8, "big") + version.to_bytes(8, "big")


def seal_state(
    key: bytes, record_id: bytes, state: RecordState, at: Versioned | None, nonce: bytes
) -> bytes:
    """The value to swap in over `at` (None: create). A created key has version 1
    and an unknown `created`, so only a PENDING placeholder may be written there."""
    if at is None:
        if state.status != PENDING:
            raise ValueError("only a pending placeholder is written when a key is created")
        ad = _ad(record_id, 0, 1)
    else:
        ad = _ad(record_id, at.created, at.version + 1)
    return nonce + aead_seal(key, nonce, state.to_bytes(), ad)


def open_state(key: bytes, record_id: bytes, stored: Versioned) -> RecordState:
    """Raises Tampered unless the value was sealed for this id, key and version."""
    created = 0 if stored.version == 1 else stored.created
    try:
        plain = aead_open(
            key, stored.value[:12], stored.value[12:], _ad(record_id, created, stored.version)
        )
        state = RecordState.from_bytes(plain)
    except (DecryptionError, ProtocolError):
        raise Tampered from None
    if (stored.version == 1) != (state.status == PENDING):
        raise Tampered
    return state


# ---- the rollback witness ---------------------------------------------------------
#
# A node whose backend has a monotonic counter (a TPM) keeps the counter's value in
# storage beside the records, sealed like them, and moves both on every write: the
# stored value first (in the same compare-and-swap as the record), then the
# counter. Storage that was put back to an earlier copy then holds a value below
# the counter, which no copy can catch up with.

WITNESS_AD = b"Cipherline vault witness v1"


def _witness_ad(node: str, at: Versioned | None) -> bytes:
    # Bound like a record to where it is written, so that pasting a newer witness
    # value over an older copy's entry does not verify (the version moves on).
    created, version = (0, 1) if at is None else (at.created, at.version + 1)
    return WITNESS_AD + created.to_bytes(8, "big") + version.to_bytes(8, "big") + node.encode()


def seal_witness(key: bytes, node: str, value: int, at: Versioned | None, nonce: bytes) -> bytes:
    """The witness entry to write over `at` (None: the first, at provisioning)."""
    return nonce + aead_seal(key, nonce, value.to_bytes(8, "big"), _witness_ad(node, at))


def open_witness(key: bytes, node: str, stored: Versioned) -> int:
    at = None if stored.version == 1 else replace(stored, version=stored.version - 1)
    try:
        plain = aead_open(key, stored.value[:12], stored.value[12:], _witness_ad(node, at))
    except DecryptionError:
        raise Tampered from None
    if len(plain) != 8:
        raise Tampered
    return int.from_bytes(plain, "big")
