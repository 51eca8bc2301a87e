"""The TPM backend on a real swtpm: PIN-bound sealed objects, TPM resets, the counter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from app.crypto import (
    Argon2Params,
    DecryptionError,
    SigningKey,
    VerifyKey,
    aead_open,
    aead_seal,
    random_bytes,
)
from app.net.vault_transport import run_flow
from app.protocol import vault as protocol
from tests.support.components import Swtpm
from tests.vault.conftest import Fleet
from vault_emulator.backends import _PRIMARY_TEMPLATE, BackendError, TpmBackend, _pin_keys
from vault_emulator.node import FleetSecrets

BACKUP_KEY = bytes(range(32))
PASSWORD = "correct horse battery"
PIN = "a node pin for tests"


def _tpm2(
    swtpm: Swtpm, *argv: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        env={**os.environ, "TPM2TOOLS_TCTI": swtpm.tcti},
        timeout=60,
        check=False,
    )


def _flush(swtpm: Swtpm) -> None:
    _tpm2(swtpm, "tpm2_flushcontext", "-t")
    _tpm2(swtpm, "tpm2_flushcontext", "-s")


def _raw_unseal(swtpm: Swtpm, tpm_dir: Path, scratch: Path, auth: bytes | None) -> bytes | None:
    """tpm2-tools by hand, as an attacker would: returns None when the TPM refuses."""
    scratch.mkdir(exist_ok=True)
    primary, loaded = str(scratch / "primary.ctx"), str(scratch / "wrap.ctx")
    assert _tpm2(swtpm, "tpm2_createprimary", *_PRIMARY_TEMPLATE, "-c", primary).returncode == 0
    _flush(swtpm)
    load = _tpm2(
        swtpm,
        "tpm2_load",
        "-C",
        primary,
        "-u",
        str(tpm_dir / "wrap-v2.pub"),
        "-r",
        str(tpm_dir / "wrap-v2.priv"),
        "-c",
        loaded,
    )
    _flush(swtpm)
    # Loading needs only the parent, whose auth is the owner's (empty here).
    assert load.returncode == 0, load.stderr
    argv = ["tpm2_unseal", "-c", loaded]
    if auth is not None:
        argv += ["-p", "file:-"]
    result = _tpm2(swtpm, *argv, stdin=b"hex:" + auth.hex().encode() if auth else None)
    _flush(swtpm)
    return result.stdout if result.returncode == 0 else None


def _register(fleet: Fleet) -> bytes:
    return run_flow(protocol.register(PASSWORD, BACKUP_KEY, fleet.key()), fleet.transport)


def _retrieve(fleet: Fleet, record_id: bytes) -> bytes:
    return run_flow(protocol.retrieve(record_id, PASSWORD, fleet.key()), fleet.transport)


def test_node_serves_its_record_after_a_tpm_reset(
    fleet_factory: Callable[..., Fleet], swtpm: Swtpm
) -> None:
    fleet = fleet_factory(backend="tpm", swtpm=swtpm)
    node = fleet.nodes[0]
    record_id = _register(fleet)
    node.stop()
    swtpm.restart()
    node.start()
    assert _retrieve(fleet, record_id) == BACKUP_KEY
    tpm_dir = node.data_dir / "tpm"
    assert not (tpm_dir / "primary.ctx").exists()
    # A second reset with the node running: it needs the TPM only when it starts.
    swtpm.restart()
    assert _retrieve(fleet, record_id) == BACKUP_KEY


def test_copied_tpm_state_and_node_files_without_the_pin_yield_nothing(
    fleet_factory: Callable[..., Fleet], swtpm: Swtpm, tmp_path: Path
) -> None:
    fleet = fleet_factory(backend="tpm", swtpm=swtpm)
    node = fleet.nodes[0]
    assert node.pin is not None
    record_id = _register(fleet)
    # The thief's haul: every file of the data dir and the TPM's state, not the PIN file.
    node.stop()
    swtpm.stop()
    stolen = tmp_path / "stolen"
    shutil.copytree(node.data_dir, stolen)
    thief = swtpm.copy_state(tmp_path / "thief-tpm").start()
    swtpm.start()
    node.start()
    try:
        for path in stolen.rglob("*"):
            if path.is_file():
                assert node.pin.encode() not in path.read_bytes(), path
        tpm_dir = stolen / "tpm"
        kdf = json.loads((tpm_dir / "node.json").read_text())["kdf"]
        params = Argon2Params(
            time_cost=kdf["time_cost"],
            memory_cost_kib=kdf["memory_cost_kib"],
            parallelism=kdf["parallelism"],
        )
        keys = _pin_keys(node.pin, bytes.fromhex(kdf["salt"]), params)
        sealed_fleet = (stolen / "fleet.sealed").read_bytes()

        # A TPM that ignored auth values (a patched emulator on the copied state) would
        # hand over what the object holds; without the PIN that is only a random mask.
        held = _raw_unseal(thief, tpm_dir, tmp_path / "s1", keys["object auth"])
        assert held is not None
        assert len(held) == 32
        with pytest.raises(DecryptionError):
            aead_open(held, sealed_fleet[:12], sealed_fleet[12:], b"cipherline vault seal")

        with pytest.raises(BackendError, match="refused this node's PIN"):
            TpmBackend(stolen, thief.tcti, "not the pin", create=False)
        with pytest.raises(BackendError, match="needs the node's PIN"):
            TpmBackend(stolen, thief.tcti, None, create=False)
        assert _raw_unseal(thief, tpm_dir, tmp_path / "s2", None) is None

        # The PIN is the one thing missing: with it, the copy opens (which is why it
        # lives outside the data dir, in a 0600 file).
        backend = TpmBackend(stolen, thief.tcti, node.pin, create=False)
        secrets = FleetSecrets.from_bytes(backend.unseal(sealed_fleet))
        assert secrets.to_bytes()
    finally:
        thief.stop()
    assert _retrieve(fleet, record_id) == BACKUP_KEY


def test_monotonic_counter_only_goes_up_and_survives_a_tpm_reset(
    swtpm: Swtpm, tmp_path: Path
) -> None:
    backend = TpmBackend(tmp_path / "node", swtpm.tcti, PIN, create=True)
    counter = backend.monotonic_counter()
    assert counter is not None
    start = counter.read()
    assert start >= 1
    assert counter.increment() == start + 1
    assert counter.increment() == start + 2
    assert counter.read() == start + 2
    # Read and increment are all there is: no way to set or lower it.
    assert {name for name in dir(counter) if not name.startswith("_")} == {
        "index",
        "read",
        "increment",
    }

    swtpm.restart()
    reopened = TpmBackend(tmp_path / "node", swtpm.tcti, PIN, create=False)
    again = reopened.monotonic_counter()
    assert again is not None
    assert again.read() == start + 2
    assert again.increment() == start + 3

    # init cannot redefine it (nor anything else of the node)...
    with pytest.raises(BackendError, match="already holds a TPM node"):
        TpmBackend(tmp_path / "node", swtpm.tcti, PIN, create=True)
    # ...and the TPM itself refuses to redefine or overwrite the index.
    index = json.loads((tmp_path / "node" / "tpm" / "node.json").read_text())["counter_index"]
    redefine = _tpm2(
        swtpm, "tpm2_nvdefine", "-C", "o", "-s", "8", "-a", "nt=counter|ownerread|ownerwrite", index
    )
    assert redefine.returncode != 0
    overwrite = _tpm2(swtpm, "tpm2_nvwrite", "-C", "o", "-i", "-", index, stdin=bytes(8))
    assert overwrite.returncode != 0
    assert again.read() == start + 3

    # Another node on the same TPM gets a counter of its own.
    other = TpmBackend(tmp_path / "other", swtpm.tcti, "another pin", create=True)
    other_counter = other.monotonic_counter()
    assert other_counter is not None
    other_counter.increment()
    assert again.read() == start + 3


def test_right_pin_opens_the_node_and_seals_round_trip(swtpm: Swtpm, tmp_path: Path) -> None:
    created = TpmBackend(tmp_path / "node", swtpm.tcti, PIN, create=True)
    blob = created.seal(b"fleet secrets")
    reopened = TpmBackend(tmp_path / "node", swtpm.tcti, PIN, create=False)
    assert reopened.unseal(blob) == b"fleet secrets"
    assert reopened.signing_public_key() == created.signing_public_key()
    message = b"a record to sign"
    VerifyKey(created.signing_public_key()).verify(reopened.sign(message), message)


def test_node_provisioned_before_pins_is_resealed_under_its_pin(
    swtpm: Swtpm, tmp_path: Path
) -> None:
    # The old layout: a saved primary context, objects sealed with no auth value.
    tpm_dir = tmp_path / "node" / "tpm"
    tpm_dir.mkdir(parents=True)
    wrapping, signing = random_bytes(32), SigningKey.generate()
    primary = str(tpm_dir / "primary.ctx")
    made = _tpm2(swtpm, "tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", primary)
    assert made.returncode == 0, made.stderr
    _flush(swtpm)
    for name, secret in (("wrap", wrapping), ("sign", signing.to_bytes())):
        created = _tpm2(
            swtpm,
            "tpm2_create",
            "-C",
            primary,
            "-i",
            "-",
            "-u",
            str(tpm_dir / f"{name}.pub"),
            "-r",
            str(tpm_dir / f"{name}.priv"),
            stdin=secret,
        )
        _flush(swtpm)
        assert created.returncode == 0, created.stderr
    nonce = random_bytes(12)
    old_blob = nonce + aead_seal(wrapping, nonce, b"old fleet", b"cipherline vault seal")

    # After a TPM reset the old primary.ctx is dead; the node must not need it.
    swtpm.restart()
    backend = TpmBackend(tmp_path / "node", swtpm.tcti, PIN, create=False)
    assert backend.unseal(old_blob) == b"old fleet"
    assert backend.signing_public_key() == signing.verify_key().to_bytes()
    assert sorted(p.name for p in tpm_dir.iterdir()) == [
        "node.json",
        "sign-v2.priv",
        "sign-v2.pub",
        "wrap-v2.priv",
        "wrap-v2.pub",
    ]
    assert backend.monotonic_counter() is not None
    with pytest.raises(BackendError, match="refused this node's PIN"):
        TpmBackend(tmp_path / "node", swtpm.tcti, "not the pin", create=False)
    assert TpmBackend(tmp_path / "node", swtpm.tcti, PIN, create=False).unseal(old_blob)
