"""Backup Key Vault messages and the client's flows, sans-I/O.

Every request is sealed with HPKE (MLKEM768-X25519, HKDF-SHA256, AES-256-GCM) to
the fleet's pinned public key and carries a fresh 32-byte response key; the node
answers with AES-256-GCM under that key. The relay in between sees opaque bytes
in both directions — not even whether a password was right. Specification:
docs/vault-protocol.md. Flows are generators: they yield `VaultRequest`s and
receive `(http status, body)`; `app.net.vault_transport` runs them.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from app.crypto import (
    CryptoError,
    DecryptionError,
    HpkePublicKey,
    OpaqueLoginFailed,
    Rng,
    SystemRng,
    VerifyKey,
    aead_open,
    aead_seal,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
    hkdf_sha256,
    hpke_seal,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import MalformedMessage, ProtocolError

VERSION = 1
REQUEST_INFO = b"Cipherline vault v1 request "
RESPONSE_AD = b"Cipherline vault v1 response "
FLEET_CONTEXT = b"Cipherline vault fleet v1"
KEY_TRANSFER_INFO = b"Cipherline vault key transfer v1"
DEFAULT_ATTEMPT_LIMIT = 10
RECORD_ID_LENGTH = 16
BACKUP_KEY_LENGTH = 32

OPS = ("register_start", "register_finish", "login_start", "login_finish")

OK = 0
NOT_FOUND = 1
WRONG_PASSWORD = 2
LOCKED_OUT = 3
CONFLICT = 4
RETRY = 5

ACTION_RETRIEVE = 1
ACTION_DELETE = 2
ACTION_REPLACE = 3


class VaultError(ProtocolError):
    """Base of the vault client's errors."""


class WrongPassword(VaultError):
    def __init__(self, attempts_left: int) -> None:
        noun = "attempt" if attempts_left == 1 else "attempts"
        super().__init__(f"that password is not correct; {attempts_left} {noun} left")
        self.attempts_left = attempts_left


class LockedOut(VaultError):
    def __init__(self) -> None:
        super().__init__(
            "too many wrong passwords: the vault has erased this key for good, so this "
            "backup can no longer be opened with a password"
        )


class RecordNotFound(VaultError):
    def __init__(self) -> None:
        super().__init__("the vault holds no key for this backup (it was deleted or never made)")


class RecordExists(VaultError):
    pass


class VaultUnavailable(VaultError):
    pass


class VaultKeyMismatch(VaultError):
    """The vault answered with keys other than the ones this app pins."""


class VaultProtocolError(VaultError):
    pass


@dataclass(frozen=True)
class VaultRequest:
    op: str
    body: bytes


Reply = tuple[int, bytes]
Flow = Generator[VaultRequest, Reply, "object"]


@dataclass(frozen=True)
class FleetNode:
    name: str
    signing_key: bytes
    signature: bytes


@dataclass(frozen=True)
class Fleet:
    hpke_public_key: bytes
    nodes: tuple[FleetNode, ...]

    def to_bytes(self) -> bytes:
        writer = Writer().u8(VERSION).bytes16(self.hpke_public_key).u8(len(self.nodes))
        for node in self.nodes:
            writer.text16(node.name).raw(node.signing_key).raw(node.signature)
        return writer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> Fleet:
        reader = Reader(data, "fleet bundle")
        reader.version(VERSION)
        hpke_public = reader.bytes16()
        nodes = tuple(
            FleetNode(reader.text16(), reader.raw(32), reader.raw(64)) for _ in range(reader.u8())
        )
        reader.end()
        return Fleet(hpke_public, nodes)

    @staticmethod
    def signed_message(hpke_public: bytes, name: str) -> bytes:
        return FLEET_CONTEXT + len(hpke_public).to_bytes(2, "big") + hpke_public + name.encode()


@dataclass(frozen=True)
class PinnedNode:
    name: str
    hpke_public_key: bytes
    signing_key: bytes


