"""A vault node's logic, independent of HTTP: `VaultNode.handle(op, body)`.

The attempt counter is incremented and durably stored *before* the OPAQUE login
step runs (login_start). A successful login_finish resets it. Once `limit`
attempts have been counted without a success, the next attempt erases the record
for good. A login's server state travels to the client inside a ticket sealed
under the fleet key, so any node of the fleet can finish a login another began.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.crypto import (
    CryptoError,
    DecryptionError,
    HpkePrivateKey,
    OpaqueLoginFailed,
    OpaqueServerSetup,
    aead_open,
    aead_seal,
    hkdf_sha256,
    hpke_open,
    random_bytes,
    server_login_finish,
    server_login_start,
    server_registration_finish,
    server_registration_start,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import ProtocolError
from app.protocol.vault import (
    ACTION_DELETE,
    ACTION_REPLACE,
    ACTION_RETRIEVE,
    CONFLICT,
    DEFAULT_ATTEMPT_LIMIT,
    LOCKED_OUT,
    NOT_FOUND,
    OK,
    OPS,
    REQUEST_INFO,
    RETRY,
    WRONG_PASSWORD,
    Fleet,
    FleetNode,
    key_transfer_key,
    parse_inner_request,
    seal_response,
)
from vault_emulator.backends import Backend
from vault_emulator.etcd import StorageUnavailable
from vault_emulator.records import LockedOutNow, RecordStore

log = logging.getLogger("vault")
TICKET_SECONDS = 120
MAX_BODY = 64 * 1024


class BadRequest(Exception):
    """Malformed input: answered 4xx, and no counter was touched."""


@dataclass(frozen=True)
class FleetSecrets:
    data_key: bytes
    hpke_private: HpkePrivateKey
    opaque_setup: OpaqueServerSetup

    def to_bytes(self) -> bytes:
        return (
            Writer()
            .u8(1)
            .raw(self.data_key)
            .bytes16(self.hpke_private.to_bytes())
            .bytes16(self.opaque_setup.to_bytes())
            .getvalue()
        )

    @staticmethod
    def from_bytes(data: bytes) -> FleetSecrets:
        reader = Reader(data, "fleet secrets")
        reader.version(1)
        secrets = FleetSecrets(
            reader.raw(32),
            HpkePrivateKey(reader.bytes16()),
            OpaqueServerSetup.from_bytes(reader.bytes16()),
        )
        reader.end()
        return secrets

    @staticmethod
    def generate() -> FleetSecrets:
        return FleetSecrets(
            random_bytes(32), HpkePrivateKey.generate(), OpaqueServerSetup.generate()
        )

    def __repr__(self) -> str:
        return "FleetSecrets(<secret>)"


class AuditLog:
    """JSON lines: time, node, a hash of the record id, the operation and outcome."""

    def __init__(self, path: Path, node: str) -> None:
        self._path = path
        self._node = node
        self._lock = threading.Lock()

    def write(self, record_id: bytes, op: str, outcome: str) -> None:
        line = json.dumps(
            {
                "time": round(time.time(), 3),
                "node": self._node,
                "record": hashlib.sha256(record_id).hexdigest()[:16],
                "op": op,
                "outcome": outcome,
            }
        )
        with self._lock, self._path.open("a") as handle:
            handle.write(line + "\n")


class VaultNode:
    def __init__(
        self,
        name: str,
        backend: Backend,
        secrets: FleetSecrets,
        records: RecordStore,
        audit: AuditLog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.backend = backend
        self.secrets = secrets
        self.records = records
        self.audit = audit
        self.clock = clock
        self._record_key = hkdf_sha256(
            secrets.data_key, salt=None, info=b"vault records", length=32
        )
        self._ticket_key = hkdf_sha256(
            secrets.data_key, salt=None, info=b"vault tickets", length=32
        )
        public = secrets.hpke_private.public_key().to_bytes()
        signature = backend.sign(Fleet.signed_message(public, name))
        self.entry = FleetNode(name, backend.signing_public_key(), signature)
        records.publish_node(
            name, Writer().text16(name).raw(self.entry.signing_key).raw(signature).getvalue()
        )

    # ---- fleet ---------------------------------------------------------------------
    def fleet_bundle(self) -> bytes:
        nodes = []
        for entry in self.records.nodes().values():
            reader = Reader(entry, "fleet entry")
            nodes.append(FleetNode(reader.text16(), reader.raw(32), reader.raw(64)))
        if not any(node.name == self.name for node in nodes):
            nodes.append(self.entry)
        nodes.sort(key=lambda node: node.name)
        return Fleet(self.secrets.hpke_private.public_key().to_bytes(), tuple(nodes)).to_bytes()

    # ---- sealing of records and tickets --------------------------------------------
    def _seal(self, key: bytes, data: bytes, ad: bytes) -> bytes:
        nonce = random_bytes(12)
        return nonce + aead_seal(key, nonce, data, ad)

    def _open(self, key: bytes, blob: bytes, ad: bytes) -> bytes:
        return aead_open(key, blob[:12], blob[12:], ad)

    def _ticket(self, kind: int, record_id: bytes, content: bytes) -> bytes:
        expiry = int(self.clock()) + TICKET_SECONDS
        plain = Writer().u8(kind).u64(expiry).bytes16(content).getvalue()
        return self._seal(self._ticket_key, plain, b"ticket" + record_id)

    def _open_ticket(self, kind: int, record_id: bytes, ticket: bytes) -> bytes | None:
        try:
            plain = self._open(self._ticket_key, ticket, b"ticket" + record_id)
        except DecryptionError:
            return None
        reader = Reader(plain, "ticket")
        found_kind, expiry, content = reader.u8(), reader.u64(), reader.bytes16()
        if found_kind != kind or expiry < self.clock():
            return None
        return content

    # ---- requests ------------------------------------------------------------------
    def handle(self, op: str, body: bytes) -> tuple[int, bytes]:
        """HTTP status and body. 200 carries an encrypted answer; 4xx a plain error."""
        if op not in OPS:
            return 404, _error("unknown vault operation")
        if len(body) > MAX_BODY:
            return 413, _error("vault requests are limited to 64 KiB")
        try:
            inner = parse_inner_request(
                hpke_open(self.secrets.hpke_private, body, REQUEST_INFO + op.encode())
            )
        except (DecryptionError, ProtocolError):
            return 400, _error("the request is not sealed to this vault, or is malformed")
        try:
            status, left, payload = getattr(self, "_" + op)(inner.record_id, inner.fields)
        except (BadRequest, ProtocolError, CryptoError) as error:
            # Never reached the counter: malformed fields are refused before it.
            return 400, _error(f"malformed {op} request: {error}")
        except StorageUnavailable:
            return 503, _error("the vault's storage is unavailable; try another node")
        return 200, seal_response(inner.response_key, op, status, left, payload, random_bytes(12))

    def _register_start(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        request, replace_ticket = fields.bytes16(), fields.bytes16()
        fields.end()
        existing = self.records.get(record_id)
        if (
            existing is not None
            and self._open_ticket(ACTION_REPLACE, record_id, replace_ticket) is None
        ):
            self.audit.write(record_id, "register", "conflict")
            return CONFLICT, 0, b""
        return OK, 0, server_registration_start(self.secrets.opaque_setup, request, record_id)

    def _register_finish(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        upload, backup_key = fields.bytes16(), fields.bytes8()
        limit, replace_ticket = fields.u16(), fields.bytes16()
        fields.end()
        if len(backup_key) != 32 or not 1 <= limit <= 100:
            raise BadRequest("a 32-byte key and a limit of 1-100 attempts are required")
        replace = self._open_ticket(ACTION_REPLACE, record_id, replace_ticket) is not None
        password_file = server_registration_finish(upload)
        blob = self._seal(
            self._record_key,
            Writer().bytes16(password_file).raw(backup_key).getvalue(),
            b"record" + record_id,
        )
        if not self.records.create(record_id, blob, limit, replace=replace):
            self.audit.write(record_id, "register", "conflict")
            return CONFLICT, 0, b""
        self.audit.write(record_id, "register", "replaced" if replace else "created")
        return OK, limit, b""

    def _unpack(self, record_id: bytes, blob: bytes) -> tuple[bytes, bytes]:
        reader = Reader(self._open(self._record_key, blob, b"record" + record_id), "record")
        password_file, backup_key = reader.bytes16(), reader.raw(32)
        reader.end()
        return password_file, backup_key

    def _login_start(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        request = fields.bytes16()
        fields.end()
        if not request:
            raise BadRequest("the credential request is empty")
        try:
            record = self.records.count_attempt(record_id)
        except LockedOutNow:
            self.audit.write(record_id, "login", "locked-out-erased")
            return LOCKED_OUT, 0, b""
        if record is None:
            self.audit.write(record_id, "login", "not-found")
            return NOT_FOUND, 0, b""
        self.audit.write(record_id, "login", f"attempt-{record.attempts}")
        password_file, _key = self._unpack(record_id, record.blob)
        try:
            response, state = server_login_start(
                self.secrets.opaque_setup, password_file, request, record_id
            )
        except CryptoError as error:
            raise BadRequest("the credential request is malformed") from error
        ticket = self._ticket(ACTION_RETRIEVE, record_id, state)
        payload = (
            Writer()
            .u16(record.attempts)
            .u16(record.limit)
            .bytes16(ticket)
            .bytes16(response)
            .getvalue()
        )
        return OK, record.limit - record.attempts, payload

    def _login_finish(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        ticket, finalization, action = fields.bytes16(), fields.bytes16(), fields.u8()
        fields.end()
        if action not in (ACTION_RETRIEVE, ACTION_DELETE, ACTION_REPLACE):
            raise BadRequest("unknown login action")
        state = self._open_ticket(ACTION_RETRIEVE, record_id, ticket)
        if state is None:
            return RETRY, 0, b""
        try:
            session_key = server_login_finish(state, finalization)
        except OpaqueLoginFailed:
            self.audit.write(record_id, "login", "failed")
            record = self.records.get(record_id)
            if record is None:
                return LOCKED_OUT, 0, b""
            return WRONG_PASSWORD, max(record.limit - record.attempts, 0), b""
        record = self.records.finish_login(record_id)
        if record is None:
            # Erased by concurrent wrong guesses between the two steps.
            return LOCKED_OUT, 0, b""
        _password_file, backup_key = self._unpack(record_id, record.blob)
        transfer = self._seal(key_transfer_key(session_key), backup_key, b"backup key")
        if action == ACTION_DELETE:
            self.records.delete(record_id)
            self.audit.write(record_id, "delete", "deleted")
            return OK, 0, b""
        if action == ACTION_REPLACE:
            replace_ticket = self._ticket(ACTION_REPLACE, record_id, b"")
            self.audit.write(record_id, "login", "success-replace")
            return OK, record.limit, Writer().bytes16(transfer).bytes16(replace_ticket).getvalue()
        self.audit.write(record_id, "login", "success")
        return OK, record.limit, transfer


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


__all__ = ["DEFAULT_ATTEMPT_LIMIT", "AuditLog", "BadRequest", "FleetSecrets", "VaultNode"]
