"""The relay's own CA and server certificate, made once in its data directory."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from app.crypto import generate_tls_material


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def ensure_tls_files(data_dir: Path, extra_hostnames: list[str] | None = None) -> TlsFiles:
    """Create `tls/ca.pem`, `tls/server.pem` and `tls/server.key` unless all exist.

    The CA's private key is never written: it signs the server certificate and is
    dropped, so a stolen data directory cannot mint certificates for other hosts.
    """
    tls_dir = data_dir / "tls"
    files = TlsFiles(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
    if files.ca_cert.exists() and files.server_cert.exists() and files.server_key.exists():
        return files
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    hostnames = ["localhost", socket.gethostname(), *(extra_hostnames or [])]
    material = generate_tls_material(sorted(set(hostnames)), ["127.0.0.1", "::1"])
    _write_atomically(files.server_key, material.server_key_pem, 0o600)
    _write_atomically(files.server_cert, material.server_cert_pem, 0o644)
    # The CA goes last: its presence marks the set as complete.
    _write_atomically(files.ca_cert, material.ca_cert_pem, 0o644)
    return files
