"""Creating and opening a profile's account: local store first, then the relay."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from app.config import SERVER_CONFIG_NAME, ServerConfig, write_ca_file
from app.crypto import RFC9106_SECOND_RECOMMENDED, Argon2Params
from app.net import Conflict, RelayClient, RelayError
from app.protocol.device_names import MAX_NAME_CHARACTERS, seal_device_name
from app.services.messenger import Messenger, ServiceError
from app.store import Account, KeyringProtector, PassphraseProtector, Protector, Store
from app.store.database import DB_FILE_NAME
from app.store.keyfile import KEY_FILE_NAME


@dataclass(frozen=True)
class Profile:
    path: Path
    config: ServerConfig

    @staticmethod
    def load(path: Path) -> Profile:
        return Profile(path, ServerConfig.load(path / SERVER_CONFIG_NAME))

    def relay(self, token: str | None = None, timeout: float = 10.0) -> RelayClient:
        return RelayClient(
            self.config.relay_url,
            write_ca_file(self.path, self.config),
            token=token,
            timeout=timeout,
        )


def protector_for(
    profile: Path, passphrase: str | None, kdf: Argon2Params = RFC9106_SECOND_RECOMMENDED
) -> Protector:
    if passphrase is None:
        return KeyringProtector(account=str(profile))
    return PassphraseProtector(passphrase, kdf)


def create_account(
    profile: Profile,
    username: str,
    device_name: str,
    passphrase: str | None,
    *,
    kdf: Argon2Params = RFC9106_SECOND_RECOMMENDED,
) -> Messenger:
    """Makes the encrypted store, registers with the relay and publishes keys.

    If the relay refuses (name taken, offline), the half-made store is removed so
    the user can simply try again.
    """
    if Store.exists(profile.path):
        raise ServiceError("this profile already has an account")
    name = device_name.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARACTERS:
        raise ServiceError(f"a device name is 1 to {MAX_NAME_CHARACTERS} characters")
    identity, prekeys = Messenger.prepare_account()
    store = Store.create(profile.path, protector_for(profile.path, passphrase, kdf))
    relay = profile.relay()
    try:
        # The relay gets the name sealed for this account's devices: it lists
        # devices to their owner and has no use for the text.
        registered = relay.register(username.strip(), seal_device_name(identity, name))
        relay.upload_keys(prekeys.upload_json(identity))
        prekeys.mark_published()
        with store.transaction():
            store.account.save(
                Account(
                    username=str(registered["username"]),
                    device_id=int(registered["device_id"]),
                    device_name=name,
                    relay_token=str(registered["token"]),
                    identity=identity.to_bytes(),
                    prekeys=prekeys.to_bytes(),
                ),
                now=int(time.time() * 1000),
            )
    except Conflict:
        _discard(store, profile.path)
        raise ServiceError(f"the username “{username}” is taken; choose another") from None
    except RelayError as error:
        _discard(store, profile.path)
        raise ServiceError(f"could not create the account: {error}") from None
    except BaseException:
        _discard(store, profile.path)
        raise
    finally:
        relay.close()
    return Messenger(store, profile.path)


def _discard(store: Store, path: Path) -> None:
    store.close()
    for name in (KEY_FILE_NAME, DB_FILE_NAME, DB_FILE_NAME + "-wal", DB_FILE_NAME + "-shm"):
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "attachments", ignore_errors=True)


def open_messenger(profile: Profile, passphrase: str | None) -> Messenger:
    store = Store.open(profile.path, protector_for(profile.path, passphrase))
    try:
        return Messenger(store, profile.path)
    except ServiceError:
        store.close()
        raise
