"""Creating and opening a profile's account: local store first, then the relay."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.config import SERVER_CONFIG_NAME, ServerConfig, write_ca_file
from app.crypto import RFC9106_SECOND_RECOMMENDED, Argon2Params
from app.net import Conflict, NotFound, RelayClient, RelayError
from app.protocol.device_list import (
    DeviceList,
    DeviceListError,
    initial_device_list,
    open_device_list,
)
from app.protocol.device_names import MAX_NAME_CHARACTERS, seal_device_name
from app.protocol.identity import DeviceIdentity, LocalPrekeys
from app.services.devices import DeviceLists
from app.services.link_state import SyncStateError, import_sync_state
from app.services.messenger import Messenger, ServiceError
from app.store import Account, KeyringProtector, PassphraseProtector, Protector, Store
from app.store.database import (
    DB_FILE_NAME,
    RESTORED_ADD,
    RESTORED_DEVICE_SETTING,
    RESTORED_TAKE_OVER,
)
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
            _save_device(
                store,
                Account(
                    username=str(registered["username"]),
                    device_id=device_id,
                    device_name=name,
                    relay_token=str(registered["token"]),
                    identity=identity.to_bytes(),
                    prekeys=prekeys.to_bytes(),
                ),
                open_device_list(device_list, identity.public),
                account_identity=None,
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
            _save_device(
                store,
                Account(
                    username=linked.username,
                    device_id=linked.device_id,
                    device_name=linked.device_name,
                    relay_token=linked.relay_token,
                    identity=identity.to_bytes(),
                    prekeys=prekeys.to_bytes(),
                ),
                listed,
                account_identity=linked.account_identity,
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


def _save_device(
    store: Store,
    account: Account,
    device_list: DeviceList | None,
    *,
    account_identity: bytes | None,
    now: int,
) -> None:
    """This device's account row, the account identity's keys where they are not
    this device's own (None: they are), and the account's list naming this device."""
    store.account.save(account, now=now)
    store.account.set_account_identity(account_identity)
    if device_list is not None:
        store.device_lists.save(
            account.username,
            device_list.account.to_bytes(),
            device_list.version,
            device_list.signed,
            now=now,
        )


def _discard(store: Store, path: Path) -> None:
    store.close()
    for name in (KEY_FILE_NAME, DB_FILE_NAME, DB_FILE_NAME + "-wal", DB_FILE_NAME + "-shm"):
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "attachments", ignore_errors=True)


def open_messenger(
    profile: Profile, passphrase: str | None, *, take_over: bool | None = None
) -> Messenger:
    """Opens the profile; a fresh restore first becomes a device of its own
    (`settle_restored_device`), taking the original's place if `take_over` (the
    user's answer at the end of the restore; None: as chosen before, or added)."""
    store = Store.open(profile.path, protector_for(profile.path, passphrase))
    try:
        if take_over is not None:
            choose_restored_device(store, take_over=take_over)
        settle_restored_device(profile, store)
        return Messenger(store, profile.path)
    except ServiceError:
        store.close()
        raise


def choose_restored_device(store: Store, *, take_over: bool) -> None:
    """The user's answer at the end of a restore (docs/protocol.md §13, "Restore"):
    take the original device's place, or become a device of the account beside it."""
    with store.transaction():
        if store.settings.get(RESTORED_DEVICE_SETTING) is not None:
            store.settings.set(
                RESTORED_DEVICE_SETTING, RESTORED_TAKE_OVER if take_over else RESTORED_ADD
            )


def settle_restored_device(profile: Profile, store: Store) -> None:
    """A profile restored from a backup holds the original device's id, token and
    keys: run as is, the original and the copy would both receive and take each
    other's envelopes. At its first start it becomes a device of its own: a new
    device identity and prekeys, registered with the relay and named in the
    account's device list (signed with the account identity, which the backup
    holds, so contacts' safety numbers stay the same). Taking over, the original is
    also left out of the list and removed from the relay, which signs it out and
    tells it why; adding, the original keeps working and is sent the new list.
    Nothing to do for a profile that is not a fresh restore. Raises ServiceError,
    changing nothing, when the relay cannot be reached: the copy never starts as
    a clone, and the next start tries again."""
    choice = store.settings.get(RESTORED_DEVICE_SETTING)
    if choice not in (RESTORED_ADD, RESTORED_TAKE_OVER):
        return
    account = store.account.get()
    if account is None:
        return
    original_identity = DeviceIdentity.from_bytes(account.identity)
    held_account = store.account.account_identity()
    account_identity = (
        original_identity if held_account is None else DeviceIdentity.from_bytes(held_account)
    )
    now = int(time.time() * 1000)
    own = DeviceLists(store, account.username, account.device_id, original_identity, lambda: now)
    with store.transaction():
        listed = own.own()
    identity, prekeys = Messenger.prepare_account()
    relay = profile.relay(token=account.relay_token)
    try:
        added = relay.add_device(seal_device_name(account_identity, account.device_name))
        device_id, token = int(added["device_id"]), str(added["token"])
        relay.token = token
        relay.upload_keys(prekeys.upload_json(identity))
        prekeys.mark_published()
        kept = [
            (d, i)
            for d, i in listed.devices
            if not (choice == RESTORED_TAKE_OVER and d == account.device_id)
        ]
        with store.transaction():
            signed = own.sign_own([*kept, (device_id, identity.public)]).signed
            # This device's identity is new; the account's stays what it was.
            _save_device(
                store,
                Account(
                    username=account.username,
                    device_id=device_id,
                    device_name=account.device_name,
                    relay_token=token,
                    identity=identity.to_bytes(),
                    prekeys=prekeys.to_bytes(),
                ),
                None,  # signed and kept above
                account_identity=account_identity.to_bytes(),
                now=now,
            )
            store.settings.delete(RESTORED_DEVICE_SETTING)
        relay.publish_device_list(signed)
        if choice == RESTORED_TAKE_OVER:
            with contextlib.suppress(NotFound):
                relay.remove_device(account.device_id)
    except RelayError as error:
        raise ServiceError(
            "Cannot reach the relay to set this computer up as a device of your account"
            f" ({error}). Check the connection and start Cipherline again."
        ) from None
    finally:
        relay.close()
