"""Where a profile lives and which servers it talks to.

Nothing here is secret: the server config holds the relay's address, the CA that
the relay's certificate must chain to, and the vault fleet's public keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

APP_NAME = "cipherline"
HOME_ENV = "CIPHERLINE_HOME"
DEFAULT_PROFILE = "default"
# Everything Cipherline writes is for the user alone, whatever the process umask:
# folders 0700, files 0600 (the umask can only take bits away, never add them).
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
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


def make_private_dir(path: Path) -> Path:
    """`path` and any missing parents, created 0700; `path` itself tightened to 0700
    when it already existed looser. Parents that already existed are left alone."""
    missing: list[Path] = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=PRIVATE_DIR_MODE)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    for folder in missing[1:]:
        if folder.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
            os.chmod(folder, PRIVATE_DIR_MODE)
    return path


def ensure_profile_dir(name: str = DEFAULT_PROFILE, root: Path | None = None) -> Path:
    """The profile folder, created if needed, with the data root and `profiles/`
    above it: all three 0700 (and tightened to it when an older version left them
    looser)."""
    root = root or data_root()
    profile = profile_dir(name, root)
    for folder in (root, root / "profiles", profile):
        make_private_dir(folder)
    return profile


def _write_private(path: Path, text: str) -> None:
    """Replaces `path` with `text` through a 0600 temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), PRIVATE_FILE_MODE)
        handle.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class VaultNodeKey:
    """A vault node the client is willing to talk to, pinned by its public keys."""

    node: str
    hpke_public_key: str  # hex
    signing_public_key: str  # hex


def _vault_domains(raw: list[list[dict[str, str]]]) -> tuple[tuple[VaultNodeKey, ...], ...]:
    domains = tuple(tuple(VaultNodeKey(**node) for node in domain) for domain in raw)
    if domains and (len(domains) != 3 or not all(domains)):
        raise ConfigError("a split vault has exactly three domains, each with a pinned node")
    return domains


@dataclass(frozen=True)
class ServerConfig:
    relay_url: str
    relay_ca_pem: str
    vault_nodes: tuple[VaultNodeKey, ...] = field(default_factory=tuple)
    # The relay's sender-certificate keys (Ed25519, hex), pinned as the CA is: a
    # sealed message's sender is believed only under a certificate one of them
    # signed. Empty: this client neither sends nor accepts sealed mail.
    sender_certificate_keys: tuple[str, ...] = field(default_factory=tuple)
    # The split vault's three domains (docs/vault-protocol.md, "The split vault"),
    # each a fleet pinned like `vault_nodes`; reached through the relay at
    # /v1/vault/domains/{1,2,3}/. Empty: password backups use `vault_nodes` alone.
    vault_domains: tuple[tuple[VaultNodeKey, ...], ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "relay_url": self.relay_url,
                "relay_ca_pem": self.relay_ca_pem,
                "vault_nodes": [vars(node) for node in self.vault_nodes],
                "sender_certificate_keys": list(self.sender_certificate_keys),
                "vault_domains": [[vars(node) for node in domain] for domain in self.vault_domains],
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
                sender_certificate_keys=tuple(
                    str(key) for key in raw.get("sender_certificate_keys", [])
                ),
                vault_domains=_vault_domains(raw.get("vault_domains", [])),
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"server config is malformed: {error}") from None

    def save(self, path: Path) -> None:
        if not path.parent.exists():
            make_private_dir(path.parent)
        _write_private(path, self.to_json())

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
        make_private_dir(profile)
        _write_private(path, config.relay_ca_pem)
    return path


ACCOUNT_NAME_FILE = "account.json"
_ACCOUNT_NAME = re.compile(r"^[a-z0-9_.-]{1,64}$")


def account_name(profile: Path) -> str | None:
    """The username this profile's store belongs to, for the unlock screen, which
    shows before the store (where the account lives) can be read; None when the
    profile has not been opened by a Cipherline that records it."""
    try:
        raw = json.loads((profile / ACCOUNT_NAME_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    name = raw.get("username") if isinstance(raw, dict) else None
    return name if isinstance(name, str) and _ACCOUNT_NAME.match(name) else None


def save_account_name(profile: Path, username: str) -> None:
    """Records the username beside the store. Not a secret: the relay and every
    contact know it, and the profile folder is often named after it anyway."""
    if account_name(profile) == username or not _ACCOUNT_NAME.match(username):
        return
    _write_private(profile / ACCOUNT_NAME_FILE, json.dumps({"version": 1, "username": username}))
