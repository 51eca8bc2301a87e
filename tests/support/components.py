"""Launchers for the real components Cipherline depends on."""

from __future__ import annotations

import base64
import datetime
import functools
import glob
import ipaddress
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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
from vault_emulator.etcd import EtcdClient
from vault_emulator.keyholder import KeyholderClient, KeyholderError

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
        # softhsm2-util takes PINs only as arguments or typed at a terminal, so this
        # short setup step is the one place they show in /proc; no long-running
        # component gets them that way.
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

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def start(self) -> Swtpm:
        swtpm = require_program("swtpm", "swtpm")
        require_program("tpm2_getrandom", "tpm2-tools")
        state = self.state_dir
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

    def restart(self) -> Swtpm:
        """Stop, then start on the same state and ports: a TPM reset, as a reboot is
        (startup-clear drops every loaded object and invalidates saved contexts)."""
        self.stop()
        return self.start()

    def copy_state(self, directory: Path) -> Swtpm:
        """A new Swtpm, not started, on a copy of this one's state, as a thief would run it.

        Stop this one first for a consistent copy: swtpm rewrites its state files in place.
        """
        shutil.copytree(self.state_dir, directory / "state")
        return Swtpm(directory)

    def stop(self) -> None:
        """An orderly power-down, as an OS does before a reboot (`kill` is the crash)."""
        if self.process is not None and not self.process.exited():
            # Without TPM2_Shutdown first, the next startup counts any use of a
            # DA-protected object since the last one as a failed authorisation, and
            # swtpm locks out after three.
            subprocess.run(
                ["tpm2_shutdown", "-T", self.tcti],
                capture_output=True,
                timeout=30,
                check=False,
            )
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


# --------------------------------------------------------------------------- etcd

