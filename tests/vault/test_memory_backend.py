"""The `memory` backend on real processes: a vault node whose keys live only in a
keyholder process (vault_emulator/keyholder.py), the split vault's third domain."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.crypto import (
    NONCE_LENGTH,
    CryptoError,
    DecryptionError,
    SigningKey,
    VerifyKey,
    aead_open,
)
from app.net.vault_transport import run_flow
from app.protocol import vault as protocol
from app.protocol.vault import WrongPassword
from tests.support.components import Keyholder
from tests.support.processes import ComponentError, free_port, python_env
from tests.vault.conftest import Fleet
from vault_emulator.backends import DOMAIN_LOST_MESSAGE, BackendError, MemoryBackend
from vault_emulator.cli import EXIT_DOMAIN_LOST
from vault_emulator.keyholder import (
    HEADER,
    MAX_PAYLOAD,
    OP_PUBLIC_KEY,
    OP_SEAL,
    OP_SIGN,
    OP_UNSEAL,
    SEAL_AD,
    STATUS_ERROR,
    STATUS_OK,
    KeyholderClient,
)

BACKUP_KEY = bytes(range(32))
PASSWORD = "correct horse battery"
# What a memory node's data dir holds after it registered a record and stopped:
# no key file, no PIN file, nothing else.
NODE_FILES = {
    "vault.json",
    "fleet.sealed",
    "records.sqlite3",
    "audit.log",
    "vault.log",
    "keyholder.log",
}
# SQLite's write-ahead log, there until a checkpoint folds it into the database.
SQLITE_SIDE_FILES = {"records.sqlite3-wal", "records.sqlite3-shm"}


def _register(fleet: Fleet) -> bytes:
    return run_flow(
        protocol.register(PASSWORD, BACKUP_KEY, fleet.key(), attempt_limit=10), fleet.transport
    )


def _retrieve(fleet: Fleet, record_id: bytes, password: str) -> bytes:
    return run_flow(protocol.retrieve(record_id, password, fleet.key()), fleet.transport)


def _vault_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vault_emulator", *args],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _files(directory: Path) -> dict[str, bytes]:
    """Every regular file under `directory`, as the operator would copy them."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def _exchange(path: Path, request: bytes) -> list[tuple[int, bytes]]:
    """Send raw bytes to the keyholder, then end our side; every answer frame it sends."""
    answers: list[tuple[int, bytes]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        connection.connect(str(path))
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
            while len(received) >= HEADER.size:
                status, length = HEADER.unpack(received[: HEADER.size])
                if len(received) < HEADER.size + length:
                    break
                answers.append((status, received[HEADER.size : HEADER.size + length]))
                received = received[HEADER.size + length :]
    return answers


def _request(op: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(op, len(payload)) + payload


@pytest.fixture
def keyholder(tmp_path: Path) -> Iterator[Keyholder]:
    directory = tmp_path / "keyholder"
    directory.mkdir(mode=0o700)
    started = Keyholder(directory / "keyholder.sock", directory / "keyholder.log").start()
    yield started
    started.stop()


def test_a_memory_node_registers_and_retrieves_and_its_keyholder_stops_with_it(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory(backend="memory")
    node = fleet.nodes[0]
    health = node.health()
    assert (health["backend"], health["insecure"]) == ("memory", False)
    assert node.keyholder is not None
    # The node signs its fleet entry with the keyholder's key; clients pin that key.
    assert fleet.pinned[0].signing_key == node.keyholder.public_key()

    record_id = _register(fleet)
    assert _retrieve(fleet, record_id, PASSWORD) == BACKUP_KEY
    with pytest.raises(WrongPassword) as wrong:
        _retrieve(fleet, record_id, "not the password")
    assert wrong.value.attempts_left == 9
    assert _retrieve(fleet, record_id, PASSWORD) == BACKUP_KEY
    # No PIN anywhere: nothing on the operator's disk is meant to open this node.
    assert node.pin is None and not node.pin_file.exists()

    node.stop()
    assert node.keyholder.process is not None and node.keyholder.process.exited()
    assert node.keyholder.process.popen is not None
    assert node.keyholder.process.popen.returncode == 0
    assert not node.keyholder.socket_path.exists()
    assert "the keys it held are gone" in node.keyholder.process.log_tail()


def _opens_with_any_window(blob: bytes, files: dict[str, bytes], old_public: bytes) -> list[str]:
    """Every way some 32 bytes of the files (raw or as hex) open the sealed fleet
    file or are the old keyholder's signing key; the empty list is the point."""
    found: list[str] = []
    nonce, ciphertext = blob[:NONCE_LENGTH], blob[NONCE_LENGTH:]
    for name, content in files.items():
        candidates = {content[i : i + 32] for i in range(max(0, len(content) - 31))}
        for match in re.finditer(rb"(?=([0-9a-fA-F]{64}))", content):
            candidates.add(bytes.fromhex(match.group(1).decode()))
        for candidate in candidates:
            with contextlib.suppress(DecryptionError):  # not the wrapping key
                aead_open(candidate, nonce, ciphertext, SEAL_AD)
                found.append(f"{name}: a wrapping key")
            with contextlib.suppress(CryptoError):  # not a signing key at all
                if SigningKey(candidate).verify_key().to_bytes() == old_public:
                    found.append(f"{name}: the signing key")
    return found


def test_the_operator_with_every_file_cannot_open_the_domain_once_its_keyholder_restarted(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = fleet_factory(backend="memory")
    node = fleet.nodes[0]
    assert node.keyholder is not None and node.keyholder.process is not None
    record_id = _register(fleet)
    old_public = node.keyholder.public_key()

    # A crash: no cleanup, so the keyholder leaves its socket file behind. The node
    # itself keeps serving from what it unsealed while it started.
    node.keyholder.kill()
    assert node.keyholder.socket_path.is_socket()
    assert _retrieve(fleet, record_id, PASSWORD) == BACKUP_KEY
    assert node.process is not None
    node.process.stop()

    copy = tmp_path / "operator-copy"
    shutil.copytree(node.data_dir, copy, ignore=shutil.ignore_patterns("keyholder.sock"))
    files = _files(copy)
    sealed = files["fleet.sealed"]
    assert _opens_with_any_window(sealed, files, old_public) == []

    fresh = Keyholder(node.keyholder.socket_path, node.data_dir / "keyholder.log").start()
    try:
        assert fresh.public_key() != old_public
        serve = _vault_cli("serve", "--data", str(node.data_dir), "--port", str(free_port()))
        assert serve.returncode == EXIT_DOMAIN_LOST
        assert serve.stderr.strip() == f"cipherline-vault: {DOMAIN_LOST_MESSAGE}"
        keys = _vault_cli("public-keys", "--data", str(node.data_dir))
        assert keys.returncode == EXIT_DOMAIN_LOST
        # The new keyholder, asked directly, does not open the sealed file either.
        with pytest.raises(BackendError, match="failed authentication"):
            MemoryBackend(fresh.socket_path, None).unseal(sealed)
        # Started as always, the node refuses the same way.
        with pytest.raises(ComponentError, match="keyholder's memory"):
            node.start(timeout=15)
        assert fresh.process is not None and not fresh.process.exited()
    finally:
        fresh.stop()


def test_the_socket_is_private_and_malformed_requests_are_answered_with_errors(
    keyholder: Keyholder,
) -> None:
    path = keyholder.socket_path
    mode = os.lstat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    public = keyholder.public_key()

    cases: list[tuple[bytes, str]] = [
        (b"\x01\x00", "truncated request header"),
        (HEADER.pack(OP_SEAL, 100) + b"x" * 10, "truncated request payload"),
        (HEADER.pack(OP_SEAL, MAX_PAYLOAD + 1), "longer than"),
        (HEADER.pack(OP_SIGN, 0xFFFFFFFF) + b"x" * 64, "longer than"),
        (_request(OP_UNSEAL, b"not a sealed blob at all"), "does not open"),
        (_request(OP_UNSEAL, b"short"), "does not open"),
        (_request(OP_PUBLIC_KEY, b"unexpected"), "no payload"),
        (_request(0), "unknown operation"),
        (_request(200, b"abc"), "unknown operation"),
    ]
    for request, reason in cases:
        answers = _exchange(path, request)
        assert len(answers) == 1, request[:8]
        status, body = answers[0]
        assert status == STATUS_ERROR and reason in body.decode(), (request[:8], body)

    # Errors that leave the framing whole leave the connection open too.
    answers = _exchange(
        path, _request(77, b"abc") + _request(OP_UNSEAL, bytes(40)) + _request(OP_PUBLIC_KEY)
    )
    assert [status for status, _ in answers] == [STATUS_ERROR, STATUS_ERROR, STATUS_OK]
    assert answers[2][1] == public

    # A client that stops halfway holds only its own connection.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(str(path))
        stalled.sendall(HEADER.pack(OP_SEAL, 1000)[:3])
        assert keyholder.public_key() == public

    client = KeyholderClient(path)
    blob = client.seal(b"a plaintext")
    assert client.unseal(blob) == b"a plaintext"
    VerifyKey(public).verify(client.sign(b"a message"), b"a message")
    assert keyholder.process is not None and not keyholder.process.exited()


def test_sigterm_removes_the_socket_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    socket_path = tmp_path / "keyholder.sock"
    first = Keyholder(socket_path, tmp_path / "keyholder.log").start()
    first.kill()
    assert socket_path.is_socket()
    second = Keyholder(socket_path, tmp_path / "keyholder.log").start()
    second.stop()
    assert second.process is not None and second.process.popen is not None
    assert second.process.popen.returncode == 0
    assert not socket_path.exists()


def test_a_socket_path_too_long_for_sockaddr_un_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("a-data-directory-nested-deep-" * 4) / "node"
    deep.mkdir(parents=True)
    socket_path = deep / "keyholder.sock"
    assert len(str(socket_path)) > 108
    keyholder = Keyholder(socket_path, deep / "keyholder.log").start()
    try:
        assert stat.S_IMODE(os.lstat(socket_path).st_mode) == 0o600
        client = KeyholderClient(socket_path)
        assert client.unseal(client.seal(b"far away")) == b"far away"
    finally:
        keyholder.stop()
    assert not socket_path.exists()


def test_the_keyholder_refuses_a_path_in_use_or_not_a_socket(
    keyholder: Keyholder, tmp_path: Path
) -> None:
    public = keyholder.public_key()
    taken = _vault_cli("keyholder", "--socket", str(keyholder.socket_path))
    assert taken.returncode == 2 and "already listens" in taken.stderr
    assert keyholder.public_key() == public

    not_a_socket = tmp_path / "precious.txt"
    not_a_socket.write_text("keep me")
    refused = _vault_cli("keyholder", "--socket", str(not_a_socket))
    assert refused.returncode == 2 and "not a socket" in refused.stderr
    assert not_a_socket.read_text() == "keep me"


def test_no_key_or_plaintext_reaches_the_data_dir(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory(backend="memory")
    node = fleet.nodes[0]
    assert node.keyholder is not None and node.keyholder.process is not None
    record_id = _register(fleet)
    assert _retrieve(fleet, record_id, PASSWORD) == BACKUP_KEY

    marker = b"a plaintext the keyholder seals for us " + os.urandom(16).hex().encode()
    backend = MemoryBackend(node.keyholder.socket_path, node.keyholder.public_key())
    blob = backend.seal(marker)
    assert marker not in blob and backend.unseal(blob) == marker

    # The kernel keeps the keyholder out of core dumps (it is not dumpable either).
    limits = Path(f"/proc/{node.keyholder.process.pid}/limits").read_text()
    assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.MULTILINE), limits

    public_hex = node.keyholder.public_key().hex()
    node.stop()
    files = _files(node.data_dir)
    assert NODE_FILES <= set(files) <= NODE_FILES | SQLITE_SIDE_FILES
    for name, content in files.items():
        assert marker not in content, name
        assert BACKUP_KEY not in content, name
    # The only 32-byte hex value the keyholder ever wrote is its public key.
    assert set(re.findall(r"[0-9a-f]{64}", files["keyholder.log"].decode())) == {public_hex}
    assert public_hex in files["vault.json"].decode()


def test_init_needs_a_running_keyholder(tmp_path: Path) -> None:
    result = _vault_cli(
        "init",
        "--backend",
        "memory",
        "--data",
        str(tmp_path / "node"),
        "--keyholder-socket",
        str(tmp_path / "nobody.sock"),
    )
    assert result.returncode == 2
    assert "no keyholder listens" in result.stderr
    assert not (tmp_path / "node" / "vault.json").exists()
    missing = _vault_cli("init", "--backend", "memory", "--data", str(tmp_path / "other"))
    assert missing.returncode == 2 and "--keyholder-socket" in missing.stderr
