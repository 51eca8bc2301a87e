"""A vault node's logic, independent of HTTP: `VaultNode.handle(op, body)`.

Protocol version 2 (docs/vault-protocol.md). The rules that keep the guess limit
against a relay that records and replays every byte it forwards:

- login_start checks the OPAQUE request first (a malformed one is refused before
  anything is counted), then counts the attempt durably, in one compare-and-swap
  that also opens a single-use login ticket and remembers the request, and only
  then releases the evaluation. A request seen before is refused.
- login_finish consumes its ticket in the compare-and-swap that resets the counter
  (right password) or records the failure (wrong): a replayed finish finds its
  ticket gone. The wrong guess that reaches the limit erases the record.
- register_finish needs a fresh registration ticket from register_start; a new
  record is created over a placeholder that register_start made, a replacement
  consumes the one replace ticket a successful login issued. Erased ids stay
  erased (a tombstone), and each registration draws a new OPRF key.
- Every record's state is sealed and bound to its place in storage
  (`vault_emulator.state`): a counter edited, moved or put back is refused.
- The backup key is wrapped by the client under OPAQUE's export key: the vault,
  its operator included, stores and returns only that wrapped key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from app.crypto import (
    CryptoError,
    DecryptionError,
    HpkePrivateKey,
    HpkePublicKey,
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
from app.crypto.oprf import (
    OprfError,
    reshare_contribution,
    share_evaluate,
    sum_contributions,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import ProtocolError
from app.protocol.vault import (
    ACTION_DELETE,
    ACTION_REPLACE,
    ACTION_RETRIEVE,
    CONFLICT,
    DEFAULT_ATTEMPT_LIMIT,
    ERASED,
    FINALIZATION_LENGTH,
    KEY_PLAIN_V1,
    KEY_WRAPPED,
    LOCKED_OUT,
    NOT_FOUND,
    OK,
    OPS,
    REQUEST_INFO,
    REQUEST_WINDOW_SECONDS,
    RESPONSE_PLAINTEXT_LENGTH,
    RETRY,
    STALE,
    WRAPPED_KEY_LENGTH,
    WRONG_PASSWORD,
    Fleet,
    FleetNode,
    parse_inner_request,
    seal_key_transfer,
    seal_response,
)
from app.protocol.vault_split import (
    ACTION_DELETE as SPLIT_DELETE,
)
from app.protocol.vault_split import (
    ACTION_REPLACE as SPLIT_REPLACE,
)
from app.protocol.vault_split import (
    ACTION_RETRIEVE as SPLIT_RETRIEVE,
)
from app.protocol.vault_split import (
    KEY_SPLIT,
    RESET_KEY_LENGTH,
    SPLIT_OPS,
    VERIFIER_LENGTH,
    check_reset_key,
    open_contribution,
    parse_share,
    seal_contribution,
)
from app.protocol.vault_split import (
    REQUEST_INFO as SPLIT_REQUEST_INFO,
)
from app.protocol.vault_split import (
    RESPONSE_LENGTH as SPLIT_RESPONSE_LENGTH,
)
from vault_emulator import state as st
from vault_emulator.backends import Backend, BackendError, MonotonicCounter
from vault_emulator.etcd import StorageUnavailable
from vault_emulator.records import RecordStore, Versioned, WitnessWrite
from vault_emulator.state import RecordState, Tampered

log = logging.getLogger("vault")
TICKET_SECONDS = 120
MAX_BODY = 64 * 1024


class BadRequest(Exception):
    """Malformed input: answered 4xx, and no counter was touched."""


class RollbackDetected(StorageUnavailable):
    """The node's storage is older than its monotonic counter: it was put back (an
    old etcd snapshot, an old copy of the SQLite file), or its witness was removed.
    The node stops serving; an operator must look."""


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


TICKET_LOGIN = 1
TICKET_REPLACE = 3
TICKET_REGISTER = 4
TICKET_SPLIT = 5
TICKET_SPLIT_REPLACE = 6  # not kind 3: a split record is never replaced by OPAQUE's ops
TICKET_AD = b"Cipherline vault ticket v2"
T = TypeVar("T")
# What `_transact` asks of a decision: the state to write (None: write nothing)
# and the result to return once that is done.
Decision = tuple[RecordState | None, T]


@dataclass(frozen=True)
class Ticket:
    ticket_id: bytes
    content: bytes

    def __repr__(self) -> str:
        return "Ticket(<sealed state>)"


def _record_key(secrets: FleetSecrets) -> bytes:
    return hkdf_sha256(secrets.data_key, salt=None, info=b"vault records v2", length=32)


def credential_id(record_id: bytes, generation: bytes) -> bytes:
    """OPAQUE's credential identifier: it selects the record's OPRF key."""
    return record_id + generation


def _erased_status(state: RecordState) -> int:
    return NOT_FOUND if state.reason == st.REASON_DELETED else LOCKED_OUT


def _count(
    state: RecordState, ticket_id: bytes, digest: bytes, client_time: int, now: int
) -> Decision[int | RecordState]:
    """How the first step of a login counts against its record, in the single vault
    (`login_start`) and in a split domain (`split_evaluate`) alike: at the limit the
    record is erased; otherwise the attempt is counted, a single-use ticket opened
    and the request remembered (for as long as the request window)."""
    if state.attempts >= state.limit:
        return state.erased(st.REASON_LOCKED_OUT), LOCKED_OUT
    recent = tuple(
        (seen, when) for seen, when in state.seen if when + REQUEST_WINDOW_SECONDS >= now
    )
    counted = replace(
        state,
        attempts=state.attempts + 1,
        open_tickets=(*state.open_tickets, ticket_id)[-st.MAX_SEEN :],
        seen=(*recent[-(st.MAX_SEEN - 1) :], (digest, client_time)),
    )
    return counted, counted


def _settle(
    state: RecordState,
    ticket_id: bytes,
    *,
    right: bool,
    delete: bool,
    replace_id: bytes | None,
) -> Decision[tuple[int, RecordState | None]]:
    """How the second step of a login settles its record, in the single vault
    (`login_finish`) and in a split domain (`split_reset`) alike: an open ticket is
    spent whatever happens (a replay finds it gone); a wrong answer at the limit
    erases the record; a right one resets the counter and closes every ticket, or
    deletes the record, or also opens a replacement (`replace_id`)."""
    if state.status == st.ERASED:
        return None, (_erased_status(state), state)
    if ticket_id not in state.open_tickets:
        return None, (RETRY, state)  # used already: a replay
    if not right:
        if state.attempts >= state.limit:
            return state.erased(st.REASON_LOCKED_OUT), (LOCKED_OUT, state)
        failed = state.without_ticket(ticket_id)
        return failed, (WRONG_PASSWORD, failed)
    if delete:
        return state.erased(st.REASON_DELETED), (OK, state)
    succeeded = replace(
        state,
        attempts=0,
        open_tickets=(),
        replace_ticket=state.replace_ticket if replace_id is None else replace_id,
    )
    return succeeded, (OK, state)


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
        domain: int | None = None,
        peers: dict[int, bytes] | None = None,
    ) -> None:
        self.name = name
        # As a split-vault domain: its number (1-3) and the other domains' pinned
        # fleet keys, the only keys it seals a re-share contribution to.
        self.domain = domain
        self.peers = {number: HpkePublicKey(key) for number, key in (peers or {}).items()}
        self.backend = backend
        self.secrets = secrets
        self.records = records
        self.audit = audit
        self.clock = clock
        self._record_key = _record_key(secrets)
        self._legacy_record_key = hkdf_sha256(
            secrets.data_key, salt=None, info=b"vault records", length=32
        )
        self._ticket_key = hkdf_sha256(
            secrets.data_key, salt=None, info=b"vault tickets v2", length=32
        )
        self._counter = backend.monotonic_counter()
        self._witness: Versioned | None = None
        self._witness_count = 0
        # Writes of a node with a witness go one at a time: each moves the one
        # witness entry and the TPM counter in step.
        self._witness_lock = threading.Lock()
        self.halted: str | None = None
        if self._counter is not None:
            self._check_witness(self._counter)
        public = secrets.hpke_private.public_key().to_bytes()
        signature = backend.sign(Fleet.signed_message(public, name))
        self.entry = FleetNode(name, backend.signing_public_key(), signature)
        records.publish_node(
            name, Writer().text16(name).raw(self.entry.signing_key).raw(signature).getvalue()
        )

    # ---- the rollback witness ------------------------------------------------------
    @staticmethod
    def initialize_witness(
        records: RecordStore, secrets: FleetSecrets, name: str, counter: MonotonicCounter
    ) -> None:
        """At provisioning: the witness entry starts at the counter's value, so that
        from then on a missing entry is as telling as an old one."""
        sealed = st.seal_witness(_record_key(secrets), name, counter.read(), None, random_bytes(12))
        if not records.create_witness(name, sealed):
            raise RollbackDetected(f"storage already holds a witness for a node named {name!r}")

    def _witness_value(self, stored: Versioned | None) -> int:
        if stored is None:
            raise RollbackDetected("its witness entry is missing from storage")
        try:
            return st.open_witness(self._record_key, self.name, stored)
        except Tampered:
            raise RollbackDetected("its witness entry does not verify") from None

    def _check_witness(self, counter: MonotonicCounter) -> None:
        stored = self.records.read_witness(self.name)
        value, counted = self._witness_value(stored), counter.read()
        if value == counted + 1:
            # A write landed and the node stopped before the counter followed it
            # (nothing of that write was released): let the counter catch up.
            counted = counter.increment()
        if value != counted:
            raise RollbackDetected(
                f"storage holds witness {value} but the TPM counter is at {counted}"
            )
        self._witness, self._witness_count = stored, counted

    def _halt(self, reason: str) -> RollbackDetected:
        self.halted = reason
        log.error("vault node %s stopped serving: %s", self.name, reason)
        return RollbackDetected(reason)

    def _swap(
        self, record_id: bytes, current: Versioned | None, value: bytes, counter: MonotonicCounter
    ) -> tuple[bool, Versioned | None]:
        with self._witness_lock:
            if self.halted:
                raise RollbackDetected(self.halted)
            following = self._witness_count + 1
            witness = WitnessWrite(
                self.name,
                self._witness,
                st.seal_witness(
                    self._record_key, self.name, following, self._witness, random_bytes(12)
                ),
            )
            written, record_now, witness_now = self.records.swap_witnessed(
                record_id, current, value, witness
            )
            if not written:
                if witness_now != self._witness:
                    raise self._halt("its witness entry changed behind its back")
                return False, record_now
            try:
                counted = counter.increment()
            except BackendError as error:
                raise self._halt(f"the TPM counter could not move: {error}") from None
            if counted != following:
                raise self._halt(f"the TPM counter is at {counted}, expected {following}")
            self._witness, self._witness_count = witness_now, counted
            return True, record_now

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

    # ---- tickets -------------------------------------------------------------------
    def _ticket(self, kind: int, record_id: bytes, ticket_id: bytes, content: bytes) -> bytes:
        expiry = int(self.clock()) + TICKET_SECONDS
        plain = Writer().u8(kind).u64(expiry).bytes8(ticket_id).bytes16(content).getvalue()
        nonce = random_bytes(12)
        return nonce + aead_seal(self._ticket_key, nonce, plain, TICKET_AD + record_id)

    def _open_ticket(self, kind: int, record_id: bytes, ticket: bytes) -> Ticket | None:
        """The ticket if it is authentic, of this kind, for this record and unexpired.
        Whether it was used already is for the record's state to say."""
        try:
            plain = aead_open(self._ticket_key, ticket[:12], ticket[12:], TICKET_AD + record_id)
        except DecryptionError:
            return None
        reader = Reader(plain, "ticket")
        found_kind, expiry = reader.u8(), reader.u64()
        ticket_id, content = reader.bytes8(), reader.bytes16()
        if found_kind != kind or expiry < self.clock():
            return None
        return Ticket(ticket_id, content)

    # ---- records -------------------------------------------------------------------
    def _state(self, record_id: bytes, stored: Versioned | None) -> RecordState | None:
        if stored is None:
            return None
        try:
            return st.open_state(self._record_key, record_id, stored)
        except Tampered:
            # Edited, moved or put back behind the vault's back: treated as locked
            # out, and never overwritten, so the evidence stays.
            self.audit.write(record_id, "read", "tampered")
            return RecordState(st.ERASED, reason=st.REASON_TAMPERED)

    def _transact(self, record_id: bytes, decide: Callable[[RecordState | None], Decision[T]]) -> T:
        """Runs `decide(state) -> (new state or None to leave it, result)` until its
        write lands by compare-and-swap; a decision not to write is only trusted
        when it was made on a fresh read."""
        current = self.records.read(record_id, fresh=False)
        fresh = False
        while True:
            new, result = decide(self._state(record_id, current))
            if new is None:
                if fresh:
                    return result
                current = self.records.read(record_id, fresh=True)
                fresh = True
                continue
            value = st.seal_state(self._record_key, record_id, new, current, random_bytes(12))
            if self._counter is None:
                written, current = self.records.swap(record_id, current, value)
            else:
                written, current = self._swap(record_id, current, value, self._counter)
            if written:
                return result
            fresh = True

    def migrate_legacy(self) -> int:
        """Moves records stored by vault version 1 into sealed version 2 state, counter
        and limit as they were; their keys stay as version 1 deposited them until the
        owner's next successful login re-deposits them wrapped. Returns how many."""
        moved = 0
        for legacy in self.records.legacy_records():
            try:
                reader = Reader(
                    aead_open(
                        self._legacy_record_key,
                        legacy.blob[:12],
                        legacy.blob[12:],
                        b"record" + legacy.record_id,
                    ),
                    "version 1 record",
                )
                password_file, backup_key = reader.bytes16(), reader.raw(32)
                reader.end()
            except (DecryptionError, ProtocolError):
                self.audit.write(legacy.record_id, "migrate", "unreadable")
                continue
            migrated = RecordState(
                st.ACTIVE,
                password_file=password_file,
                stored_key=backup_key,
                key_format=KEY_PLAIN_V1,
                limit=legacy.limit,
                attempts=min(legacy.attempts, legacy.limit),
            )

            def placeholder(state: RecordState | None) -> Decision[None]:
                return (RecordState(st.PENDING) if state is None else None), None

            def fill(state: RecordState | None, migrated: RecordState = migrated) -> Decision[None]:
                if state is not None and state.status == st.PENDING:
                    return migrated, None
                return None, None

            self._transact(legacy.record_id, placeholder)
            self._transact(legacy.record_id, fill)
            self.records.drop_legacy(legacy.record_id)
            self.audit.write(legacy.record_id, "migrate", "migrated")
            moved += 1
        return moved

    # ---- requests ------------------------------------------------------------------
    def handle(self, op: str, body: bytes) -> tuple[int, bytes]:
        """HTTP status and body. 200 carries an encrypted answer; 4xx a plain error."""
        if op not in OPS and op not in SPLIT_OPS:
            return 404, _error("unknown vault operation")
        if self.halted:
            return 503, _error(
                "this vault node found its storage rolled back and stopped; try another node"
            )
        if len(body) > MAX_BODY:
            return 413, _error("vault requests are limited to 64 KiB")
        try:
            info = SPLIT_REQUEST_INFO if op in SPLIT_OPS else REQUEST_INFO
            inner = parse_inner_request(
                hpke_open(self.secrets.hpke_private, body, info + op.encode())
            )
        except (DecryptionError, ProtocolError):
            return 400, _error("the request is not sealed to this vault, or is malformed")
        try:
            status, left, payload = getattr(self, "_" + op)(inner.record_id, inner.fields)
        except (BadRequest, ProtocolError, CryptoError, OprfError) as error:
            # Never reached the counter: malformed fields are refused before it.
            return 400, _error(f"malformed {op} request: {error}")
        except StorageUnavailable:
            return 503, _error("the vault's storage is unavailable; try another node")
        length = SPLIT_RESPONSE_LENGTH if op in SPLIT_OPS else RESPONSE_PLAINTEXT_LENGTH
        return 200, seal_response(
            inner.response_key, op, status, left, payload, random_bytes(12), length=length
        )

    def _register_start(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        request, replace_ticket = fields.bytes16(), fields.bytes16()
        fields.end()
        generation = random_bytes(16)
        # Checks the request before anything is stored.
        response = server_registration_start(
            self.secrets.opaque_setup, request, credential_id(record_id, generation)
        )
        ticket_id = b""
        if replace_ticket:
            granted = self._open_ticket(TICKET_REPLACE, record_id, replace_ticket)
            if granted is None:
                return CONFLICT, 0, b""
            ticket_id = granted.ticket_id

            def may_replace(state: RecordState | None) -> Decision[int]:
                if state is not None and state.status == st.ERASED:
                    return None, ERASED
                if state is None or state.status != st.ACTIVE:
                    return None, CONFLICT
                return None, OK if state.replace_ticket == ticket_id else CONFLICT

            outcome = self._transact(record_id, may_replace)
        else:
            placeholder = RecordState(
                st.PENDING, generation=generation, expires=int(self.clock()) + TICKET_SECONDS
            )

            def reserve(state: RecordState | None) -> Decision[int]:
                if state is None:
                    return placeholder, OK
                if state.status == st.PENDING and state.expires < self.clock():
                    # Abandoned: its registration ticket has expired, so nothing can
                    # finish it; the id may be reserved again.
                    return placeholder, OK
                return None, ERASED if state.status == st.ERASED else CONFLICT

            outcome = self._transact(record_id, reserve)
        if outcome != OK:
            self.audit.write(record_id, "register", "erased" if outcome == ERASED else "conflict")
            return outcome, 0, b""
        ticket = self._ticket(TICKET_REGISTER, record_id, ticket_id, generation)
        return OK, 0, Writer().bytes16(ticket).bytes16(response).getvalue()

    def _register_finish(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        registration_ticket, upload, wrapped = fields.bytes16(), fields.bytes16(), fields.bytes16()
        limit, replace_ticket = fields.u16(), fields.bytes16()
        fields.end()
        if len(wrapped) != WRAPPED_KEY_LENGTH or not 1 <= limit <= 100:
            raise BadRequest("a wrapped 32-byte key and a limit of 1-100 attempts are required")
        granted = self._open_ticket(TICKET_REGISTER, record_id, registration_ticket)
        if granted is None:
            return RETRY, 0, b""
        password_file = server_registration_finish(upload)
        record = RecordState(
            st.ACTIVE,
            generation=granted.content,
            password_file=password_file,
            stored_key=wrapped,
            key_format=KEY_WRAPPED,
            limit=limit,
        )
        if replace_ticket:
            replacing = self._open_ticket(TICKET_REPLACE, record_id, replace_ticket)
            if (
                replacing is None
                or not granted.ticket_id
                or replacing.ticket_id != granted.ticket_id
            ):
                return CONFLICT, 0, b""

            def swap_in(state: RecordState | None) -> Decision[int]:
                if state is not None and state.status == st.ERASED:
                    return None, ERASED
                if (
                    state is None
                    or state.status != st.ACTIVE
                    or state.replace_ticket != granted.ticket_id
                ):
                    return None, CONFLICT
                # The replace ticket is spent here; the new record keeps the memory of
                # counted requests so none of them can be replayed against it.
                return replace(record, seen=state.seen), OK

            outcome = self._transact(record_id, swap_in)
        else:
            if granted.ticket_id:
                return CONFLICT, 0, b""

            def fill(state: RecordState | None) -> Decision[int]:
                if state is not None and state.status == st.ERASED:
                    return None, ERASED
                if state is None or state.status != st.PENDING:
                    return None, CONFLICT
                return (record, OK) if state.generation == granted.content else (None, CONFLICT)

            outcome = self._transact(record_id, fill)
        if outcome != OK:
            self.audit.write(record_id, "register", "erased" if outcome == ERASED else "conflict")
            return outcome, 0, b""
        self.audit.write(record_id, "register", "replaced" if replace_ticket else "created")
        return OK, limit, b""

    def _login_start(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        client_time, request = fields.u64(), fields.bytes16()
        fields.end()
        if not request:
            raise BadRequest("the credential request is empty")
        now = int(self.clock())
        if abs(client_time - now) > REQUEST_WINDOW_SECONDS:
            return STALE, 0, now.to_bytes(8, "big")
        digest = hashlib.sha256(request).digest()[:16]
        ticket_id = random_bytes(16)
        evaluated: list[tuple[bytes, bytes]] = []

        def count(state: RecordState | None) -> Decision[int | RecordState]:
            if state is None or state.status == st.PENDING:
                return None, NOT_FOUND
            if state.status == st.ERASED:
                return None, _erased_status(state)
            if any(seen == digest for seen, _when in state.seen):
                return None, STALE
            # Evaluated first so that a malformed request is refused (BadRequest)
            # before the counter moves; released only after the count is stored.
            try:
                evaluated[:] = [
                    server_login_start(
                        self.secrets.opaque_setup,
                        state.password_file,
                        request,
                        credential_id(record_id, state.generation),
                    )
                ]
            except CryptoError:
                raise BadRequest("the credential request is malformed") from None
            return _count(state, ticket_id, digest, client_time, now)

        outcome = self._transact(record_id, count)
        if not isinstance(outcome, RecordState):
            self.audit.write(record_id, "login", _OUTCOME_NAMES.get(outcome, "refused"))
            return outcome, 0, b""
        self.audit.write(record_id, "login", f"attempt-{outcome.attempts}")
        response, server_state = evaluated[0]
        ticket = self._ticket(TICKET_LOGIN, record_id, ticket_id, server_state)
        payload = (
            Writer()
            .u16(outcome.attempts)
            .u16(outcome.limit)
            .u8(outcome.key_format)
            .bytes16(ticket)
            .bytes16(response)
            .getvalue()
        )
        return OK, outcome.attempts_left, payload

    def _login_finish(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        ticket, finalization, action = fields.bytes16(), fields.bytes16(), fields.u8()
        fields.end()
        if action not in (ACTION_RETRIEVE, ACTION_DELETE, ACTION_REPLACE):
            raise BadRequest("unknown login action")
        if len(finalization) != FINALIZATION_LENGTH:
            raise BadRequest(f"a credential finalization is {FINALIZATION_LENGTH} bytes")
        granted = self._open_ticket(TICKET_LOGIN, record_id, ticket)
        if granted is None:
            return RETRY, 0, b""
        try:
            session_key: bytes | None = server_login_finish(granted.content, finalization)
        except OpaqueLoginFailed:
            session_key = None
        replace_id = random_bytes(16)

        def consume(
            state: RecordState | None,
        ) -> Decision[tuple[int, RecordState | None]]:
            if state is None or state.status == st.PENDING:
                return None, (RETRY, state)
            return _settle(
                state,
                granted.ticket_id,
                right=session_key is not None,
                delete=action == ACTION_DELETE,
                replace_id=replace_id if action == ACTION_REPLACE else None,
            )

        status, state = self._transact(record_id, consume)
        if status != OK or session_key is None or state is None:
            self.audit.write(record_id, "login", _OUTCOME_NAMES.get(status, "refused"))
            left = state.attempts_left if status == WRONG_PASSWORD and state else 0
            return status, left, b""
        if action == ACTION_DELETE:
            self.audit.write(record_id, "delete", "deleted")
            return OK, 0, b""
        transfer = seal_key_transfer(session_key, record_id, state.stored_key, random_bytes(12))
        if action == ACTION_REPLACE:
            replace_ticket = self._ticket(TICKET_REPLACE, record_id, replace_id, b"")
            self.audit.write(record_id, "login", "success-replace")
            return OK, state.limit, Writer().bytes16(transfer).bytes16(replace_ticket).getvalue()
        self.audit.write(record_id, "login", "success")
        return OK, state.limit, transfer

    # ---- the split vault (docs/vault-protocol.md, "The split vault") ---------------
    def _split_register(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        share_bytes, verifier = fields.bytes16(), fields.raw(VERIFIER_LENGTH)
        wrapped, limit, replace_ticket = fields.bytes16(), fields.u16(), fields.bytes16()
        fields.end()
        share = parse_share(share_bytes)
        if len(wrapped) != WRAPPED_KEY_LENGTH:
            raise BadRequest(f"a wrapped key is {WRAPPED_KEY_LENGTH} bytes")
        if not 1 <= limit <= 100:
            raise BadRequest("the attempt limit must be 1-100")
        if replace_ticket:
            return self._split_replace(
                record_id, replace_ticket, share.to_bytes(), verifier, wrapped, limit
            )
        status = self._create_split_record(record_id, share.to_bytes(), verifier, wrapped, limit)
        self.audit.write(
            record_id, "split-register", "registered" if status == OK else _OUTCOME_NAMES[status]
        )
        return status, limit if status == OK else 0, b""

    def _create_split_record(
        self, record_id: bytes, share: bytes, verifier: bytes, wrapped: bytes, limit: int
    ) -> int:
        """Creates only: an existing record is `CONFLICT`, a tombstone `ERASED`, so a
        replayed registration or installation never overwrites anything."""
        generation = random_bytes(16)
        now = int(self.clock())

        def take(state: RecordState | None) -> Decision[int]:
            # A new record's id is first taken by a placeholder: only a placeholder
            # may be written where no value was (its storage version is then known).
            if state is None or (state.status == st.PENDING and state.expires < now):
                placeholder = RecordState(
                    st.PENDING, generation=generation, expires=now + TICKET_SECONDS
                )
                return placeholder, OK
            if state.status == st.ERASED:
                return None, ERASED
            return None, CONFLICT

        def fill(state: RecordState | None) -> Decision[int]:
            if state is None or state.status != st.PENDING or state.generation != generation:
                return None, CONFLICT
            active = RecordState(
                st.ACTIVE,
                generation=generation,
                stored_key=wrapped,
                key_format=KEY_SPLIT,
                limit=limit,
                share=share,
                verifier=verifier,
            )
            return active, OK

        status = self._transact(record_id, take)
        return self._transact(record_id, fill) if status == OK else status

    def _split_replace(  # noqa: PLR0917
        self,
        record_id: bytes,
        replace_ticket: bytes,
        share: bytes,
        verifier: bytes,
        wrapped: bytes,
        limit: int,
    ) -> tuple[int, int, bytes]:
        """A password change: the record's share, verifier and wrapped key replaced
        at once, only with the one replace ticket a right password's reset issued."""
        granted = self._open_ticket(TICKET_SPLIT_REPLACE, record_id, replace_ticket)
        if granted is None:
            return CONFLICT, 0, b""

        def swap(state: RecordState | None) -> Decision[int]:
            if state is not None and state.status == st.ERASED:
                return None, ERASED
            if (
                state is None
                or state.status != st.ACTIVE
                or state.key_format != KEY_SPLIT
                or not state.replace_ticket
                or state.replace_ticket != granted.ticket_id
            ):
                return None, CONFLICT  # spent already, or never issued for this record
            replaced = RecordState(
                st.ACTIVE,
                generation=random_bytes(16),
                stored_key=wrapped,
                key_format=KEY_SPLIT,
                limit=limit,
                seen=state.seen,
                share=share,
                verifier=verifier,
            )
            return replaced, OK

        status = self._transact(record_id, swap)
        self.audit.write(
            record_id, "split-register", "replaced" if status == OK else _OUTCOME_NAMES[status]
        )
        return status, limit if status == OK else 0, b""

    def _split_evaluate(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        client_time, blinded = fields.u64(), fields.bytes16()
        fields.end()
        now = int(self.clock())
        if abs(client_time - now) > REQUEST_WINDOW_SECONDS:
            return STALE, 0, now.to_bytes(8, "big")
        digest = hashlib.sha256(blinded).digest()[:16]
        ticket_id = random_bytes(16)
        evaluated: list[bytes] = []

        def count(state: RecordState | None) -> Decision[int | RecordState]:
            if (
                state is None
                or state.status == st.PENDING
                or (state.status == st.ACTIVE and state.key_format != KEY_SPLIT)
            ):
                return None, NOT_FOUND
            if state.status == st.ERASED:
                return None, _erased_status(state)
            if any(seen == digest for seen, _when in state.seen):
                return None, STALE
            # Evaluated first, so that a malformed element is refused (400) before
            # the counter moves; released only once the count is stored.
            evaluated[:] = [share_evaluate(parse_share(state.share), blinded)]
            return _count(state, ticket_id, digest, client_time, now)

        outcome = self._transact(record_id, count)
        if not isinstance(outcome, RecordState):
            self.audit.write(record_id, "split-evaluate", _OUTCOME_NAMES.get(outcome, "refused"))
            return outcome, 0, b""
        self.audit.write(record_id, "split-evaluate", f"attempt-{outcome.attempts}")
        ticket = self._ticket(TICKET_SPLIT, record_id, ticket_id, b"")
        payload = (
            Writer()
            .u16(outcome.attempts)
            .u16(outcome.limit)
            .bytes16(ticket)
            .bytes16(evaluated[0])
            .bytes16(outcome.stored_key)
            .getvalue()
        )
        return OK, outcome.attempts_left, payload

    def _split_reset(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        ticket, reset_key, action = fields.bytes16(), fields.raw(RESET_KEY_LENGTH), fields.u8()
        fields.end()
        if action not in (SPLIT_RETRIEVE, SPLIT_DELETE, SPLIT_REPLACE):
            raise BadRequest("unknown reset action")
        replace_id = random_bytes(16)
        granted = self._open_ticket(TICKET_SPLIT, record_id, ticket)
        if granted is None:
            return RETRY, 0, b""

        def consume(state: RecordState | None) -> Decision[tuple[int, RecordState | None]]:
            if state is None or state.status == st.PENDING:
                return None, (RETRY, state)
            if state.status == st.ACTIVE and state.key_format != KEY_SPLIT:
                return None, (RETRY, state)  # a single-vault record has no split tickets
            return _settle(
                state,
                granted.ticket_id,
                right=check_reset_key(state.verifier, reset_key),
                delete=action == SPLIT_DELETE,
                replace_id=replace_id if action == SPLIT_REPLACE else None,
            )

        status, state = self._transact(record_id, consume)
        outcome = "success" if status == OK else _OUTCOME_NAMES.get(status, "refused")
        self.audit.write(record_id, "split-reset", outcome)
        if status == WRONG_PASSWORD and state is not None:
            return status, state.attempts_left, b""
        if status == OK and state is not None and action == SPLIT_REPLACE:
            ticket = self._ticket(TICKET_SPLIT_REPLACE, record_id, replace_id, b"")
            return OK, state.limit, Writer().bytes16(ticket).getvalue()
        return status, state.limit if status == OK and state else 0, b""

    # ---- re-sharing (docs/vault-protocol.md, "Re-sharing") ---------------------------
    def _split_holder(self, record_id: bytes, reset_key: bytes) -> tuple[int, RecordState | None]:
        """The record, if this domain holds it and `reset_key` is its own: every
        re-share step is for a holder of the backup key only. Counts nothing. A
        reset key that is not the record's is answered as a missing record, so
        that without the backup key nobody learns whether this domain holds one."""
        stored = self.records.read(record_id, fresh=True)
        state = self._state(record_id, stored)
        if state is None or state.status == st.PENDING:
            return NOT_FOUND, None
        if state.status == st.ERASED:
            return _erased_status(state), None
        if state.key_format != KEY_SPLIT:
            return NOT_FOUND, None
        if not check_reset_key(state.verifier, reset_key):
            return NOT_FOUND, None
        return OK, state

    def _split_check(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        reset_key = fields.raw(RESET_KEY_LENGTH)
        fields.end()
        status, state = self._split_holder(record_id, reset_key)
        return status, state.attempts_left if state else 0, b""

    def _split_reshare(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        reset_key, target, mask = fields.raw(RESET_KEY_LENGTH), fields.u8(), fields.raw(32)
        fields.end()
        if self.domain is None or target not in self.peers or target == self.domain:
            raise BadRequest("this vault node re-shares only to a peer domain it pins")
        status, state = self._split_holder(record_id, reset_key)
        if state is None:
            self.audit.write(record_id, "split-reshare", _OUTCOME_NAMES.get(status, "refused"))
            return status, 0, b""
        other = ({1, 2, 3} - {self.domain, target}).pop()
        term = reshare_contribution(parse_share(state.share), target, other, pairwise_mask=mask)
        sealed = seal_contribution(self.peers[target], record_id, self.domain, target, term)
        self.audit.write(record_id, "split-reshare", f"to-{target}")
        payload = Writer().bytes16(sealed).bytes16(state.stored_key).u16(state.limit).getvalue()
        return OK, state.attempts_left, payload

    def _split_install(self, record_id: bytes, fields: Reader) -> tuple[int, int, bytes]:
        first, second = fields.bytes16(), fields.bytes16()
        verifier, wrapped, limit = fields.raw(VERIFIER_LENGTH), fields.bytes16(), fields.u16()
        fields.end()
        if self.domain is None:
            raise BadRequest("this vault node is not a split-vault domain")
        if len(wrapped) != WRAPPED_KEY_LENGTH or not 1 <= limit <= 100:
            raise BadRequest("a wrapped key is 60 bytes and a limit 1-100")
        sources = dict(
            open_contribution(self.secrets.hpke_private, record_id, self.domain, sealed)
            for sealed in (first, second)
        )
        if len(sources) != 2:
            raise BadRequest("a share is rebuilt from two different domains")
        share = sum_contributions(self.domain, list(sources.values()))
        status = self._create_split_record(record_id, share.to_bytes(), verifier, wrapped, limit)
        self.audit.write(
            record_id, "split-install", "installed" if status == OK else _OUTCOME_NAMES[status]
        )
        return status, limit if status == OK else 0, b""


_OUTCOME_NAMES = {
    NOT_FOUND: "not-found",
    WRONG_PASSWORD: "failed",
    LOCKED_OUT: "locked-out-erased",
    RETRY: "ticket-refused",
    STALE: "replay-refused",
    ERASED: "erased",
    CONFLICT: "conflict",
}


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


__all__ = [
    "DEFAULT_ATTEMPT_LIMIT",
    "AuditLog",
    "BadRequest",
    "FleetSecrets",
    "RollbackDetected",
    "VaultNode",
    "credential_id",
]