VAULT_ETCD_USER = "cipherline-vault"
VAULT_ETCD_PREFIX = b"/cipherline/vault/"


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def write_private(path: Path, data: bytes) -> None:
    """A secret for a component to read: mode 0600, as the vault demands."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        # O_CREAT's mode does not apply to a file that already exists.
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class _EtcdCA:
    """The cluster's private CA; its key lives only in memory while it signs."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Cipherline test etcd CA")])
        self.now = datetime.datetime.now(datetime.UTC)
        self.cert = self._builder(self.name, self.key.public_key(), ca=True).sign(
            self.key, hashes.SHA256()
        )

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, *, ca: bool
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(minutes=5))
            .not_valid_after(self.now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def issue(
        self, subject: x509.Name, *, server: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        # A member's certificate is also a client certificate: members dial each
        # other with it, and each member's gateway dials its own gRPC port with it.
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = self._builder(subject, key.public_key(), ca=False).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
            critical=False,
        )
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def _client_subject(role: str) -> x509.Name:
    # No CommonName: etcd 3.4's gateway refuses any client certificate that has one
    # once auth is on, and without one a certificate never stands in for a user's
    # password on the gRPC port either. Who it is for goes in the OU.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cipherline tests"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: ManagedProcess | None = None

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """A three-member (or n-member) etcd cluster on loopback, secured as in production.

    Clients and peers speak mutual TLS under the cluster's own CA; auth is on, with
    `root` (the operator, whose token `put`/`get` use) and `cipherline-vault`, whose
    role may read and write only under `/cipherline/vault/`. Keys, certificates and
    passwords are 0600 files in `directory`; no password is ever on a command line.
    """

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.directory = directory
        ports = free_ports(size * 2)
        self.members = [
            EtcdMember(f"etcd{i}", ports[2 * i], ports[2 * i + 1], directory / f"etcd{i}")
            for i in range(size)
        ]
        self._token = "cipherline-" + secrets.token_hex(4)
        self._root_token: str | None = None
        self._admin: requests.Session | None = None

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def tls_dir(self) -> Path:
        return self.directory / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def vault_cert_file(self) -> Path:
        return self.tls_dir / "vault.pem"

    @property
    def vault_key_file(self) -> Path:
        return self.tls_dir / "vault-key.pem"

    @property
    def admin_cert_file(self) -> Path:
        return self.tls_dir / "admin.pem"

    @property
    def admin_key_file(self) -> Path:
        return self.tls_dir / "admin-key.pem"

    @property
    def root_password_file(self) -> Path:
        return self.directory / "root.password"

    @property
    def vault_password_file(self) -> Path:
        return self.directory / "vault.password"

    def _member_cert(self, member: EtcdMember) -> tuple[Path, Path]:
        return self.tls_dir / f"{member.name}.pem", self.tls_dir / f"{member.name}-key.pem"

    def _write_tls(self) -> None:
        self.tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = _EtcdCA()
        pem = serialization.Encoding.PEM
        write_private(self.ca_file, ca.cert.public_bytes(pem))
        for member in self.members:
            cert, key = ca.issue(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{member.name}.etcd.test")]),
                server=True,
            )
            cert_path, key_path = self._member_cert(member)
            write_private(cert_path, cert.public_bytes(pem))
            write_private(key_path, _pem_key(key))
        for role, cert_path, key_path in (
            (VAULT_ETCD_USER, self.vault_cert_file, self.vault_key_file),
            ("operator", self.admin_cert_file, self.admin_key_file),
        ):
            cert, key = ca.issue(_client_subject(role), server=False)
            write_private(cert_path, cert.public_bytes(pem))
            write_private(key_path, _pem_key(key))
        # Signed tokens, so that every member (a restarted one too) accepts a token
        # another member issued; etcd's "simple" tokens live in members' memory.
        signer = ec.generate_private_key(ec.SECP256R1())
        write_private(self.tls_dir / "jwt-key.pem", _pem_key(signer))
        write_private(
            self.tls_dir / "jwt.pem",
            signer.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
        )

    def _argv(self, member: EtcdMember, state: str) -> list[str]:
        etcd = require_program("etcd", "etcd-server")
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        cert, key = self._member_cert(member)
        jwt = (
            f"jwt,pub-key={self.tls_dir / 'jwt.pem'},priv-key={self.tls_dir / 'jwt-key.pem'},"
            "sign-method=ES256,ttl=10m"
        )
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
            "--cert-file",
            str(cert),
            "--key-file",
            str(key),
            "--client-cert-auth",
            "--trusted-ca-file",
            str(self.ca_file),
            "--peer-cert-file",
            str(cert),
            "--peer-key-file",
            str(key),
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            str(self.ca_file),
            "--auth-token",
            jwt,
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
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write_tls()
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
        self._enable_auth()
        return self

    def _session(self) -> requests.Session:
        """The operator's TLS session (admin client certificate, the cluster's CA)."""
        if self._admin is None:
            session = requests.Session()
            # REQUESTS_CA_BUNDLE in the environment would otherwise replace our CA.
            session.trust_env = False
            session.verify = str(self.ca_file)
            session.cert = (str(self.admin_cert_file), str(self.admin_key_file))
            self._admin = session
        return self._admin

    def _enable_auth(self) -> None:
        """Users, the vault's role and auth on, through member 0 before anyone else connects."""
        root_password = secrets.token_urlsafe(24)
        vault_password = secrets.token_urlsafe(24)
        write_private(self.root_password_file, root_password.encode())
        write_private(self.vault_password_file, vault_password.encode())
        prefix = base64.b64encode(VAULT_ETCD_PREFIX).decode()
        prefix_end = base64.b64encode(_prefix_end(VAULT_ETCD_PREFIX)).decode()
        steps: list[tuple[str, dict[str, object]]] = [
            ("/v3/auth/user/add", {"name": "root", "password": root_password}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/user/add", {"name": VAULT_ETCD_USER, "password": vault_password}),
            ("/v3/auth/role/add", {"name": VAULT_ETCD_USER}),
            (
                "/v3/auth/role/grant",
                {
                    "name": VAULT_ETCD_USER,
                    "perm": {"permType": "READWRITE", "key": prefix, "range_end": prefix_end},
                },
            ),
            ("/v3/auth/user/grant", {"user": VAULT_ETCD_USER, "role": VAULT_ETCD_USER}),
            ("/v3/auth/enable", {}),
        ]
        for path, body in steps:
            response = self._session().post(
                f"{self.members[0].client_url}{path}", json=body, timeout=10
            )
            if response.status_code != 200:
                # The body names the step's failure; the request (with a password) is not echoed.
                raise ComponentError(f"etcd {path} failed: {response.status_code} {response.text}")

    def vault_client_args(self) -> list[str]:
        """`cipherline-vault init` flags for a node that uses this cluster as the vault user."""
        args: list[str] = []
        for endpoint in self.endpoints:
            args += ["--cluster", endpoint]
        return [
            *args,
            "--etcd-ca",
            str(self.ca_file),
            "--etcd-cert",
            str(self.vault_cert_file),
            "--etcd-key",
            str(self.vault_key_file),
            "--etcd-user",
            VAULT_ETCD_USER,
            "--etcd-password-file",
            str(self.vault_password_file),
        ]

    def vault_client(self) -> EtcdClient:
        """The client a vault node builds from `vault_client_args()`."""
        return EtcdClient(
            self.endpoints,
            ca_file=self.ca_file,
            cert_file=self.vault_cert_file,
            key_file=self.vault_key_file,
            user=VAULT_ETCD_USER,
            password_file=self.vault_password_file,
        )

    def member_healthy(self, member: EtcdMember) -> bool:
        response = self._session().get(f"{member.client_url}/health", timeout=1)
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

    def stop_all(self) -> None:
        """Every member shut down in order (as before taking a file-level snapshot)."""
        for member in self.members:
            if member.process is not None:
                member.process.stop()

    def start_all(self) -> None:
        """Every member started again on its data directory; waits for a quorum."""
        for member in self.members:
            member.process = ManagedProcess(
                self._argv(member, "existing"), self.directory / f"{member.name}.log"
            ).start()
        for member in self.members:
            wait_until(
                functools.partial(self.member_healthy, member),
                30,
                f"etcd {member.name}",
                member.process,
            )

    def save_data(self, destination: Path) -> None:
        """The operator's snapshot: a copy of every member's data (members stopped)."""
        for member in self.members:
            shutil.copytree(member.data_dir, destination / member.name)

    def restore_data(self, source: Path) -> None:
        """The operator's rollback: every member's data put back (members stopped)."""
        for member in self.members:
            shutil.rmtree(member.data_dir)
            shutil.copytree(source / member.name, member.data_dir)

    def _root_authenticate(self, endpoint: int) -> str:
        response = self._session().post(
            f"{self.members[endpoint].client_url}/v3/auth/authenticate",
            json={"name": "root", "password": self.root_password_file.read_text()},
            timeout=3,
        )
        response.raise_for_status()
        token: str = response.json()["token"]
        return token

    def _call(self, endpoint: int, path: str, body: dict[str, str]) -> dict[str, object]:
        """One KV call as root through the JSON gateway, retried while a leader is elected."""
        deadline = time.monotonic() + 20
        while True:
            try:
                if self._root_token is None:
                    self._root_token = self._root_authenticate(endpoint)
                response = self._session().post(
                    f"{self.members[endpoint].client_url}{path}",
                    json=body,
                    headers={"Authorization": self._root_token},
                    timeout=3,
                )
                if response.status_code == 401 or "auth store is old" in response.text:
                    # Expired, or issued before the last change to users and roles.
                    self._root_token = None
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

    def delete(self, key: bytes, endpoint: int = 0) -> None:
        self._call(endpoint, "/v3/kv/deleterange", {"key": base64.b64encode(key).decode()})

    def stop(self) -> None:
        for member in self.members:
            if member.process is not None:
                member.process.stop()
        if self._admin is not None:
            self._admin.close()


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

    @property
    def sender_certificate_key(self) -> str:
        """The relay's sender-certificate key (hex), for a client's server config."""
        return (self.data_dir / "tls" / "sender-certificate.pub").read_text().strip()

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


@dataclass
class Keyholder:
    """A `memory` vault node's keyholder (vault_emulator/keyholder.py): its keys
    exist only in this process, so stopping it loses them for good."""

    socket_path: Path
    log_path: Path
    process: ManagedProcess | None = None

    def public_key(self) -> bytes:
        """The keyholder's signing key, which also tells one keyholder from the next."""
        try:
            return KeyholderClient(self.socket_path, timeout=2).public_key()
        except KeyholderError as error:
            raise ComponentError(f"keyholder at {self.socket_path}: {error}") from None

    def answering(self) -> bool:
        try:
            self.public_key()
        except ComponentError:
            return False
        return True

    def start(self, timeout: float = 15) -> Keyholder:
        argv = [sys.executable, "-m", "vault_emulator", "keyholder", "--socket"]
        self.process = ManagedProcess(
            [*argv, str(self.socket_path)], self.log_path, env=python_env()
        ).start()
        wait_until(self.answering, timeout, "keyholder", self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


class VaultProcess:
    """One Backup Key Vault node, provisioned on a backend and served on loopback.

    Its PIN (the token's for softhsm; for tpm the given one, the one already in
    `pin_file`, or a fresh random one) reaches every command through `--pin-file`, a
    0600 file beside the data dir by default: never the environment or a command line.

    A `memory` node has no PIN; it needs a keyholder answering at
    `data_dir/keyholder.sock`, and starts one there (which `stop` and `kill` end)
    when none answers.
    """

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
        pin: str | None = None,
        pin_file: Path | None = None,
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
        self.pin_file = pin_file or data_dir.parent / f"{data_dir.name}.pin"
        self.pin: str | None = None
        self.keyholder: Keyholder | None = None
        if backend == "memory":
            self.keyholder = Keyholder(data_dir / "keyholder.sock", data_dir / "keyholder.log")
        elif backend != "soft":
            if pin is None and token is not None:
                pin = token.pin
            if pin is None and self.pin_file.exists():
                pin = self.pin_file.read_text().strip()
            self.pin = pin or secrets.token_hex(16)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return python_env(self.token.env() if self.token is not None else None)

    def _pin_args(self) -> list[str]:
        if self.pin is None:
            return []
        if (
            not self.pin_file.exists()
            or self.pin_file.stat().st_mode & 0o077
            or self.pin_file.read_text().strip() != self.pin
        ):
            self.pin_file.parent.mkdir(parents=True, exist_ok=True)
            write_private(self.pin_file, self.pin.encode())
        return ["--pin-file", str(self.pin_file)]

    def _backend_args(self) -> list[str]:
        if self.backend == "softhsm":
            if self.token is None:
                raise ComponentError("a softhsm vault node needs a SoftHSMToken")
            return ["--pkcs11-lib", self.token.library, "--token-label", self.token.label]
        if self.backend == "tpm":
            if self.swtpm is None:
                raise ComponentError("a tpm vault node needs a running Swtpm")
            return ["--tcti", self.swtpm.tcti]
        if self.keyholder is not None:
            return ["--keyholder-socket", str(self.keyholder.socket_path)]
        return ["--insecure-dev"]

    def ensure_keyholder(self) -> None:
        """A memory node's keyholder, started unless one already answers."""
        if self.keyholder is None or self.keyholder.answering():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keyholder.start()

    def provision(self) -> VaultProcess:
        self.ensure_keyholder()
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
            *self._pin_args(),
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
            *self._pin_args(),
            *self.extra_serve,
        ]
        if self.backend == "soft":
            argv.append("--insecure-dev")
        self.ensure_keyholder()
        self.process = ManagedProcess(argv, self.data_dir / "vault.log", env=self._env()).start()
        wait_until(self.healthy, timeout, f"vault {self.node_name}", self.process)
        return self

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/health", timeout=2).ok

    def _cli(self, *args: str) -> str:
        argv = [sys.executable, "-m", "vault_emulator", *args, "--data", str(self.data_dir)]
        argv += self._pin_args()
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
        if self.keyholder is not None:
            self.keyholder.stop()

    def restart(self, extra_serve: list[str]) -> VaultProcess:
        """Serves again with other arguments; the keyholder (a memory node's keys)
        keeps running."""
        if self.process is not None:
            self.process.stop()
        self.extra_serve = extra_serve
        return self.start()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
        if self.keyholder is not None:
            self.keyholder.kill()


def dump_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2))
