"""Rules of a vault node that depend on time, driven in process with the clock
injected (the node's logic is the same code the served node runs; the soft
backend only signs the fleet entry here)."""

from __future__ import annotations

from pathlib import Path

from app.crypto import HpkePublicKey, SystemRng, client_registration_start
from app.net.vault_transport import run_flow
from app.protocol import vault as protocol
from app.protocol.encoding import Reader, Writer
from vault_emulator.backends import SoftBackend
from vault_emulator.node import AuditLog, FleetSecrets, VaultNode
from vault_emulator.records import SqliteRecords

BACKUP_KEY = bytes(range(32))
PASSWORD = "walrus lantern backup sepia fjord"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _node(tmp_path: Path, clock: Clock) -> tuple[VaultNode, HpkePublicKey]:
    secrets = FleetSecrets.generate()
    node = VaultNode(
        "node-1",
        SoftBackend(tmp_path, create=True),
        secrets,
        SqliteRecords(tmp_path / "records.sqlite3"),
        AuditLog(tmp_path / "audit.log", "node-1"),
        clock=clock,
    )
    return node, HpkePublicKey(secrets.hpke_private.public_key().to_bytes())


def _call(
    node: VaultNode, key: HpkePublicKey, op: str, record_id: bytes, fields: bytes
) -> tuple[int, bytes]:
    body, response_key = protocol.seal_request(key, op, record_id, fields, SystemRng())
    status, _left, payload = protocol.open_response(response_key, op, node.handle(op, body))
    return status, payload


def test_an_abandoned_registration_placeholder_can_be_reserved_again(tmp_path: Path) -> None:
    clock = Clock()
    node, key = _node(tmp_path, clock)
    record_id = bytes(16)
    request = client_registration_start(PASSWORD.encode()).message
    fields = Writer().bytes16(request).bytes16(b"").getvalue()
    status, payload = _call(node, key, "register_start", record_id, fields)
    assert status == protocol.OK
    abandoned_ticket = Reader(payload).bytes16()
    # While its ticket lives, the placeholder holds the id.
    assert _call(node, key, "register_start", record_id, fields)[0] == protocol.CONFLICT
    clock.now += 121
    assert _call(node, key, "register_start", record_id, fields)[0] == protocol.OK
    # The abandoned registration's ticket has expired with it.
    late = (
        Writer()
        .bytes16(abandoned_ticket)
        .bytes16(bytes(protocol.REGISTRATION_UPLOAD_LENGTH))
        .bytes16(bytes(protocol.WRAPPED_KEY_LENGTH))
        .u16(10)
        .bytes16(b"")
        .getvalue()
    )
    assert _call(node, key, "register_finish", record_id, late)[0] == protocol.RETRY


def test_a_client_whose_clock_is_off_is_told_the_time_and_succeeds(tmp_path: Path) -> None:
    clock = Clock()
    node, key = _node(tmp_path, clock)

    def transport(op: str, body: bytes) -> tuple[int, bytes]:
        return node.handle(op, body)

    record_id = run_flow(protocol.register(PASSWORD, BACKUP_KEY, key), transport)
    for skew in (-3600.0, 7200.0):

        def skewed(skew: float = skew) -> float:
            return clock.now + skew

        retrieved = run_flow(protocol.retrieve(record_id, PASSWORD, key, clock=skewed), transport)
        assert retrieved == BACKUP_KEY
