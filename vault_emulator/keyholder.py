"""The `memory` backend's keyholder: a node's keys held only in another process's memory.

`cipherline-vault keyholder --socket PATH` draws an AES-256-GCM wrapping key and
an Ed25519 signing key when it starts and keeps them in memory alone: no file, log
line, argument or environment variable ever holds them, and it asks the kernel to
keep them out of core dumps and away from other processes of the same user
(`ptrace`, `/proc/PID/mem`). A node on the `memory` backend asks it, over a UNIX
socket only its owner may open, to seal, unseal and sign. So the operator's disk
holds nothing that opens the node's sealed files, and nothing ever will again once
the keyholder exits: like an enclave without sealing, the domain does not survive
a restart of its keyholder (the split vault survives losing one domain).

Wire format, both ways: `u8 code || u32 length (big-endian) || length bytes`. A
request's code is its operation; an answer's is 0 (OK) or 1 (error, the body a
short UTF-8 reason). Payloads are at most `MAX_PAYLOAD` bytes. After a malformed
frame (too long, or cut short) the keyholder answers with an error and closes that
connection, as the framing is lost; an unknown operation or a blob that does not
open is answered with an error and the connection stays usable.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from app.crypto import (
    NONCE_LENGTH,
    AeadKey,
    DecryptionError,
    SigningKey,
    aead_open,
    aead_seal,
    random_bytes,
)

MAX_PAYLOAD = 1 << 20
HEADER = struct.Struct(">BI")
OP_SEAL = 1
OP_UNSEAL = 2
OP_SIGN = 3
OP_PUBLIC_KEY = 4
STATUS_OK = 0
STATUS_ERROR = 1
# A sealed answer is the payload plus a nonce and a tag; anything longer is not ours.
_MAX_ANSWER = MAX_PAYLOAD + 64
SEAL_AD = b"cipherline vault keyholder seal"
# A client that stops mid-request would otherwise hold a thread for good.
_READ_TIMEOUT = 10.0
_PR_SET_DUMPABLE = 4
# sun_path holds 108 bytes with its terminating NUL.
_MAX_SOCKET_PATH = 107


class KeyholderError(Exception):
    """The keyholder cannot start, cannot be reached, or refused a request."""


class KeyholderUnreachable(KeyholderError):
    """Nothing answers at the socket."""


class KeyholderRefused(KeyholderError):
    """The keyholder answered with an error (the reason is the message)."""


# --------------------------------------------------------------------------- the keys


class _Keys:
    def __init__(self) -> None:
        self._wrapping = AeadKey.generate()
        self._signing = SigningKey.generate()
        self.public_key = self._signing.verify_key().to_bytes()

    def answer(self, op: int, payload: bytes) -> tuple[int, bytes]:
        if op == OP_SEAL:
            nonce = random_bytes(NONCE_LENGTH)
            return STATUS_OK, nonce + aead_seal(self._wrapping, nonce, payload, SEAL_AD)
        if op == OP_UNSEAL:
            try:
                return STATUS_OK, aead_open(
                    self._wrapping, payload[:NONCE_LENGTH], payload[NONCE_LENGTH:], SEAL_AD
                )
            except DecryptionError:
                return STATUS_ERROR, b"the blob does not open under this keyholder's key"
        if op == OP_SIGN:
            return STATUS_OK, self._signing.sign(payload)
        if op == OP_PUBLIC_KEY:
            if payload:
                return STATUS_ERROR, b"public_key takes no payload"
            return STATUS_OK, self.public_key
        return STATUS_ERROR, f"unknown operation {op}".encode()


# --------------------------------------------------------------------------- addresses


@contextlib.contextmanager
def _socket_address(path: Path) -> Iterator[str]:
    """An address for `path` that fits in a sockaddr_un, valid inside the block.

    A data directory nested deep (a test's tmp dir, a long $CIPHERLINE_HOME) can
    make the path too long for AF_UNIX; the directory is then reached through
    /proc/self/fd, which the kernel resolves as it would the full path.
    """
    if len(os.fsencode(str(path))) <= _MAX_SOCKET_PATH:
        yield str(path)
        return
    if not sys.platform.startswith("linux"):
        raise KeyholderError(f"the socket path {path} is too long for a UNIX socket")
    try:
        directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise KeyholderUnreachable(f"cannot open {path.parent}: {error.strerror}") from None
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


# --------------------------------------------------------------------------- framing


def _receive(connection: socket.socket, count: int) -> bytes:
    """Up to `count` bytes: fewer only when the peer closed its side first."""
    chunks: list[bytes] = []
    remaining = count
    while remaining:
        chunk = connection.recv(min(remaining, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _frame(code: int, body: bytes) -> bytes:
    return HEADER.pack(code, len(body)) + body


class _Handler(socketserver.BaseRequestHandler):
    server: _KeyholderServer

    def handle(self) -> None:
        connection: socket.socket = self.request
        connection.settimeout(_READ_TIMEOUT)
        # Whatever a client sends or however it hangs up, only this connection ends.
        with contextlib.suppress(OSError):
            while self._serve_one(connection):
                pass

    def _serve_one(self, connection: socket.socket) -> bool:
        """Answer one request; False when the connection is done."""
        try:
            header = _receive(connection, HEADER.size)
            if not header:
                return False
            if len(header) < HEADER.size:
                return _refuse(connection, "truncated request header")
            op, length = HEADER.unpack(header)
            if length > MAX_PAYLOAD:
                return _refuse(connection, f"payload longer than {MAX_PAYLOAD} bytes")
            payload = _receive(connection, length)
        except TimeoutError:
            return _refuse(connection, "request not completed in time")
        if len(payload) < length:
            return _refuse(connection, "truncated request payload")
        status, body = self.server.keys.answer(op, payload)
        connection.sendall(_frame(status, body))
        return True


def _refuse(connection: socket.socket, reason: str) -> bool:
    """Answer with an error and end the connection, whose framing is lost."""
    connection.sendall(_frame(STATUS_ERROR, reason.encode()))
    connection.shutdown(socket.SHUT_WR)
    # Closing with unread bytes resets a UNIX socket, and the client would lose the
    # answer; so take what it still sends, within bounds, before closing.
    connection.settimeout(1.0)
    discarded = 0
    while discarded <= MAX_PAYLOAD:
        chunk = connection.recv(1 << 16)
        if not chunk:
            break
        discarded += len(chunk)
    return False


class _KeyholderServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, address: str, keys: _Keys) -> None:
        self.keys = keys
        super().__init__(address, _Handler)


# --------------------------------------------------------------------------- the process


def _keep_out_of_dumps() -> None:
    # A core file would put the keys on disk. Not dumpable also keeps the user's
    # other processes from ptrace and /proc/PID/mem, which would read them out.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            reason = os.strerror(ctypes.get_errno())
            raise KeyholderError(f"prctl(PR_SET_DUMPABLE) failed: {reason}")


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a keyholder that died; refuse anything else there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise KeyholderError(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, _socket_address(path) as at:
        probe.settimeout(2)
        try:
            probe.connect(at)
        except ConnectionRefusedError:
            path.unlink()
            return
        except OSError as error:
            raise KeyholderError(f"cannot tell whether {path} is in use: {error}") from None
    raise KeyholderError(f"a keyholder already listens at {path}")


def _bind(path: Path, keys: _Keys) -> _KeyholderServer:
    # The umask makes the socket 0600 from the moment it exists; the chmod after
    # only confirms it. Nothing but its owner may ask it to unseal.
    previous = os.umask(0o177)
    try:
        with _socket_address(path) as address:
            server = _KeyholderServer(address, keys)
    except OSError as error:
        raise KeyholderError(f"cannot listen at {path}: {error.strerror or error}") from None
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    return server


def serve(path: Path) -> int:
    """Run the keyholder at `path` until SIGTERM, SIGINT or SIGHUP; its keys die with it."""
    _keep_out_of_dumps()
    path = path.absolute()
    _clear_stale_socket(path)
    keys = _Keys()
    server = _bind(path, keys)
    bound = os.stat(path)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it cannot run on the
        # thread that is inside serve_forever (this one).
        threading.Thread(target=server.shutdown, daemon=True).start()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    print(f"keyholder: listening on {path}; signing public key {keys.public_key.hex()}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        # Only our own socket: another keyholder may have been started on the path.
        with contextlib.suppress(FileNotFoundError):
            current = os.stat(path)
            if (current.st_dev, current.st_ino) == (bound.st_dev, bound.st_ino):
                path.unlink()
    print("keyholder: stopped; the keys it held are gone", flush=True)
    return 0


# --------------------------------------------------------------------------- the client


class KeyholderClient:
    """Requests to a keyholder, one connection each (a node asks only while it starts)."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = path
        self._timeout = timeout

    def call(self, op: int, payload: bytes = b"") -> bytes:
        if len(payload) > MAX_PAYLOAD:
            raise KeyholderError(f"a keyholder request carries at most {MAX_PAYLOAD} bytes")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(self._timeout)
            try:
                with _socket_address(self.path) as address:
                    connection.connect(address)
            except (FileNotFoundError, ConnectionRefusedError):
                raise KeyholderUnreachable(f"no keyholder listens at {self.path}") from None
            except OSError as error:
                raise KeyholderUnreachable(
                    f"cannot reach the keyholder at {self.path}: {error.strerror or error}"
                ) from None
            try:
                connection.sendall(_frame(op, payload))
                header = _receive(connection, HEADER.size)
                if len(header) < HEADER.size:
                    raise KeyholderError("the keyholder closed the connection without answering")
                status, length = HEADER.unpack(header)
                if length > _MAX_ANSWER:
                    raise KeyholderError("the keyholder's answer is too long")
                body = _receive(connection, length)
            except OSError as error:
                raise KeyholderError(
                    f"the keyholder at {self.path} failed: {error.strerror or error}"
                ) from None
        if len(body) < length:
            raise KeyholderError("the keyholder's answer was cut short")
        if status != STATUS_OK:
            raise KeyholderRefused(body.decode("utf-8", errors="replace"))
        return body

    def seal(self, data: bytes) -> bytes:
        return self.call(OP_SEAL, data)

    def unseal(self, blob: bytes) -> bytes:
        return self.call(OP_UNSEAL, blob)

    def sign(self, message: bytes) -> bytes:
        return self.call(OP_SIGN, message)

    def public_key(self) -> bytes:
        key = self.call(OP_PUBLIC_KEY)
        if len(key) != 32:
            raise KeyholderError("the keyholder's public key is not 32 bytes")
        return key
