"""A node's provisioning record (`vault.json` in its data directory).

It names the backend and where to find it; it never holds a PIN, a private key
or a password (a `memory` node records its keyholder's public key, to tell a
restarted keyholder from a damaged file). The node's PIN (the HSM's, or the one
the TPM's sealed objects need) comes from a file given at start that only its
owner may read: never from the environment or a command line, where other
processes can see it in /proc.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

BackendName = Literal["softhsm", "tpm", "memory", "soft"]
BACKENDS: tuple[BackendName, ...] = ("softhsm", "tpm", "memory", "soft")
CONFIG_NAME = "vault.json"


class ConfigError(Exception):
    """The node is not provisioned, or its provisioning record is unusable."""


@dataclass(frozen=True)
class NodeConfig:
    backend: BackendName
    node_name: str
    pkcs11_library: str | None = None
    token_label: str | None = None
    tpm_tcti: str | None = None
    keyholder_socket: str | None = None
    keyholder_public_key: str | None = None  # hex
    extra: dict[str, str] = field(default_factory=dict)

    def save(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, data_dir / CONFIG_NAME)

    @staticmethod
    def load(data_dir: Path) -> NodeConfig:
        path = data_dir / CONFIG_NAME
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{data_dir} is not provisioned: run `cipherline-vault init` first"
            ) from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
        if raw.get("backend") not in BACKENDS:
            raise ConfigError(f"{path}: unknown backend {raw.get('backend')!r}")
        return NodeConfig(**raw)


def read_secret_file(path: Path, what: str) -> str:
    """The secret in `path` (a PIN, a passphrase, a password), refusing a file that
    anyone but its owner can read: secrets reach the vault only this way, never on
    a command line or in the environment, where other processes can read them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise ConfigError(f"cannot open the {what} file {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        # fstat on the open file, not stat on the path: the file checked is the file read.
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the {what} file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"the {what} file {path} is readable by others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
            )
        try:
            secret = handle.read().decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"the {what} file {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"the {what} file {path} is empty")
    return secret


def read_pin(pin_file: Path | None) -> str:
    if pin_file is None:
        raise ConfigError("this node's PIN is needed: pass --pin-file (a file of mode 0600)")
    return read_secret_file(pin_file, "PIN")
