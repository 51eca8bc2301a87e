"""Creating and opening a profile's account: local store first, then the relay."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.config import SERVER_CONFIG_NAME, ServerConfig, write_ca_file
from app.crypto import RFC9106_SECOND_RECOMMENDED, Argon2Params
from app.net import Conflict, RelayClient, RelayError
from app.protocol.device_list import DeviceListError, initial_device_list, open_device_list
from app.protocol.device_names import MAX_NAME_CHARACTERS, seal_device_name
from app.protocol.identity import DeviceIdentity, LocalPrekeys
from app.services.link_state import SyncStateError, import_sync_state
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
        now = int(time.time() * 1000)
        # The account's first device list (docs/protocol.md §13), published before
        # anyone can fetch the keys without it.
        device_id = int(registered["device_id"])
        device_list = initial_device_list(identity, device_id, now)
        relay.publish_device_list(device_list)
        with store.transaction():
            store.account.save(
                Account(
                    username=str(registered["username"]),
                    device_id=device_id,
                    device_name=name,
                    relay_token=str(registered["token"]),
                    identity=identity.to_bytes(),
                    prekeys=prekeys.to_bytes(),
                ),
                now=now,
            )
            store.device_lists.save(
                str(registered["username"]),
                identity.public.to_bytes(),
                1,
                device_list,
                now=now,
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


@dataclass(frozen=True)
class LinkedAccount:
    """What the existing device gave this one when it approved the link
    (app/protocol/linking.py's `Provision`, taken apart)."""

    username: str
    device_id: int
    device_name: str
    relay_token: str = field(repr=False)
    account_identity: bytes = field(repr=False)  # the account identity's private keys
    device_list: bytes = field(repr=False)  # the account's list naming this device
    sync_state: bytes = field(repr=False)  # app/services/link_state.py


def create_linked_account(
    profile: Profile,
    linked: LinkedAccount,
    identity: DeviceIdentity,
    prekeys: LocalPrekeys,
    passphrase: str | None,
    *,
    kdf: Argon2Params = RFC9106_SECOND_RECOMMENDED,
) -> Messenger:
    """Makes this device's store as a device linked to an existing account: its
    own device identity and prekeys (published now, with the token the existing
    device registered it under), the account identity, the account's device list
    naming it, and the account's contacts and groups. All or nothing: on any
    failure the half-made store is removed."""
    if Store.exists(profile.path):
        raise ServiceError("this profile already has an account")
    account_identity = DeviceIdentity.from_bytes(linked.account_identity)
    try:
        listed = open_device_list(linked.device_list, account_identity.public)
    except DeviceListError:
        raise ServiceError("the other device sent a device list that does not verify") from None
    named = listed.identity_of(linked.device_id)
    if named is None or named.to_bytes() != identity.public.to_bytes():
        raise ServiceError("the other device's list does not name this device")
    store = Store.create(profile.path, protector_for(profile.path, passphrase, kdf))
    relay = profile.relay(token=linked.relay_token)
    try:
        relay.upload_keys(prekeys.upload_json(identity))
        prekeys.mark_published()
        now = int(time.time() * 1000)
        with store.transaction():
            store.account.save(
                Account(
                    username=linked.username,
                    device_id=linked.device_id,
                    device_name=linked.device_name,
                    relay_token=linked.relay_token,
                    identity=identity.to_bytes(),
                    prekeys=prekeys.to_bytes(),
                ),
                now=now,
            )
            store.account.set_account_identity(linked.account_identity)
            store.device_lists.save(
                linked.username,
                account_identity.public.to_bytes(),
                listed.version,
                linked.device_list,
                now=now,
            )
            import_sync_state(store, linked.sync_state, now=now)
    except SyncStateError as error:
        _discard(store, profile.path)
        raise ServiceError(f"the other device sent an unreadable account state: {error}") from None
    except RelayError as error:
        _discard(store, profile.path)
        raise ServiceError(f"could not finish linking this device: {error}") from None
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
