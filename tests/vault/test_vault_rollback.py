"""The vault's operator puts storage back to an earlier copy, and the TPM notices.

A TPM node keeps a witness in its NV monotonic counter and the same number,
sealed, in storage; both move on every write. An operator who restores an old
copy of a node's SQLite file, or an old snapshot of the whole etcd cluster (every
member's data, taken and put back with the members stopped), gives back attempts
to every record in it. The node refuses to serve such storage, at its next write
or its next start, so the attempts given back cannot be spent.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from app.net.vault_transport import DirectTransport, run_flow
from app.protocol import vault as protocol
from app.protocol.vault import LockedOut, VaultUnavailable, WrongPassword
from tests.support.components import EtcdCluster, Swtpm
from tests.support.processes import ComponentError
from tests.vault.conftest import Fleet
from vault_emulator.records import EtcdRecords

BACKUP_KEY = bytes(range(32))
PASSWORD = "correct horse battery"


def _guess(fleet: Fleet, record_id: bytes, transport: object = None) -> int:
    with pytest.raises(WrongPassword) as wrong:
        run_flow(
            protocol.retrieve(record_id, "a guess", fleet.key()),
            transport or fleet.transport,  # type: ignore[arg-type]
        )
    return wrong.value.attempts_left


def _copy_sqlite(data_dir: Path, destination: Path) -> None:
    destination.mkdir()
    for path in data_dir.glob("records.sqlite3*"):
        shutil.copy2(path, destination / path.name)


def _restore_sqlite(source: Path, data_dir: Path) -> None:
    for path in data_dir.glob("records.sqlite3*"):
        path.unlink()
    for path in source.iterdir():
        shutil.copy2(path, data_dir / path.name)


def test_a_tpm_node_refuses_an_old_copy_of_its_sqlite_file(
    fleet_factory: Callable[..., Fleet], swtpm: Swtpm, tmp_path: Path
) -> None:
    fleet = fleet_factory(backend="tpm", swtpm=swtpm)
    node = fleet.nodes[0]
    record_id = run_flow(
        protocol.register(PASSWORD, BACKUP_KEY, fleet.key(), attempt_limit=4), fleet.transport
    )
    assert _guess(fleet, record_id) == 3
    node.stop()
    _copy_sqlite(node.data_dir, tmp_path / "copy")
    node.start()
    assert _guess(fleet, record_id) == 2
    assert _guess(fleet, record_id) == 1
    node.stop()
    _restore_sqlite(tmp_path / "copy", node.data_dir)
    with pytest.raises(ComponentError, match="refusing to serve"):
        node.start(timeout=20)
    # Nor does removing the records altogether: the witness is missing then.
    node.stop()
    for path in node.data_dir.glob("records.sqlite3*"):
        path.unlink()
    with pytest.raises(ComponentError, match="refusing to serve"):
        node.start(timeout=20)


@pytest.mark.slow
def test_tpm_nodes_refuse_an_old_snapshot_of_the_etcd_cluster(
    fleet_factory: Callable[..., Fleet],
    fresh_etcd_cluster: EtcdCluster,
    swtpm: Swtpm,
    tmp_path: Path,
) -> None:
    fleet = fleet_factory(count=2, cluster=fresh_etcd_cluster, backend="tpm", swtpm=swtpm)
    nodes = [DirectTransport([node.url]) for node in fleet.nodes]
    record_id = run_flow(
        protocol.register(PASSWORD, BACKUP_KEY, fleet.key(), attempt_limit=3), fleet.transport
    )
    assert _guess(fleet, record_id, nodes[0]) == 2
    fresh_etcd_cluster.stop_all()
    fresh_etcd_cluster.save_data(tmp_path / "snapshot")
    fresh_etcd_cluster.start_all()
    assert _guess(fleet, record_id, nodes[1]) == 1
    with pytest.raises(LockedOut):
        run_flow(protocol.retrieve(record_id, "a guess", fleet.key()), nodes[0])
    # The operator keeps the witness entries as they are now, then puts the snapshot
    # back: the record has two attempts left again.
    witness_keys = [
        EtcdRecords.PREFIX + b"witness/" + vault.node_name.encode().hex().encode()
        for vault in fleet.nodes
    ]
    current_witness = [fresh_etcd_cluster.get(key) for key in witness_keys]
    fresh_etcd_cluster.stop_all()
    fresh_etcd_cluster.restore_data(tmp_path / "snapshot")
    fresh_etcd_cluster.start_all()
    for transport in nodes:
        with pytest.raises(VaultUnavailable):
            run_flow(protocol.retrieve(record_id, PASSWORD, fleet.key()), transport)
    for vault in fleet.nodes:
        assert vault.health()["status"] == "halted"
        vault.stop()
        with pytest.raises(ComponentError, match="refusing to serve"):
            vault.start(timeout=20)
    # Pasting today's witness entries into the restored snapshot does not help: an
    # entry is sealed to the version it was written at, and a put moves the version.
    for key, value in zip(witness_keys, current_witness, strict=True):
        assert value is not None
        fresh_etcd_cluster.put(key, value)
    for vault in fleet.nodes:
        with pytest.raises(ComponentError, match="refusing to serve"):
            vault.start(timeout=20)
