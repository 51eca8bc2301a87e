"""Device lists on the client: which devices of an account may read and send its
messages (docs/protocol.md §13), kept in the store and decided here.

No network and no threads; everything runs on the core thread inside the
messenger's transactions. A contact's newest list is held under the account
identity it was opened with (the identity its safety number covers):

- a message to the contact is encrypted to exactly the devices that list names,
  each under the identity the list gives it, so a device the relay adds on its own
  is never encrypted to;
- a message from a device the list does not name with that identity is refused
  (`UnlistedDevice`), unless it is the first message of that device's session and
  carries a newer list that names it;
- a list under another account identity is an identity change, warned about and
  gated like any other (app/store/trust.py);
- an older list than one held, or a different one under a held version, is never
  taken (`StaleDeviceList`): a relay cannot bring back a removed device.

An account with no list yet (made before lists, or whose client has not published
one) is taken as one device, as before lists: its identity is the account's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.protocol.device_list import (
    DeviceList,
    StaleDeviceList,
    declared,
    initial_device_list,
    newest,
    open_device_list,
    sign_device_list,
)
from app.protocol.identity import DeviceIdentity, PublicIdentity
from app.protocol.session import Session
from app.store import Store


@dataclass
class ListChange:
    """What taking a list changed, for the chat's notices and the trust banner."""

    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    rekeyed: list[int] = field(default_factory=list)
    identity_changed: bool = False
    first: bool = False  # the first list held for the account

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.rekeyed)


class DeviceLists:
    def __init__(
        self,
        store: Store,
        username: str,
        device_id: int,
        device_identity: DeviceIdentity,
        clock: Callable[[], int],
    ) -> None:
        self.store = store
        self.username = username
        self.device_id = device_id
        self.device_identity = device_identity
        self.clock = clock

    # ---- our own account ------------------------------------------------------------
    @property
    def account_identity(self) -> DeviceIdentity:
        """The account identity's keys: given by the linking device, or this
        device's own identity for an account's first device (and every account
        made before linking existed, whose safety numbers so stay the same)."""
        held = self.store.account.account_identity()
        return self.device_identity if held is None else DeviceIdentity.from_bytes(held)

    def own(self) -> DeviceList:
        """Our newest list; made (version 1, this device alone) the first time."""
        account = self.account_identity
        held = self.store.device_lists.get(self.username)
        if held is not None and held.account_key == account.public.to_bytes():
            return open_device_list(held.signed, account.public)
        if self.store.account.account_identity() is None:
            signed = initial_device_list(account, self.device_id, self.clock())
        else:
            # A linked device always holds the list that named it; losing it is a
            # bug, and a list of this device alone would drop the others.
            raise RuntimeError("a linked device holds no device list")
        self._save(self.username, open_device_list(signed, account.public))
        return open_device_list(signed, account.public)

    def sign_own(
        self, devices: list[tuple[int, PublicIdentity]], *, at_least: int = 0
    ) -> DeviceList:
        """A new list of ours naming `devices`, one version past the held one (and
        at least `at_least`), kept."""
        account = self.account_identity
        version = max(self.own().version + 1, at_least)
        signed = sign_device_list(account, version, sorted(devices), self.clock())
        listed = open_device_list(signed, account.public)
        self._save(self.username, listed)
        return listed

    def adopt_own(self, signed: bytes, *, version_floor: int = 0) -> DeviceList | None:
        """Our list as the relay has it (another of our devices changed it): taken
        when it verifies under our account identity and is newer. None otherwise."""
        account = self.account_identity.public
        try:
            listed = open_device_list(signed, account)
            chosen = newest(self._held(self.username, account), listed)
        except StaleDeviceList:
            return None
        if chosen.version <= version_floor:
            return None
        self._save(self.username, chosen)
        return chosen

    # ---- contacts -------------------------------------------------------------------
    def held(self, username: str) -> DeviceList | None:
        contact = self.store.contacts.get(username)
        held = self.store.device_lists.get(username)
        if held is None:
            return None
        if username != self.username and (
            contact is None or contact.identity_key != held.account_key
        ):
            # Held under an identity the contact no longer has: it lists nothing.
            return None
        return open_device_list(held.signed, PublicIdentity.from_bytes(held.account_key))

    def adopt(self, username: str, signed: bytes) -> ListChange:
        """Takes a contact's signed list if it is newer than the one held.

        Opened under the identity held for the contact; a list naming another
        account identity is opened under that one and the contact's identity
        changes (warned and gated as any change). Raises DeviceListError for a
        list that does not verify and StaleDeviceList for an older one."""
        _version, account = declared(signed)
        listed = open_device_list(signed, account)
        contact = self.store.contacts.get(username)
        change = ListChange()
        if contact is None or contact.identity_key != account.to_bytes():
            change.identity_changed = self.store.contacts.observe_identity(
                username, account.to_bytes(), now=self.clock()
            )
            previous = None
        else:
            previous = self._held(username, account)
        chosen = newest(previous, listed)
        if previous is None:
            change.first = not change.identity_changed
            stale_devices = set(self.store.sessions.devices(username))
            stale_devices -= {
                device_id
                for device_id, identity in chosen.devices
                if self._session_identity(username, device_id) == identity.to_bytes()
            }
            change.removed = []
        else:
            change.added, change.removed, change.rekeyed = chosen.changes_from(previous)
            stale_devices = set(change.removed) | set(change.rekeyed)
        for device_id in stale_devices:
            # Its sessions go entirely (archived ones too): a removed device's
            # messages must not open, and nothing is ever encrypted to it again.
            self.store.sessions.delete(username, device_id)
            self.store.sessions.delete_archived(username, device_id)
        self._save(username, chosen)
        return change

    def listed_identity(self, username: str, device_id: int) -> bytes | None:
        """The identity the held list gives `device_id`; None when not listed."""
        held = self.held(username)
        identity = None if held is None else held.identity_of(device_id)
        return None if identity is None else identity.to_bytes()

    def devices(self, username: str) -> list[int] | None:
        """The devices to encrypt to; None when no list is held."""
        held = self.held(username)
        if held is None:
            return None
        devices = held.device_ids()
        if username == self.username:
            devices = [d for d in devices if d != self.device_id]
        return devices

    # ---- helpers --------------------------------------------------------------------
    def _held(self, username: str, account: PublicIdentity) -> DeviceList | None:
        held = self.store.device_lists.get(username)
        if held is None or held.account_key != account.to_bytes():
            return None
        return open_device_list(held.signed, account)

    def _save(self, username: str, listed: DeviceList) -> None:
        self.store.device_lists.save(
            username,
            listed.account.to_bytes(),
            listed.version,
            listed.signed,
            now=self.clock(),
        )

    def _session_identity(self, username: str, device_id: int) -> bytes | None:
        state = self.store.sessions.get(username, device_id)
        return None if state is None else Session.from_bytes(state).remote_identity
