"""Where a profile lives and which servers it talks to.

Nothing here is secret: the server config holds the relay's address, the CA that
the relay's certificate must chain to, and the vault fleet's public keys.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

APP_NAME = "cipherline"
HOME_ENV = "CIPHERLINE_HOME"
DEFAULT_PROFILE = "default"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class ConfigError(Exception):
    """A profile name or server config is unusable; the message says why."""


def data_root() -> Path:
    """`$CIPHERLINE_HOME` if set (tests, portable installs), else the platform's data dir."""
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override)
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


def validate_profile_name(name: str) -> str:
    if not _PROFILE_NAME.match(name):
        raise ConfigError(
            "a profile name is 1-32 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


def profile_dir(name: str = DEFAULT_PROFILE, root: Path | None = None) -> Path:
    return (root or data_root()) / "profiles" / validate_profile_name(name)


@dataclass(frozen=True)
class VaultNodeKey:
    """A vault node the client is willing to talk to, pinned by its public keys."""

    node: str
    hpke_public_key: str  # hex
    signing_public_key: str  # hex


@dataclass(frozen=True)
class ServerConfig:
    relay_url: str
    relay_ca_pem: str
    vault_nodes: tuple[VaultNodeKey, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "relay_url": self.relay_url,
                "relay_ca_pem": self.relay_ca_pem,
                "vault_nodes": [vars(node) for node in self.vault_nodes],
            },
            indent=2,
        )

    @staticmethod
    def from_json(text: str) -> ServerConfig:
        try:
            raw = json.loads(text)
            if raw.get("version") != 1:
                raise ConfigError(f"server config version {raw.get('version')!r} is not supported")
            return ServerConfig(
                relay_url=str(raw["relay_url"]).rstrip("/"),
                relay_ca_pem=str(raw["relay_ca_pem"]),
                vault_nodes=tuple(VaultNodeKey(**node) for node in raw.get("vault_nodes", [])),
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"server config is malformed: {error}") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @staticmethod
    def load(path: Path) -> ServerConfig:
        try:
            return ServerConfig.from_json(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no server config at {path}") from None


SERVER_CONFIG_NAME = "server.json"


def write_ca_file(profile: Path, config: ServerConfig) -> Path:
    """The relay CA as a file, because `requests` verifies against a path."""
    path = profile / "relay-ca.pem"
    if not path.exists() or path.read_text() != config.relay_ca_pem:
        profile.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(config.relay_ca_pem)
        os.replace(tmp, path)
    return path
