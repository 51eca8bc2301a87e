"""A node's provisioning record (`vault.json` in its data directory).

It names the backend and where to find it; it never holds a PIN, a key or a
password (the HSM PIN comes from the environment or a file given at start).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

BackendName = Literal["softhsm", "tpm", "soft"]
BACKENDS: tuple[BackendName, ...] = ("softhsm", "tpm", "soft")
CONFIG_NAME = "vault.json"
PIN_ENV = "CIPHERLINE_VAULT_HSM_PIN"


class ConfigError(Exception):
    """The node is not provisioned, or its provisioning record is unusable."""


@dataclass(frozen=True)
class NodeConfig:
    backend: BackendName
    node_name: str
    pkcs11_library: str | None = None
    token_label: str | None = None
    tpm_tcti: str | None = None
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


def read_pin(pin_file: Path | None) -> str:
    if pin_file is not None:
        return pin_file.read_text().strip()
    pin = os.environ.get(PIN_ENV)
    if not pin:
        raise ConfigError(f"the HSM PIN is needed: set {PIN_ENV} or pass --pin-file")
    return pin
