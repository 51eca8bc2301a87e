"""Backup settings and jobs for a profile: method, vault, schedule, run.

Everything here is synchronous; the UI runs it in workers and the CLI directly.
The vault is reached through `app.net.vault_transport` (the relay's pass-through).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.backup import engine, password_policy, server_record, snapshots
from app.backup import format as fmt
from app.backup.errors import BackupError, BackupNotConfigured, NotABackup
from app.backup.keys import generate_backup_key
from app.config import ServerConfig, VaultNodeKey, write_ca_file
from app.crypto import HpkePublicKey
from app.net import RelayClient
from app.net.vault_transport import (
    RelayTransport,
    fleet_key,
    pinned_nodes,
    run_flow,
    run_split_flow,
)
from app.protocol import vault, vault_split
from app.store import BackupState, Store
from app.store.keyfile import (
    RECOVERY_METHOD_KEY,
    RECOVERY_METHOD_PASSWORD,
    recovery_is_current,
    remove_recovery,
    write_recovery,
)

METHOD_KEY = "key"
METHOD_PASSWORD = "password"  # noqa: S105 - a method name, not a password
SCHEDULES = {"off": None, "daily": 86_400, "weekly": 7 * 86_400, "monthly": 30 * 86_400}
MIN_PASSWORD_LENGTH = password_policy.MIN_PASSWORD_LENGTH
LAST_VERIFIED_SETTING = "backup.last_verified"
# {"daily": n, "weekly": n, "monthly": n}; "keep the newest N" stays in backup_state.
RETENTION_SETTING = "backup.retention"
# "split" once the password record is in the split vault; absent for a record in
# the single vault (every record registered before the split vault existed).
VAULT_SETTING = "backup.vault"


@dataclass(frozen=True)
class VaultAccess:
    """How to reach the vault: the relay's pass-through and the pinned keys.

    With `vault_domains` in the server config, new password records go to the split
    vault (docs/vault-protocol.md, "The split vault"); a record is looked for there
    first and then in the single vault, so backups registered before keep working
    (asking a vault that does not hold a record costs no attempt)."""

    config: ServerConfig
    profile: Path

    @property
    def split(self) -> bool:
        return bool(self.config.vault_domains)

    @property
    def configured(self) -> bool:
        return bool(self.config.vault_domains or self.config.vault_nodes)

    def _relay(self) -> RelayClient:
        return RelayClient(self.config.relay_url, write_ca_file(self.profile, self.config))

    def _call(self, flow: object) -> object:
        if not self.config.vault_nodes:
            raise vault.RecordNotFound
        relay = self._relay()
        try:
            transport = RelayTransport(relay)
            key = fleet_key(transport, pinned_nodes(self.config.vault_nodes))
            return run_flow(flow(key), transport)  # type: ignore[operator]
        finally:
            relay.close()

    def _split_call(self, flow: object) -> object:
        relay = self._relay()
        try:
            transports = [RelayTransport(relay, number) for number in (1, 2, 3)]
            keys = [
                _domain_key(transport, domain)
                for transport, domain in zip(transports, self.config.vault_domains, strict=True)
            ]
            return run_split_flow(flow(keys), list(transports))  # type: ignore[operator]
        finally:
            relay.close()

    def _either(self, split_flow: object, single_flow: object) -> object:
        if self.split:
            try:
                return self._split_call(split_flow)
            except vault.RecordNotFound:
                if not self.config.vault_nodes:
                    raise
        return self._call(single_flow)

    def register(self, password: str, backup_key: bytes) -> bytes:
        if self.split:
            record_id, _stored = self._split_call(  # type: ignore[misc]
                lambda keys: vault_split.register(password, backup_key, keys)
            )
        else:
            record_id = self._call(lambda key: vault.register(password, backup_key, key))
        assert isinstance(record_id, bytes)
        return record_id

    def retrieve(self, record_id: bytes, password: str) -> bytes:
        result = self._either(
            lambda keys: vault_split.recover(password, keys, record_id),
            lambda key: vault.retrieve(record_id, password, key),
        )
        assert isinstance(result, bytes)
        return result

    def retrieve_single(self, record_id: bytes, password: str) -> bytes:
        result = self._call(lambda key: vault.retrieve(record_id, password, key))
        assert isinstance(result, bytes)
        return result

    def domain_status(self) -> list[str]:
        """One sentence per split-vault domain: whether it answers with the keys
        this app pins."""
        sentences = []
        relay = self._relay()
        try:
            for number, domain in enumerate(self.config.vault_domains, 1):
                try:
                    fleet_key(RelayTransport(relay, number), pinned_nodes(domain))
                    sentences.append(f"Vault {number} ({domain[0].node}): answering.")
                except vault.VaultKeyMismatch:
                    sentences.append(
                        f"Vault {number} ({domain[0].node}): answered with keys this app "
                        "does not trust; not used."
                    )
                except vault.VaultUnavailable:
                    sentences.append(f"Vault {number} ({domain[0].node}): not answering.")
        finally:
            relay.close()
        return sentences

    def repair(self, record_id: bytes, backup_key: bytes) -> frozenset[int]:
        result = self._split_call(lambda keys: vault_split.repair(record_id, backup_key, keys))
        assert isinstance(result, frozenset)
        return result

    def change_password(self, record_id: bytes, old: str, new: str) -> None:
        self._either(
            lambda keys: vault_split.change_password(record_id, old, new, keys),
            lambda key: vault.change_password(record_id, old, new, key),
        )

    def delete(self, record_id: bytes, password: str) -> None:
        self._either(
            lambda keys: vault_split.delete(record_id, password, keys),
            lambda key: vault.delete(record_id, password, key),
        )


def _domain_key(transport: RelayTransport, domain: tuple[VaultNodeKey, ...]) -> HpkePublicKey:
    """The domain's fleet key, checked against its pins. A domain that does not
    answer gets its pinned key: its requests fail like any to a dead domain, and
    the other two carry the recovery."""
    try:
        return fleet_key(transport, pinned_nodes(domain))
    except vault.VaultUnavailable:
        return HpkePublicKey(bytes.fromhex(domain[0].hpke_public_key))


def password_problem(password: str) -> str | None:
    """Why this backup password is too weak, as a sentence; None when it is strong
    enough. The rule and its attacker budget are in `app.backup.password_policy`."""
    return password_policy.problem(password)


def password_strength(password: str) -> int:
    """0-4 for the meter, from the same estimate as `password_problem`: 4 exactly
    when that returns None."""
    return password_policy.strength(password)


def set_up_with_key(
    store: Store,
    folder: Path,
    *,
    schedule: str = "weekly",
    keep: int = 2,
    key: bytes | None = None,
) -> bytes:
    """Backups under a random key the user keeps as 64 digits; returns the key.

    The wizard passes the key it already showed and had typed back."""
    key = key or generate_backup_key()
    with store.transaction():
        store.backup_state.update(
            method=METHOD_KEY,
            folder=str(folder),
            schedule=schedule,
            keep=keep,
            vault_record_id=None,
            backup_key=key,
        )
    # The same key opens the store if the keyring entry or passphrase is ever lost.
    write_recovery(store, key, method=RECOVERY_METHOD_KEY)
    return key


def set_up_with_password(
    store: Store,
    access: VaultAccess,
    password: str,
    folder: Path,
    *,
    schedule: str = "weekly",
    keep: int = 2,
) -> None:
    problem = password_problem(password)
    if problem:
        raise BackupError(f"that password is too weak: {problem}")
    key = generate_backup_key()
    record_id = access.register(password, key)
    with store.transaction():
        store.backup_state.update(
            method=METHOD_PASSWORD,
            folder=str(folder),
            schedule=schedule,
            keep=keep,
            vault_record_id=record_id.hex(),
            backup_key=key,
        )
        store.settings.set(VAULT_SETTING, "split" if access.split else None)
    write_recovery(store, key, method=RECOVERY_METHOD_PASSWORD, vault_record_id=record_id)


def split_vault_move_due(store: Store, access: VaultAccess | None) -> bool:
    """Whether this profile's backup password sits in the single vault while the
    split vault is configured: the app then offers to move it."""
    state = store.backup_state.get()
    return bool(
        access is not None
        and access.split
        and state.method == METHOD_PASSWORD
        and state.vault_record_id
        and store.settings.get(VAULT_SETTING) != "split"
    )


def repair_split_vault(store: Store, access: VaultAccess | None) -> frozenset[int]:
    """At unlock: gives a split-vault domain that lacks this profile's record (it was
    down at registration, or replaced one lost for good) its share again, from the
    other two and the backup key this profile holds. Returns the domains repaired."""
    state = store.backup_state.get()
    if (
        access is None
        or not access.split
        or state.method != METHOD_PASSWORD
        or not state.vault_record_id
        or not state.backup_key
        or store.settings.get(VAULT_SETTING) != "split"
    ):
        return frozenset()
    return access.repair(bytes.fromhex(state.vault_record_id), state.backup_key)


def move_to_split_vault(store: Store, access: VaultAccess, password: str) -> None:
    """Registers the same backup key under the same password in the split vault and
    makes that the profile's record. The single vault's record is kept: the backups
    written so far name it, and it still opens them with this password."""
    state = store.backup_state.get()
    if not split_vault_move_due(store, access) or not state.backup_key:
        raise BackupNotConfigured("this backup password is not in the single vault")
    assert state.vault_record_id is not None
    # The password is checked where it is kept now (a wrong one costs an attempt
    # there, as any login does), and must give back this profile's own key.
    single = access.retrieve_single(bytes.fromhex(state.vault_record_id), password)
    if single != state.backup_key:
        raise BackupError("the vault gave back a key that is not this profile's backup key")
    record_id = access.register(password, state.backup_key)
    with store.transaction():
        store.backup_state.update(vault_record_id=record_id.hex())
        store.settings.set(VAULT_SETTING, "split")
    write_recovery(
        store, state.backup_key, method=RECOVERY_METHOD_PASSWORD, vault_record_id=record_id
    )


def change_password(store: Store, access: VaultAccess, old: str, new: str) -> None:
    """The same key and record under a new password: existing backups stay readable."""
    state = store.backup_state.get()
    if state.method != METHOD_PASSWORD or not state.vault_record_id:
        raise BackupNotConfigured("backups are not protected by a password")
    problem = password_problem(new)
    if problem:
        raise BackupError(f"that password is too weak: {problem}")
    access.change_password(bytes.fromhex(state.vault_record_id), old, new)


def turn_off(store: Store, access: VaultAccess | None, password: str | None) -> None:
    """Stops backups. With a password the vault forgets the key, so existing
    backups become unreadable unless the 64-digit key was kept."""
    state = store.backup_state.get()
    if state.method == METHOD_PASSWORD and state.vault_record_id:
        if access is None or password is None:
            raise BackupError("turning off password backups needs the backup password")
        access.delete(bytes.fromhex(state.vault_record_id), password)
    with store.transaction():
        store.backup_state.update(
            method=None, schedule="off", vault_record_id=None, backup_key=None
        )
    # The recovery wrapping follows the backup key the profile is set up with: a key
    # the user was just told no longer matters must not go on opening the store.
    remove_recovery(store.path.parent)


def keep_recovery_current(store: Store) -> None:
    """Writes `store.recovery` when backups are set up but it is missing or stale
    (profiles set up before it existed), and removes it when they are not."""
    state = store.backup_state.get()
    if not state.method or not state.backup_key:
        remove_recovery(store.path.parent)
        return
    if recovery_is_current(store, state.backup_key):
        return
    if state.method == METHOD_PASSWORD and state.vault_record_id:
        write_recovery(
            store,
            state.backup_key,
            method=RECOVERY_METHOD_PASSWORD,
            vault_record_id=bytes.fromhex(state.vault_record_id),
        )
    else:
        write_recovery(store, state.backup_key, method=RECOVERY_METHOD_KEY)


def is_due(store: Store, now: float | None = None) -> bool:
    state = store.backup_state.get()
    interval = SCHEDULES.get(state.schedule)
    if not state.method or not state.folder or interval is None:
        return False
    now = time.time() if now is None else now
    return state.last_success is None or now - state.last_success >= interval


def back_up_now(
    store: Store,
    profile: Path,
    *,
    include_attachments: bool = True,
    progress: engine.Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> engine.BackupInfo:
    state = store.backup_state.get()
    if not state.method or not state.backup_key or not state.folder:
        raise BackupNotConfigured("backups are not set up for this profile")
    method = fmt.METHOD_PASSWORD if state.method == METHOD_PASSWORD else fmt.METHOD_KEY
    record_id = bytes.fromhex(state.vault_record_id) if state.vault_record_id else b""
    folder = Path(state.folder)
    # The relay this profile talks to travels in the store, so that a restore on a
    # fresh machine can connect (issue #20; app/backup/server_record.py).
    server_record.record(store, profile)
    # New backups are version 3 snapshots: each adds only what changed, and what it
    # wrote is read back and authenticated before it counts as done.
    written = snapshots.write_snapshot(
        store,
        folder,
        state.backup_key,
        method=method,
        record_id=record_id,
        attachments_dir=(profile / "attachments") if include_attachments else None,
        retention=retention(store),
        progress=progress or engine._no_progress,
        cancelled=cancelled or engine._never,
    )
    info = snapshots.describe_snapshot(written.path)
    with store.transaction():
        store.backup_state.update(last_success=int(time.time()), last_size=info.size)
        if written.verified_at is not None:
            store.settings.set(LAST_VERIFIED_SETTING, written.verified_at)
    # Version 1 and 2 files stay until as many snapshots replace them.
    if len(snapshots.Repository.for_key(folder, state.backup_key).snapshot_paths()) >= state.keep:
        engine.remove_single_files(folder)
    return info


def retention(store: Store) -> snapshots.Retention:
    """The profile's keep rules: the newest `keep`, plus daily/weekly/monthly ones."""
    state = store.backup_state.get()
    stored = store.settings.get(RETENTION_SETTING)
    rules = stored if isinstance(stored, dict) else {}

    def count(name: str) -> int:
        value = rules.get(name, 0)
        # A hand-edited or future value must not make a prune delete more.
        return value if isinstance(value, int) and value >= 0 else 0

    return snapshots.Retention(
        last=max(state.keep or 1, 1),
        daily=count("daily"),
        weekly=count("weekly"),
        monthly=count("monthly"),
    )


