"""Which relay a restored profile talks to (issue #20).

A profile's server config (`server.json`: the relay's URL, the CA its certificate
must chain to, the vault nodes' and the sender-certificate public keys) lives
beside the store, not in it, so a backup of the store alone used to restore into a
profile that could not connect. A restore now leaves a `server.json` (and the CA
file beside it) in the profile, taken from the first of:

1. the config the user chose for the restore (`cipherline backup restore
   --server-config PATH`; the restore wizard passes its own profile's);
2. the `server.json` the profile folder already holds (a profile started with
   `--server-config`, as `make run` does, before restoring into it);
3. the config recorded in the backup. At backup time the profile's server config
   is copied into the store's `settings` table under `SETTING`; the table travels
   in every backup format as part of the database, and a Cipherline that does not
   know the setting ignores it. Everything in it is public (docs/backup-format.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from app.config import SERVER_CONFIG_NAME, ConfigError, ServerConfig, write_ca_file
from app.store import Protector, Store

SETTING = "backup.server_config"


def _value(config: ServerConfig) -> dict[str, object]:
    value: dict[str, object] = json.loads(config.to_json())
    return value


def record(store: Store, profile: Path) -> ServerConfig | None:
    """Copies `profile`'s server config into `store`, so the next backup carries it;
    a no-op when it is already there or the profile has none (or a malformed one)."""
    try:
        config = ServerConfig.load(profile / SERVER_CONFIG_NAME)
    except (ConfigError, OSError):
        return None
    value = _value(config)
    if store.settings.get(SETTING) != value:
        with store.transaction():
            store.settings.set(SETTING, value)
    return config


def recorded(store: Store) -> ServerConfig | None:
    """The server config a backup recorded in this store, or None (an older backup,
    or one whose value this Cipherline cannot read)."""
    value = store.settings.get(SETTING)
    if not isinstance(value, dict):
        return None
    try:
        return ServerConfig.from_json(json.dumps(value))
    except ConfigError:
        return None


def install_after_restore(
    profile: Path, protector: Protector, chosen: ServerConfig | None
) -> ServerConfig | None:
    """Writes the restored profile's `server.json` and relay CA file, by the order in
    the module's docstring; returns the config installed, or None when there is
    none to install (an old backup restored with no config chosen)."""
    path = profile / SERVER_CONFIG_NAME
    config = chosen
    if config is None:
        try:
            existing: ServerConfig | None = ServerConfig.load(path)
        except (ConfigError, OSError):
            existing = None
        if existing is not None:
            write_ca_file(profile, existing)
            return existing
        store = Store.open(profile, protector)
        try:
            config = recorded(store)
        finally:
            store.close()
        if config is None:
            return None
    config.save(path)
    write_ca_file(profile, config)
    return config
