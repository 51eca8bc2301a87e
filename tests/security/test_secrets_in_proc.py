"""No PIN, passphrase or password in any running component's /proc environ or cmdline.

Any local user can read a process's command line, and the environment is readable by
the same user and inherited by every child. So every long-running component the
suite starts (the relay on PostgreSQL, vault nodes on SoftHSM2 and on swtpm, the
etcd cluster and a vault node using it) is searched, with all its descendants, for
every secret the suite gave it. The short-lived tpm2-tools children are checked as
they are started.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from app.crypto import Argon2Params
from tests.relay.conftest import fresh_database
from tests.support.components import (
    EtcdCluster,
    PostgresServer,
    RelayProcess,
    SoftHSMToken,
    Swtpm,
    VaultProcess,
)
from tests.support.processes import ManagedProcess
from vault_emulator import backends
from vault_emulator.config import ConfigError, read_pin


def _descendants(roots: Iterable[int]) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may itself hold spaces or parentheses.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _exposures(roots: Iterable[int], secrets: dict[str, str]) -> list[str]:
    """Where a secret shows in /proc/<pid>/{environ,cmdline}; also checks the roots were read."""
    leaks = []
    for pid in sorted(_descendants(roots)):
        for name in ("environ", "cmdline"):
            try:
                data = (Path("/proc") / str(pid) / name).read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue
            for label, secret in secrets.items():
                if secret.encode() in data:
                    leaks.append(f"{label} in /proc/{pid}/{name}")
    return leaks


def _cmdline(pid: int) -> list[str]:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")


def _tpm_derived(data_dir: Path, pin: str) -> dict[str, str]:
    """What a TPM node derives from its PIN, in the hex form tpm2-tools would get it."""
    kdf = json.loads((data_dir / "tpm" / "node.json").read_text())["kdf"]
    params = Argon2Params(
        time_cost=kdf["time_cost"],
        memory_cost_kib=kdf["memory_cost_kib"],
        parallelism=kdf["parallelism"],
    )
    keys = backends._pin_keys(pin, bytes.fromhex(kdf["salt"]), params)
    return {f"tpm {label}": value.hex() for label, value in keys.items()}


def _pid(process: ManagedProcess | None) -> int:
    assert process is not None
    assert not process.exited()
    return process.pid


def test_scanner_finds_a_secret_in_environ_and_cmdline(tmp_path: Path) -> None:
    process = ManagedProcess(
        [sys.executable, "-c", "import time; time.sleep(60)", "--token=cmdline-marker-1"],
        tmp_path / "marker.log",
        env={**os.environ, "MARKER": "environ-marker-2"},
    ).start()
    try:
        leaks = _exposures(
            [process.pid], {"one": "cmdline-marker-1", "two": "environ-marker-2", "no": "absent"}
        )
    finally:
        process.stop()
    assert sorted(leaks) == [
        f"one in /proc/{process.pid}/cmdline",
        f"two in /proc/{process.pid}/environ",
    ]


def test_no_secret_in_proc_of_relay_vault_nodes_swtpm_and_postgres(
    tmp_path: Path,
    relay_factory: Callable[..., RelayProcess],
    vault_factory: Callable[..., VaultProcess],
    softhsm_token: SoftHSMToken,
    swtpm: Swtpm,
    postgres_server: PostgresServer,
) -> None:
    relay = relay_factory(database_url=fresh_database(postgres_server))
    hsm_node = vault_factory("hsm-vault", backend="softhsm", token=softhsm_token)
    tpm_node = vault_factory("tpm-vault", backend="tpm", swtpm=swtpm)
    assert tpm_node.pin is not None
    assert tpm_node.pin != softhsm_token.pin
    secrets = {
        "HSM PIN": softhsm_token.pin,
        "HSM SO PIN": softhsm_token.so_pin,
        "TPM node PIN": tpm_node.pin,
        **_tpm_derived(tpm_node.data_dir, tpm_node.pin),
    }
    roots = [
        _pid(relay.process),
        _pid(hsm_node.process),
        _pid(tpm_node.process),
        _pid(swtpm.process),
        _pid(postgres_server.process),
    ]
    assert _exposures(roots, secrets) == []
    for node in (hsm_node, tpm_node):
        argv = _cmdline(_pid(node.process))
        assert argv[argv.index("--pin-file") + 1] == str(node.pin_file)
        assert node.pin_file.stat().st_mode & 0o777 == 0o600
    # The node is still usable: nothing above was vacuous because it failed to start.
    assert tpm_node.health()["backend"] == "tpm"


def test_no_secret_in_proc_of_etcd_and_the_vault_node_using_it(
    tmp_path: Path,
    etcd_cluster: EtcdCluster,
    vault_factory: Callable[..., VaultProcess],
    softhsm_token: SoftHSMToken,
) -> None:
    node = vault_factory(
        "etcd-vault",
        backend="softhsm",
        token=softhsm_token,
        extra_init=etcd_cluster.vault_client_args(),
    )
    secrets = {
        "HSM PIN": softhsm_token.pin,
        "HSM SO PIN": softhsm_token.so_pin,
        "etcd root password": etcd_cluster.root_password_file.read_text().strip(),
        "etcd vault password": etcd_cluster.vault_password_file.read_text().strip(),
    }
    roots = [_pid(node.process)] + [_pid(member.process) for member in etcd_cluster.members]
    assert _exposures(roots, secrets) == []


def test_tpm2_tools_get_no_secret_in_argv_or_environment(
    swtpm: Swtpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = "a PIN that must stay in memory"
    calls: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def recording_run(argv: list[str], **kwargs: Any) -> Any:
        calls.append((list(argv), dict(kwargs.get("env") or os.environ)))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording_run)
    backend = backends.TpmBackend(tmp_path / "node", swtpm.tcti, pin, create=True)
    backends.TpmBackend(tmp_path / "node", swtpm.tcti, pin, create=False)
    counter = backend.monotonic_counter()
    assert counter is not None
    counter.increment()

    secrets = {"PIN": pin, **_tpm_derived(tmp_path / "node", pin)}
    tools = {argv[0] for argv, _env in calls}
    assert {"tpm2_create", "tpm2_unseal", "tpm2_nvdefine", "tpm2_nvincrement"} <= tools
    for argv, env in calls:
        for label, secret in secrets.items():
            assert not any(secret in arg for arg in argv), (label, argv)
            assert not any(secret in value for value in env.values()), (label, argv[0])
        # Every auth value goes by descriptor.
        for flag, value in itertools.pairwise(argv):
            if flag in ("-p", "-P"):
                assert value.startswith("file:/dev/fd/"), argv


def test_pin_comes_only_from_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIPHERLINE_VAULT_HSM_PIN", "from the environment")
    with pytest.raises(ConfigError, match="--pin-file"):
        read_pin(None)
    pin_file = tmp_path / "pin"
    pin_file.write_text("1234-5678\n")
    for mode in (0o644, 0o640, 0o604, 0o660):
        pin_file.chmod(mode)
        with pytest.raises(ConfigError, match=f"readable by others \\(mode {mode:04o}\\)"):
            read_pin(pin_file)
    for mode in (0o600, 0o400):
        pin_file.chmod(mode)
        assert read_pin(pin_file) == "1234-5678"
    pin_file.chmod(0o600)
    pin_file.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_pin(pin_file)
