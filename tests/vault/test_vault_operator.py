"""The vault's operator, holding the HSM PIN and every byte of storage, and the
migration of version 1 records.

The operator can unseal the fleet secrets (that is what the PIN is for), and so
can read every record state. What it must not find there is a backup key: the
client wraps it under OPAQUE's export key, so the operator is left with offline
password guessing against OPAQUE's memory-hard KSF (measured by
`python -m bench vault`, stated in docs/threat-model.md).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable

import pytest

from app.crypto import (
    aead_seal,
    client_registration_finish,
    client_registration_start,
    hkdf_sha256,
    random_bytes,
    server_registration_finish,
    server_registration_start,
)
from app.net.vault_transport import run_flow
from app.protocol import vault as protocol
from app.protocol.encoding import Writer
from tests.support.components import VaultProcess
from tests.support.processes import python_env
from tests.vault.conftest import Fleet
from vault_emulator import state
from vault_emulator.node import FleetSecrets
from vault_emulator.records import SqliteRecords

BACKUP_KEY = bytes(range(32))
PASSWORD = "correct horse battery"


_UNSEAL = """
import sys
from pathlib import Path
from vault_emulator.backends import open_backend
from vault_emulator.cli import FLEET_FILE
from vault_emulator.config import NodeConfig, read_pin
data = Path(sys.argv[1])
backend = open_backend(NodeConfig.load(data), data, read_pin(Path(sys.argv[2])), create=False)
sys.stdout.write(backend.unseal((data / FLEET_FILE).read_bytes()).hex())
"""


def _operator_unseals(node: VaultProcess) -> FleetSecrets:
    """What the operator gets with the PIN: the fleet secrets, in the clear. (In a
    process of its own: a PKCS#11 library keeps its first configuration.)"""
    assert node.token is not None
    result = subprocess.run(
        [sys.executable, "-c", _UNSEAL, str(node.data_dir), str(node.pin_file)],
        env=python_env(node.token.env()),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return FleetSecrets.from_bytes(bytes.fromhex(result.stdout))


def _record_states(node: VaultProcess, secrets: FleetSecrets) -> dict[bytes, state.RecordState]:
    key = hkdf_sha256(secrets.data_key, salt=None, info=b"vault records v2", length=32)
    records = SqliteRecords(node.data_dir / "records.sqlite3")
    with sqlite3.connect(node.data_dir / "records.sqlite3") as db:
        ids = [bytes(row[0]) for row in db.execute("SELECT id FROM sealed_records")]
    found = {}
    for record_id in ids:
        stored = records.read(record_id, fresh=True)
        assert stored is not None
        found[record_id] = state.open_state(key, record_id, stored)
    return found


def test_the_operator_with_the_pin_reads_no_backup_key(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory()
    node = fleet.nodes[0]
    record_id = run_flow(protocol.register(PASSWORD, BACKUP_KEY, fleet.key()), fleet.transport)
    run_flow(
        protocol.change_password(record_id, PASSWORD, "another one", fleet.key()), fleet.transport
    )
    assert run_flow(protocol.retrieve(record_id, "another one", fleet.key()), fleet.transport) == (
        BACKUP_KEY
    )
    secrets = _operator_unseals(node)
    states = _record_states(node, secrets)
    record = states[record_id]
    assert record.key_format == protocol.KEY_WRAPPED
    assert len(record.stored_key) == protocol.WRAPPED_KEY_LENGTH
    everything = b"".join(s.to_bytes() for s in states.values()) + b"".join(
        path.read_bytes() for path in node.data_dir.rglob("*") if path.is_file()
    )
    assert BACKUP_KEY not in everything
    assert PASSWORD.encode() not in everything
    # The wrapped key opens only under the password's export key, which the
    # operator can only get by running OPAQUE's client per guess (offline guessing).
    with pytest.raises(protocol.VaultProtocolError):
        protocol.unwrap_backup_key(secrets.data_key * 2, record_id, record.stored_key)


def _write_version1_record(
    node: VaultProcess, secrets: FleetSecrets, password: str, attempts: int
) -> bytes:
    """A record exactly as vault version 1 stored it (credential id = record id,
    the backup key in the clear inside the fleet's record key)."""
    record_id = random_bytes(16)
    started = client_registration_start(password.encode())
    response = server_registration_start(secrets.opaque_setup, started.message, record_id)
    upload, _export = client_registration_finish(password.encode(), started.state, response)
    password_file = server_registration_finish(upload)
    key = hkdf_sha256(secrets.data_key, salt=None, info=b"vault records", length=32)
    nonce = random_bytes(12)
    blob = nonce + aead_seal(
        key,
        nonce,
        Writer().bytes16(password_file).raw(BACKUP_KEY).getvalue(),
        b"record" + record_id,
    )
    with sqlite3.connect(node.data_dir / "records.sqlite3") as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS records (id BLOB PRIMARY KEY, blob BLOB NOT NULL,"
            " attempt_limit INTEGER NOT NULL, attempts INTEGER NOT NULL)"
        )
        db.execute("INSERT INTO records VALUES (?, ?, 10, ?)", (record_id, blob, attempts))
    return record_id


def test_version1_records_migrate_keep_their_counter_and_are_rewrapped_on_login(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory()
    node = fleet.nodes[0]
    secrets = _operator_unseals(node)
    node.stop()
    kept = _write_version1_record(node, secrets, PASSWORD, attempts=0)
    counted = _write_version1_record(node, secrets, PASSWORD, attempts=7)
    node.start()
    with sqlite3.connect(node.data_dir / "records.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM records").fetchone() == (0,)
    states = _record_states(node, secrets)
    assert states[counted].attempts == 7
    assert states[kept].key_format == protocol.KEY_PLAIN_V1
    with pytest.raises(protocol.WrongPassword) as wrong:
        run_flow(protocol.retrieve(counted, "wrong", fleet.key()), fleet.transport)
    assert wrong.value.attempts_left == 2
    # The first retrieve of an old record re-deposits its key wrapped, same password.
    assert run_flow(protocol.retrieve(kept, PASSWORD, fleet.key()), fleet.transport) == BACKUP_KEY
    upgraded = _record_states(node, secrets)[kept]
    assert upgraded.key_format == protocol.KEY_WRAPPED
    assert BACKUP_KEY not in upgraded.to_bytes()
    assert run_flow(protocol.retrieve(kept, PASSWORD, fleet.key()), fleet.transport) == BACKUP_KEY