def set_retention(store: Store, rule: snapshots.Retention) -> None:
    """Saves `rule`; it applies from the next backup or `cipherline backup prune`."""
    with store.transaction():
        store.backup_state.update(keep=max(rule.last, 1))
        store.settings.set(
            RETENTION_SETTING,
            {"daily": rule.daily, "weekly": rule.weekly, "monthly": rule.monthly},
        )


def last_verified(store: Store) -> int | None:
    """When a backup was last read back from the folder and found intact (Unix s)."""
    value = store.settings.get(LAST_VERIFIED_SETTING)
    return value if isinstance(value, int) else None


def key_for(
    info: engine.BackupInfo,
    *,
    key: bytes | None = None,
    password: str | None = None,
    access: VaultAccess | None = None,
) -> bytes:
    """The backup key for `info`: given directly, or fetched from the vault."""
    if info.method == fmt.METHOD_NAMES[fmt.METHOD_KEY]:
        if key is None:
            raise BackupError("this backup is opened with its 64-digit key")
        return key
    if info.method != fmt.METHOD_NAMES[fmt.METHOD_PASSWORD]:
        raise NotABackup("this backup uses a protection method this Cipherline does not know")
    if password is None or access is None:
        raise BackupError("this backup is opened with its password")
    return access.retrieve(info.record_id, password)


def settle_after_restore(store: Store) -> BackupState:
    """Makes a restored copy a device of its own: its backups are off until the user
    sets them up, and the original's settings are returned so the app can say so.

    The copy arrives with the original's settings. Left on, it would write into the
    original's folder at once, and "keep the newest N" would let the two devices
    prune each other's backups; "Back up now" there would do the same, and turning
    off a password method would make the vault forget the original's key. So the
    method, folder, schedule, vault record and key are all cleared here.
    """
    original = store.backup_state.get()
    with store.transaction():
        store.backup_state.update(
            method=None,
            folder=None,
            schedule="off",
            vault_record_id=None,
            backup_key=None,
            last_success=None,
            last_size=None,
        )
    remove_recovery(store.path.parent)
    return original


def store_key_after_restore(store: Store, key: bytes) -> None:
    """The earlier name, kept for its callers: the restored copy's backups are
    settled by `settle_after_restore`; the backup key is no longer carried over."""
    del key
    settle_after_restore(store)
