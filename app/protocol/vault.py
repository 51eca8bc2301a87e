"""Backup Key Vault messages and the client's flows, sans-I/O (protocol version 2).

Every request is sealed with HPKE (MLKEM768-X25519, HKDF-SHA256, AES-256-GCM) to
the fleet's pinned public key and carries a fresh 32-byte response key; the node
answers with AES-256-GCM under that key, padded so that every answer has one size.
The relay in between sees opaque bytes in both directions, of one size whatever
the outcome, and a login always runs both steps (a dummy finish after a wrong
password), so it cannot tell a right password from a wrong one.

The backup key never reaches the vault in a usable form: the client wraps it
under a key derived from OPAQUE's export key, which only the password yields.
Specification: docs/vault-protocol.md. Flows are generators: they yield
`VaultRequest`s and receive `(http status, body)`; `app.net.vault_transport` runs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

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

VERSION = 2
FLEET_VERSION = 1
REQUEST_INFO = b"Cipherline vault v2 request "
RESPONSE_AD = b"Cipherline vault v2 response "
FLEET_CONTEXT = b"Cipherline vault fleet v1"
KEY_TRANSFER_INFO = b"Cipherline vault key transfer v2"
KEY_WRAP_INFO = b"Cipherline vault key wrap v2"
KEY_WRAP_AD = b"Cipherline vault wrapped key v2"
DEFAULT_ATTEMPT_LIMIT = 10
RECORD_ID_LENGTH = 16
BACKUP_KEY_LENGTH = 32
WRAPPED_KEY_LENGTH = 12 + BACKUP_KEY_LENGTH + 16
FINALIZATION_LENGTH = 64  # OPAQUE-3DH KE3 with SHA-512: one MAC
REGISTRATION_UPLOAD_LENGTH = 192  # RFC 9807 RegistrationRecord with ristretto255/SHA-512
# Sealed tickets (docs/vault-protocol.md, "Tickets"): nonce, kind, expiry, ticket id,
# content, tag. A replace ticket has no content; a replacing registration's ticket
# carries the replace ticket's id and the 16-byte generation.
REPLACE_TICKET_LENGTH = 12 + 1 + 8 + 1 + 16 + 2 + 16
REPLACING_REGISTRATION_TICKET_LENGTH = 12 + 1 + 8 + 1 + 16 + 2 + 16 + 16
# Every answer's sealed plaintext is padded to this many bytes, whatever the op
# and outcome, so its size tells the relay nothing.
RESPONSE_PLAINTEXT_LENGTH = 1024
# A login_start carries the client's clock; the vault refuses one further than
# this from its own, and remembers those it counted for as long.
REQUEST_WINDOW_SECONDS = 300

OPS = ("register_start", "register_finish", "login_start", "login_finish")

OK = 0
NOT_FOUND = 1
WRONG_PASSWORD = 2
LOCKED_OUT = 3
CONFLICT = 4
RETRY = 5
ERASED = 6
STALE = 7

ACTION_RETRIEVE = 1
ACTION_DELETE = 2
ACTION_REPLACE = 3

# How the record holds the backup key: wrapped by the client (version 2), or as
# version 1 deposited it, in the clear inside the vault's own encryption.
KEY_WRAPPED = 2
KEY_PLAIN_V1 = 1


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


class RecordErased(VaultError):
    """The record id was erased for good (locked out or deleted); it cannot be reused."""

    def __init__(self) -> None:
        super().__init__("the vault erased this key for good; its id cannot be used again")


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
Clock = Callable[[], float]
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
        writer = Writer().u8(FLEET_VERSION).bytes16(self.hpke_public_key).u8(len(self.nodes))
        for node in self.nodes:
            writer.text16(node.name).raw(node.signing_key).raw(node.signature)
        return writer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> Fleet:
        reader = Reader(data, "fleet bundle")
        reader.version(FLEET_VERSION)
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
    response_key: bytes = field(repr=False)
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
    response_key: bytes,
    op: str,
    status: int,
    attempts_left: int,
    payload: bytes,
    nonce: bytes,
    *,
    length: int = RESPONSE_PLAINTEXT_LENGTH,
) -> bytes:
    """`length`: the padded plaintext size every answer of this family of ops has
    (the split vault's, which carry sealed re-share terms, are larger)."""
    inner = Writer().u8(VERSION).u8(status).u16(attempts_left).bytes16(payload).getvalue()
    if len(inner) > length:
        raise ValueError("a vault answer does not fit its fixed size")
    inner += bytes(length - len(inner))
    return nonce + aead_seal(response_key, nonce, inner, RESPONSE_AD + op.encode())


def open_response(
    response_key: bytes, op: str, reply: Reply, *, length: int = RESPONSE_PLAINTEXT_LENGTH
) -> tuple[int, int, bytes]:
    http_status, body = reply
    if http_status == 503 or http_status >= 500:
        raise VaultUnavailable("no backup vault node is reachable right now; try again later")
    if http_status == 429:
        raise VaultUnavailable("the vault is busy; wait a moment and try again")
    if http_status != 200:
        raise VaultProtocolError(f"the vault refused the request (HTTP {http_status})")
    if len(body) != 12 + length + 16:
        raise VaultProtocolError("the vault's answer has the wrong size")
    try:
        inner = aead_open(response_key, body[:12], body[12:], RESPONSE_AD + op.encode())
    except DecryptionError:
        raise VaultProtocolError("the vault's answer failed authentication") from None
    reader = Reader(inner, "vault response")
    reader.version(VERSION)
    status, attempts_left, payload = reader.u8(), reader.u16(), reader.bytes16()
    if any(reader.rest()):
        raise VaultProtocolError("the vault's answer is not padded with zeros")
    return status, attempts_left, payload


def key_transfer_key(session_key: bytes) -> bytes:
    return hkdf_sha256(session_key, salt=None, info=KEY_TRANSFER_INFO, length=32)


def seal_key_transfer(
    session_key: bytes, record_id: bytes, stored_key: bytes, nonce: bytes
) -> bytes:
    """What a node sends back after a login: the stored key, readable by that login only."""
    return nonce + aead_seal(
        key_transfer_key(session_key), nonce, stored_key, KEY_TRANSFER_INFO + record_id
    )


def open_key_transfer(session_key: bytes, record_id: bytes, transfer: bytes) -> bytes:
    try:
        return aead_open(
            key_transfer_key(session_key),
            transfer[:12],
            transfer[12:],
            KEY_TRANSFER_INFO + record_id,
        )
    except DecryptionError:
        raise VaultProtocolError("the vault's key transfer failed authentication") from None


def wrap_backup_key(export_key: bytes, record_id: bytes, backup_key: bytes, nonce: bytes) -> bytes:
    """The backup key as the vault stores it: sealed under a key only the password yields."""
    if len(backup_key) != BACKUP_KEY_LENGTH:
        raise ValueError("a backup key is 32 bytes")
    wrapping = hkdf_sha256(export_key, salt=None, info=KEY_WRAP_INFO, length=32)
    return nonce + aead_seal(wrapping, nonce, backup_key, KEY_WRAP_AD + record_id)


def unwrap_backup_key(export_key: bytes, record_id: bytes, wrapped: bytes) -> bytes:
    wrapping = hkdf_sha256(export_key, salt=None, info=KEY_WRAP_INFO, length=32)
    try:
        key = aead_open(wrapping, wrapped[:12], wrapped[12:], KEY_WRAP_AD + record_id)
    except DecryptionError:
        raise VaultProtocolError("the vault returned a key this password did not wrap") from None
    if len(key) != BACKUP_KEY_LENGTH:
        raise VaultProtocolError("the vault returned a key of the wrong length")
    return key


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
    if status == ERASED:
        raise RecordErased
    if status == RETRY:
        raise VaultUnavailable("the vault lost track of this login; try again")
    if status == STALE:
        raise VaultUnavailable(
            "the vault had already counted this exact request (sent twice by the network);"
            " try again"
        )
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
    """Registers `password` for a record holding `backup_key` (wrapped under the
    password's export key); returns the record id."""
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
        reader = Reader(payload, "registration answer")
        registration_ticket, response = reader.bytes16(), reader.bytes16()
        reader.end()
        upload, export_key = client_registration_finish(secret, started.state, response)
    except (CryptoError, ProtocolError):
        raise VaultProtocolError("the vault's registration answer is invalid") from None
    wrapped = wrap_backup_key(export_key, record_id, backup_key, rng.random_bytes(12))
    fields = (
        Writer()
        .bytes16(registration_ticket)
        .bytes16(upload)
        .bytes16(wrapped)
        .u16(attempt_limit)
        .bytes16(replace_ticket)
        .getvalue()
    )
    status, left, _payload = yield from _call(fleet_key, "register_finish", record_id, fields, rng)
    _raise_for(status, left)
    return record_id


@dataclass(frozen=True)
class _Login:
    session_key: bytes
    export_key: bytes
    payload: bytes
    action: int
    key_format: int
    limit: int

    def __repr__(self) -> str:
        return "_Login(<secret>)"


def _login(  # noqa: PLR0917
    record_id: bytes,
    password: str,
    fleet_key: HpkePublicKey,
    action: int,
    rng: Rng,
    clock: Clock,
) -> Generator[VaultRequest, Reply, _Login]:
    secret = password.encode("utf-8")
    started = client_login_start(secret)
    offset = 0.0
    for _try in range(2):
        fields = Writer().u64(max(int(clock() + offset), 0)).bytes16(started.message).getvalue()
        status, left, payload = yield from _call(fleet_key, "login_start", record_id, fields, rng)
        if status != STALE or len(payload) != 8:
            break
        # Our clock is off: the vault told us its time; try once more by it.
        offset = int.from_bytes(payload, "big") - clock()
    if status == STALE and payload:
        raise VaultUnavailable("this computer's clock is far off; set it right and try again")
    _raise_for(status, left)
    try:
        reader = Reader(payload, "login answer")
        attempts_used, limit, key_format = reader.u16(), reader.u16(), reader.u8()
        ticket, credential_response = reader.bytes16(), reader.bytes16()
        reader.end()
    except ProtocolError:
        raise VaultProtocolError("the vault's login answer is malformed") from None
    if key_format == KEY_PLAIN_V1 and action == ACTION_RETRIEVE:
        # A version 1 record: take the key and re-deposit it wrapped (retrieve upgrades).
        action = ACTION_REPLACE
    try:
        finished = client_login_finish(secret, started.state, credential_response)
    except OpaqueLoginFailed:
        finished = None
    except CryptoError:
        raise VaultProtocolError("the vault's login answer is invalid") from None
    # After a wrong password the client finishes anyway, with a finalization of the
    # same size: the relay sees the same two requests and answers whatever the outcome.
    finalization = finished.finalization if finished else rng.random_bytes(FINALIZATION_LENGTH)
    fields = Writer().bytes16(ticket).bytes16(finalization).u8(action).getvalue()
    status, left, payload = yield from _call(fleet_key, "login_finish", record_id, fields, rng)
    if finished is None:
        if action == ACTION_REPLACE:
            # A right password would be followed by a registration: so is a wrong one.
            yield from _decoy_registration(record_id, fleet_key, limit, rng)
        if status == LOCKED_OUT:
            raise LockedOut
        # The vault counted this attempt at login_start, before answering.
        raise WrongPassword(left if status == WRONG_PASSWORD else max(limit - attempts_used, 0))
    _raise_for(status, left)
    return _Login(finished.session_key, finished.export_key, payload, action, key_format, limit)


def _decoy_registration(
    record_id: bytes, fleet_key: HpkePublicKey, limit: int, rng: Rng
) -> Generator[VaultRequest, Reply, None]:
    """The two registration requests a replacement sends, of the same sizes, with
    tickets no node issued: refused without a trace (CONFLICT, RETRY), so the
    relay sees a password change whatever the old password was."""
    request = client_registration_start(rng.random_bytes(32)).message
    fields = Writer().bytes16(request).bytes16(rng.random_bytes(REPLACE_TICKET_LENGTH)).getvalue()
    yield from _call(fleet_key, "register_start", record_id, fields, rng)
    fields = (
        Writer()
        .bytes16(rng.random_bytes(REPLACING_REGISTRATION_TICKET_LENGTH))
        .bytes16(rng.random_bytes(REGISTRATION_UPLOAD_LENGTH))
        .bytes16(rng.random_bytes(WRAPPED_KEY_LENGTH))
        .u16(limit)
        .bytes16(rng.random_bytes(REPLACE_TICKET_LENGTH))
        .getvalue()
    )
    yield from _call(fleet_key, "register_finish", record_id, fields, rng)


def _stored_key(login: _Login, record_id: bytes, transfer: bytes) -> bytes:
    stored = open_key_transfer(login.session_key, record_id, transfer)
    if login.key_format == KEY_PLAIN_V1:
        if len(stored) != BACKUP_KEY_LENGTH:
            raise VaultProtocolError("the vault returned a key of the wrong length")
        return stored
    return unwrap_backup_key(login.export_key, record_id, stored)


def _replace_answer(payload: bytes) -> tuple[bytes, bytes]:
    try:
        reader = Reader(payload, "replace answer")
        transfer, ticket = reader.bytes16(), reader.bytes16()
        reader.end()
    except ProtocolError:
        raise VaultProtocolError("the vault's answer is malformed") from None
    return transfer, ticket


def _redeposit(
    login: _Login, record_id: bytes, password: str, fleet_key: HpkePublicKey, rng: Rng
) -> Generator[VaultRequest, Reply, bytes]:
    """After a replacing login: registers the same key, id and limit under `password`."""
    transfer, ticket = _replace_answer(login.payload)
    backup_key = _stored_key(login, record_id, transfer)
    yield from register(
        password,
        backup_key,
        fleet_key,
        record_id=record_id,
        attempt_limit=login.limit,
        replace_ticket=ticket,
        rng=rng,
    )
    return backup_key


def retrieve(
    record_id: bytes,
    password: str,
    fleet_key: HpkePublicKey,
    *,
    rng: Rng | None = None,
    clock: Clock = time.time,
) -> Generator[VaultRequest, Reply, bytes]:
    """The backup key. A record still in version 1's format is upgraded on the way
    (re-registered under the same password, its key now wrapped by the client)."""
    rng = rng or SystemRng()
    login = yield from _login(record_id, password, fleet_key, ACTION_RETRIEVE, rng, clock)
    if login.action != ACTION_REPLACE:
        return _stored_key(login, record_id, login.payload)
    return (yield from _redeposit(login, record_id, password, fleet_key, rng))


def delete(
    record_id: bytes,
    password: str,
    fleet_key: HpkePublicKey,
    *,
    rng: Rng | None = None,
    clock: Clock = time.time,
) -> Generator[VaultRequest, Reply, None]:
    """Erases the record for good (its id can never be registered again)."""
    yield from _login(record_id, password, fleet_key, ACTION_DELETE, rng or SystemRng(), clock)


def change_password(
    record_id: bytes,
    old_password: str,
    new_password: str,
    fleet_key: HpkePublicKey,
    *,
    rng: Rng | None = None,
    clock: Clock = time.time,
) -> Generator[VaultRequest, Reply, bytes]:
    """Re-registers the same record (same id, same key) under a new password."""
    rng = rng or SystemRng()
    login = yield from _login(record_id, old_password, fleet_key, ACTION_REPLACE, rng, clock)
    return (yield from _redeposit(login, record_id, new_password, fleet_key, rng))