def verify_fleet(data: bytes, pinned: list[PinnedNode]) -> HpkePublicKey:
    """The fleet key to seal to, after checking the bundle against the pinned keys."""
    if not pinned:
        raise VaultKeyMismatch("this app pins no vault keys; backups with a password are off")
    try:
        fleet = Fleet.from_bytes(data)
    except ProtocolError:
        raise VaultKeyMismatch("the vault's key bundle is malformed") from None
    pinned_hpke = {node.hpke_public_key for node in pinned}
    if fleet.hpke_public_key not in pinned_hpke:
        raise VaultKeyMismatch("the vault presented a key this app does not trust")
    pinned_signers = {node.signing_key for node in pinned}
    trusted = 0
    for node in fleet.nodes:
        if node.signing_key not in pinned_signers:
            continue
        try:
            VerifyKey(node.signing_key).verify(
                node.signature, Fleet.signed_message(fleet.hpke_public_key, node.name)
            )
        except CryptoError:
            raise VaultKeyMismatch("a vault node's signature does not verify") from None
        trusted += 1
    if not trusted:
        raise VaultKeyMismatch("no vault node in the bundle is one this app trusts")
    try:
        return HpkePublicKey(fleet.hpke_public_key)
    except CryptoError:
        raise VaultKeyMismatch("the vault's public key is invalid") from None


# ---- request and response framing ----------------------------------------------


def seal_request(
    fleet_key: HpkePublicKey, op: str, record_id: bytes, fields: bytes, rng: Rng
) -> tuple[bytes, bytes]:
    """Returns (body to send, response key to keep)."""
    response_key = rng.random_bytes(32)
    inner = Writer().u8(VERSION).raw(response_key).bytes16(record_id).raw(fields).getvalue()
    return hpke_seal(fleet_key, inner, REQUEST_INFO + op.encode()), response_key


@dataclass(frozen=True)
class InnerRequest:
    response_key: bytes
    record_id: bytes
    fields: Reader


def parse_inner_request(plaintext: bytes) -> InnerRequest:
    reader = Reader(plaintext, "vault request")
    reader.version(VERSION)
    response_key = reader.raw(32)
    record_id = reader.bytes16()
    if len(record_id) != RECORD_ID_LENGTH:
        raise MalformedMessage("a vault record id is 16 bytes")
    return InnerRequest(response_key, record_id, reader)


def seal_response(  # noqa: PLR0917
    response_key: bytes, op: str, status: int, attempts_left: int, payload: bytes, nonce: bytes
) -> bytes:
    inner = Writer().u8(VERSION).u8(status).u16(attempts_left).bytes32(payload).getvalue()
    return nonce + aead_seal(response_key, nonce, inner, RESPONSE_AD + op.encode())


def open_response(response_key: bytes, op: str, reply: Reply) -> tuple[int, int, bytes]:
    http_status, body = reply
    if http_status == 503 or http_status >= 500:
        raise VaultUnavailable("no backup vault node is reachable right now; try again later")
    if http_status == 429:
        raise VaultUnavailable("the vault is busy; wait a moment and try again")
    if http_status != 200:
        raise VaultProtocolError(f"the vault refused the request (HTTP {http_status})")
    if len(body) < 12 + 16:
        raise VaultProtocolError("the vault's answer is truncated")
    try:
        inner = aead_open(response_key, body[:12], body[12:], RESPONSE_AD + op.encode())
    except DecryptionError:
        raise VaultProtocolError("the vault's answer failed authentication") from None
    reader = Reader(inner, "vault response")
    reader.version(VERSION)
    status, attempts_left, payload = reader.u8(), reader.u16(), reader.bytes32(1 << 16)
    reader.end()
    return status, attempts_left, payload


def key_transfer_key(session_key: bytes) -> bytes:
    return hkdf_sha256(session_key, salt=None, info=KEY_TRANSFER_INFO, length=32)


def _raise_for(status: int, attempts_left: int) -> None:
    if status == OK:
        return
    if status == WRONG_PASSWORD:
        raise WrongPassword(attempts_left)
    if status == LOCKED_OUT:
        raise LockedOut
    if status == NOT_FOUND:
        raise RecordNotFound
    if status == CONFLICT:
        raise RecordExists("the vault already holds a key under this id")
    if status == RETRY:
        raise VaultUnavailable("the vault lost track of this login; try again")
    raise VaultProtocolError(f"unknown vault status {status}")


# ---- flows ----------------------------------------------------------------------


def _call(
    fleet_key: HpkePublicKey, op: str, record_id: bytes, fields: bytes, rng: Rng
) -> Generator[VaultRequest, Reply, tuple[int, int, bytes]]:
    body, response_key = seal_request(fleet_key, op, record_id, fields, rng)
    reply = yield VaultRequest(op, body)
    return open_response(response_key, op, reply)


