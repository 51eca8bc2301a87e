"""Launchers for the real components Cipherline depends on."""

from __future__ import annotations

import base64
import functools
import glob
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support.processes import (
    ComponentError,
    ManagedProcess,
    free_consecutive_ports,
    free_port,
    free_ports,
    port_open,
    python_env,
    require_program,
    wait_until,
)

SOFTHSM_LIBRARY_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
)


def softhsm_library() -> str:
    for candidate in SOFTHSM_LIBRARY_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    raise ComponentError("libsofthsm2.so not found: apt-get install softhsm2")


# --------------------------------------------------------------------------- SoftHSM2


@dataclass
class SoftHSMToken:
    """A fresh SoftHSM2 token in its own directory, with its own SOFTHSM2_CONF."""

    directory: Path
    label: str = "cipherline-vault"
    pin: str = field(default_factory=lambda: secrets.token_hex(8))
    so_pin: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def conf_path(self) -> Path:
        return self.directory / "softhsm2.conf"

    @property
    def library(self) -> str:
        return softhsm_library()

    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf_path)}

    def create(self) -> SoftHSMToken:
        util = require_program("softhsm2-util", "softhsm2")
        tokens = self.directory / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(
            f"directories.tokendir = {tokens}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
        )
        result = subprocess.run(
            [
                util,
                "--init-token",
                "--free",
                "--label",
                self.label,
                "--pin",
                self.pin,
                "--so-pin",
                self.so_pin,
            ],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ComponentError(f"softhsm2-util --init-token failed: {result.stderr}")
        return self

    def __repr__(self) -> str:
        return f"SoftHSMToken({self.directory}, label={self.label!r}, pin=<hidden>)"


# --------------------------------------------------------------------------- swtpm


@dataclass
class Swtpm:
    """A TPM 2.0 simulator (swtpm) on two loopback TCP ports."""

    directory: Path
    port: int = 0
    ctrl_port: int = 0
    process: ManagedProcess | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> Swtpm:
        swtpm = require_program("swtpm", "swtpm")
        require_program("tpm2_getrandom", "tpm2-tools")
        state = self.directory / "state"
        state.mkdir(parents=True, exist_ok=True)
        if not self.port:
            # The swtpm TCTI finds the control channel at port + 1.
            self.port, self.ctrl_port = free_consecutive_ports()
        self.process = ManagedProcess(
            [
                swtpm,
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={state}",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={self.ctrl_port},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
            ],
            self.directory / "swtpm.log",
        ).start()
        wait_until(lambda: port_open(self.port), 15, "swtpm", self.process)
        return self

    def get_random(self, count: int = 8) -> bytes:
        result = subprocess.run(
            ["tpm2_getrandom", "-T", self.tcti, str(count)],
            capture_output=True,
            check=True,
            timeout=30,
        )
        return result.stdout

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


# --------------------------------------------------------------------------- etcd


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: ManagedProcess | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """A three-member (or n-member) etcd cluster on loopback."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.directory = directory
        ports = free_ports(size * 2)
        self.members = [
            EtcdMember(f"etcd{i}", ports[2 * i], ports[2 * i + 1], directory / f"etcd{i}")
            for i in range(size)
        ]
        self._token = "cipherline-" + secrets.token_hex(4)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _argv(self, member: EtcdMember, state: str) -> list[str]:
        etcd = require_program("etcd", "etcd-server")
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            etcd,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            member.client_url,
            "--advertise-client-urls",
            member.client_url,
            "--listen-peer-urls",
            member.peer_url,
            "--initial-advertise-peer-urls",
            member.peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self._token,
            # Short timers so tests see a new leader within a second of losing one.
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]

    def start(self) -> EtcdCluster:
        for member in self.members:
            member.process = ManagedProcess(
                self._argv(member, "new"), self.directory / f"{member.name}.log"
            ).start()
        for member in self.members:
            wait_until(
                functools.partial(self.member_healthy, member),
                30,
                f"etcd {member.name}",
                member.process,
            )
        return self

    def member_healthy(self, member: EtcdMember) -> bool:
        response = requests.get(f"{member.client_url}/health", timeout=1)
        return response.status_code == 200 and response.json().get("health") == "true"

    def stop_member(self, index: int) -> None:
        process = self.members[index].process
        if process is not None:
            process.kill()

    def restart_member(self, index: int) -> None:
        member = self.members[index]
        member.process = ManagedProcess(
            self._argv(member, "existing"), self.directory / f"{member.name}.log"
        ).start()
        wait_until(lambda: self.member_healthy(member), 30, f"etcd {member.name}", member.process)

    def _call(self, endpoint: int, path: str, body: dict[str, str]) -> dict[str, object]:
        """One KV call through the JSON gateway, retried while a new leader is elected."""
        deadline = time.monotonic() + 20
        while True:
            try:
                response = requests.post(
                    f"{self.members[endpoint].client_url}{path}", json=body, timeout=3
                )
                response.raise_for_status()
                result: dict[str, object] = response.json()
                return result
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def put(self, key: bytes, value: bytes, endpoint: int = 0) -> None:
        self._call(
            endpoint,
            "/v3/kv/put",
            {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()},
        )

    def get(self, key: bytes, endpoint: int = 0) -> bytes | None:
        result = self._call(endpoint, "/v3/kv/range", {"key": base64.b64encode(key).decode()})
        kvs = result.get("kvs") or []
        assert isinstance(kvs, list)
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    def stop(self) -> None:
        for member in self.members:
            if member.process is not None:
                member.process.stop()


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    return require_program(name, "postgresql")


class PostgresServer:
    """A throwaway PostgreSQL cluster: initdb into a temp dir, loopback only.

    When running as root, the cluster runs as the unprivileged `postgres` user
    (the server refuses to run as root), in a directory that user owns.
    """

    def __init__(self, database: str = "cipherline") -> None:
        self.database = database
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ComponentError(
                    "running as root needs the 'postgres' system user: apt-get install postgresql"
                ) from None
            self.user = "postgres"
        self.directory = Path(tempfile.mkdtemp(prefix="cipherline-pg-"))
        if self.user is not None:
            shutil.chown(self.directory, self.user, self.user)
        self.process: ManagedProcess | None = None

    @property
    def role(self) -> str:
        return self.user or pwd.getpwuid(os.geteuid()).pw_name

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> PostgresServer:
        data = self.directory / "data"
        subprocess.run(
            [
                _postgres_bin("initdb"),
                "-D",
                str(data),
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                self.role,
            ],
            check=True,
            capture_output=True,
            user=self.user,
            timeout=120,
        )
        self.process = ManagedProcess(
            [
                _postgres_bin("postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.directory),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            self.directory / "postgres.log",
            user=self.user,
        ).start()
        wait_until(lambda: port_open(self.port), 30, "postgres", self.process)
        createdb = _postgres_bin("createdb")
        wait_until(
            lambda: (
                subprocess.run(
                    [
                        createdb,
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(self.port),
                        "-U",
                        self.role,
                        self.database,
                    ],
                    capture_output=True,
                    user=self.user,
                    timeout=30,
                    check=False,
                ).returncode
                == 0
            ),
            30,
            "postgres createdb",
            self.process,
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------- Xvfb


class Xvfb:
    """A virtual X server for running the real app and taking screenshots."""

    def __init__(self, directory: Path, size: str = "1280x800x24") -> None:
        self.directory = directory
        self.size = size
        self.display = ""
        self.process: ManagedProcess | None = None

    def start(self) -> Xvfb:
        xvfb = require_program("Xvfb", "xvfb")
        read_fd, write_fd = os.pipe()
        self.process = ManagedProcess(
            [
                xvfb,
                "-displayfd",
                str(write_fd),
                "-screen",
                "0",
                self.size,
                "-nolisten",
                "tcp",
                "-noreset",
            ],
            self.directory / "xvfb.log",
            pass_fds=[write_fd],
        ).start()
        os.close(write_fd)
        with os.fdopen(read_fd) as reader:
            number = reader.readline().strip()
        if not number:
            raise ComponentError(f"Xvfb did not report a display\n{self.process.log_tail()}")
        self.display = f":{number}"
        return self

    def env(self) -> dict[str, str]:
        return {"DISPLAY": self.display, "QT_QPA_PLATFORM": "xcb"}

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# --------------------------------------------------------------------------- relay


class RelayProcess:
    """Our relay, as its own process, over HTTPS on a free loopback port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str | None = None,
        extra_args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.extra_args = extra_args or []
        self.port = port or free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def start(self, timeout: float = 30) -> RelayProcess:
        argv = [
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--data",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        if self.database_url:
            argv += ["--database", self.database_url]
        self.process = ManagedProcess(argv, self.data_dir / "relay.log", env=python_env()).start()
        wait_until(self.healthy, timeout, "relay", self.process)
        return self

    def healthy(self) -> bool:
        if not self.ca_file.exists():
            return False
        return requests.get(f"{self.url}/health", verify=str(self.ca_file), timeout=2).ok

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def restart(self) -> None:
        self.stop()
        self.start()


# --------------------------------------------------------------------------- vault


class VaultProcess:
    """One Backup Key Vault node, provisioned on a backend and served on loopback."""

    def __init__(
        self,
        data_dir: Path,
        *,
        backend: str = "softhsm",
        token: SoftHSMToken | None = None,
        swtpm: Swtpm | None = None,
        node_name: str = "node-1",
        extra_init: list[str] | None = None,
        extra_serve: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.backend = backend
        self.token = token
        self.swtpm = swtpm
        self.node_name = node_name
        self.extra_init = extra_init or []
        self.extra_serve = extra_serve or []
        self.port = port or free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        extra: dict[str, str] = {}
        if self.token is not None:
            extra.update(self.token.env())
            extra["CIPHERLINE_VAULT_HSM_PIN"] = self.token.pin
        return python_env(extra)

    def _backend_args(self) -> list[str]:
        if self.backend == "softhsm":
            if self.token is None:
                raise ComponentError("a softhsm vault node needs a SoftHSMToken")
            return ["--pkcs11-lib", self.token.library, "--token-label", self.token.label]
        if self.backend == "tpm":
            if self.swtpm is None:
                raise ComponentError("a tpm vault node needs a running Swtpm")
            return ["--tcti", self.swtpm.tcti]
        return ["--insecure-dev"]

    def provision(self) -> VaultProcess:
        argv = [
            sys.executable,
            "-m",
            "vault_emulator",
            "init",
            "--backend",
            self.backend,
            "--data",
            str(self.data_dir),
            "--node-name",
            self.node_name,
            *self._backend_args(),
            *self.extra_init,
        ]
        result = subprocess.run(
            argv, env=self._env(), capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise ComponentError(f"cipherline-vault init failed:\n{result.stdout}\n{result.stderr}")
        return self

    def start(self, timeout: float = 30) -> VaultProcess:
        argv = [
            sys.executable,
            "-m",
            "vault_emulator",
            "serve",
            "--data",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_serve,
        ]
        if self.backend == "soft":
            argv.append("--insecure-dev")
        self.process = ManagedProcess(argv, self.data_dir / "vault.log", env=self._env()).start()
        wait_until(self.healthy, timeout, f"vault {self.node_name}", self.process)
        return self

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/health", timeout=2).ok

    def _cli(self, *args: str) -> str:
        argv = [sys.executable, "-m", "vault_emulator", *args, "--data", str(self.data_dir)]
        if self.backend == "soft":
            argv.append("--insecure-dev")
        result = subprocess.run(
            argv, env=self._env(), capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise ComponentError(f"cipherline-vault {args[0]} failed:\n{result.stderr}")
        return result.stdout

    def public_keys(self) -> dict[str, str]:
        """What a client pins for this node (ServerConfig.vault_nodes entry)."""
        keys: dict[str, str] = json.loads(self._cli("public-keys"))
        return keys

    def export_fleet(self, out: Path, passphrase_file: Path) -> Path:
        self._cli("export-fleet", "--out", str(out), "--passphrase-file", str(passphrase_file))
        return out

    def health(self) -> dict[str, object]:
        body: dict[str, object] = requests.get(f"{self.url}/health", timeout=5).json()
        return body

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


def dump_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2))