def register(
    password: str,
    backup_key: bytes,
    fleet_key: HpkePublicKey,
    *,
    record_id: bytes | None = None,
    attempt_limit: int = DEFAULT_ATTEMPT_LIMIT,
    replace_ticket: bytes = b"",
    rng: Rng | None = None,
) -> Generator[VaultRequest, Reply, bytes]:
    """Registers `password` for a new record holding `backup_key`; returns the record id."""
    rng = rng or SystemRng()
    if len(backup_key) != BACKUP_KEY_LENGTH:
        raise ValueError("a backup key is 32 bytes")
    record_id = record_id or rng.random_bytes(RECORD_ID_LENGTH)
    secret = password.encode("utf-8")
    started = client_registration_start(secret)
    fields = Writer().bytes16(started.message).bytes16(replace_ticket).getvalue()
    status, left, payload = yield from _call(fleet_key, "register_start", record_id, fields, rng)
    _raise_for(status, left)
    try:
        upload, _export_key = client_registration_finish(secret, started.state, payload)
    except CryptoError:
        raise VaultProtocolError("the vault's registration answer is invalid") from None
    fields = (
        Writer()
        .bytes16(upload)
        .bytes8(backup_key)
        .u16(attempt_limit)
        .bytes16(replace_ticket)
        .getvalue()
    )
    status, left, _payload = yield from _call(fleet_key, "register_finish", record_id, fields, rng)
    _raise_for(status, left)
    return record_id


def _login(
    record_id: bytes, password: str, fleet_key: HpkePublicKey, action: int, rng: Rng
) -> Generator[VaultRequest, Reply, tuple[bytes, bytes]]:
    """Returns (session key, action payload)."""
    secret = password.encode("utf-8")
    started = client_login_start(secret)
    fields = Writer().bytes16(started.message).getvalue()
    status, left, payload = yield from _call(fleet_key, "login_start", record_id, fields, rng)
    _raise_for(status, left)
    reader = Reader(payload, "login answer")
    attempts_used, limit = reader.u16(), reader.u16()
    ticket, credential_response = reader.bytes16(), reader.bytes16()
    reader.end()
    try:
        finalization, session_key = client_login_finish(secret, started.state, credential_response)
    except OpaqueLoginFailed:
        # The vault counted this attempt before answering (login_start).
        raise WrongPassword(max(limit - attempts_used, 0)) from None
    except CryptoError:
        raise VaultProtocolError("the vault's login answer is invalid") from None
    fields = Writer().bytes16(ticket).bytes16(finalization).u8(action).getvalue()
    status, left, payload = yield from _call(fleet_key, "login_finish", record_id, fields, rng)
    _raise_for(status, left)
    return session_key, payload


def _unwrap_key(session_key: bytes, wrapped: bytes) -> bytes:
    try:
        key = aead_open(key_transfer_key(session_key), wrapped[:12], wrapped[12:], b"backup key")
    except DecryptionError:
        raise VaultProtocolError("the vault's key transfer failed authentication") from None
    if len(key) != BACKUP_KEY_LENGTH:
        raise VaultProtocolError("the vault returned a key of the wrong length")
    return key


def retrieve(
    record_id: bytes, password: str, fleet_key: HpkePublicKey, *, rng: Rng | None = None
) -> Generator[VaultRequest, Reply, bytes]:
    session_key, payload = yield from _login(
        record_id, password, fleet_key, ACTION_RETRIEVE, rng or SystemRng()
    )
    return _unwrap_key(session_key, payload)


def delete(
    record_id: bytes, password: str, fleet_key: HpkePublicKey, *, rng: Rng | None = None
) -> Generator[VaultRequest, Reply, None]:
    yield from _login(record_id, password, fleet_key, ACTION_DELETE, rng or SystemRng())


def change_password(
    record_id: bytes,
    old_password: str,
    new_password: str,
    fleet_key: HpkePublicKey,
    *,
    rng: Rng | None = None,
) -> Generator[VaultRequest, Reply, bytes]:
    """Re-registers the same record (same id, same key) under a new password."""
    rng = rng or SystemRng()
    session_key, payload = yield from _login(
        record_id, old_password, fleet_key, ACTION_REPLACE, rng
    )
    reader = Reader(payload, "replace answer")
    wrapped, ticket = reader.bytes16(), reader.bytes16()
    reader.end()
    backup_key = _unwrap_key(session_key, wrapped)
    yield from register(
        new_password, backup_key, fleet_key, record_id=record_id, replace_ticket=ticket, rng=rng
    )
    return backup_key
