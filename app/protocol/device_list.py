"""An account's signed device list (docs/protocol.md §13), sans-I/O.

An account has one identity key; each of its devices has a device identity of its
own, listed with its device id in a list the account identity signs, with a
version that only grows. A contact encrypts to exactly the devices of the newest
list that verifies under the account identity its safety number covers, so a
device the relay adds on its own is never encrypted to, and a relay that serves
an older list (to bring back a removed device) is caught by the version a client
remembers. An account made before lists existed keeps its single device's
identity as the account identity: its safety number does not change.

    body   = u8 format (1) | u64 list version (from 1) | u64 issued (ms since epoch)
             | u16 len + account identity (identity.PublicIdentity)
             | u8 n (1..MAX_DEVICES) | n x ( u32 device id | u16 len + device identity )
    signed = body | [64] Ed25519(account signing key, CONTEXT | body)

Device ids are strictly increasing (each listed once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.crypto import CryptoError
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import MalformedMessage, ProtocolError
from app.protocol.identity import DeviceIdentity, PublicIdentity

FORMAT = 1
CONTEXT = b"Cipherline device list v1"
SIGNATURE_LENGTH = 64
# More than the relay's device quota, so that the list is never what stops a link.
MAX_DEVICES = 32
MAX_DEVICE_ID = 0xFFFF_FFFF


class DeviceListError(ProtocolError):
    """A device list that does not verify, or does not follow the one held."""


class StaleDeviceList(DeviceListError):
    """An older list than one already seen, or a different list under a version
    already seen: what a relay replaying or forking lists would serve."""


class UnlistedDevice(DeviceListError):
    """A message from a device the account's newest list does not name with that
    identity: a device the relay added, or one the account removed."""


@dataclass(frozen=True)
class DeviceList:
    version: int
    issued_at: int
    account: PublicIdentity
    devices: tuple[tuple[int, PublicIdentity], ...]
    signed: bytes  # the whole signed encoding, as published

    def device_ids(self) -> list[int]:
        return [device_id for device_id, _identity in self.devices]

    def identity_of(self, device_id: int) -> PublicIdentity | None:
        for listed, identity in self.devices:
            if listed == device_id:
                return identity
        return None

    def changes_from(self, older: DeviceList) -> tuple[list[int], list[int], list[int]]:
        """(added, removed, given a new identity) device ids, for the chat's notices
        ("Alice linked a new device", "Alice removed a device")."""
        before = {device_id: identity.to_bytes() for device_id, identity in older.devices}
        after = {device_id: identity.to_bytes() for device_id, identity in self.devices}
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        rekeyed = sorted(d for d in after.keys() & before.keys() if after[d] != before[d])
        return added, removed, rekeyed


def sign_device_list(
    account: DeviceIdentity,
    version: int,
    devices: Sequence[tuple[int, PublicIdentity]],
    issued_at: int,
) -> bytes:
    """The signed list to publish."""
    if not 1 <= version <= 2**64 - 1:
        raise ValueError("a device list's version is 1 to 2^64 - 1")
    ids = [device_id for device_id, _identity in devices]
    if not 1 <= len(ids) <= MAX_DEVICES or ids != sorted(set(ids)):
        raise ValueError(f"1 to {MAX_DEVICES} devices, each id once, in increasing order")
    if not all(1 <= device_id <= MAX_DEVICE_ID for device_id in ids):
        raise ValueError("a device id is 1 to 2^32 - 1")
    writer = (
        Writer()
        .u8(FORMAT)
        .u64(version)
        .u64(issued_at)
        .bytes16(account.public.to_bytes())
        .u8(len(devices))
    )
    for device_id, identity in devices:
        writer.u32(device_id).bytes16(identity.to_bytes())
    body = writer.getvalue()
    return body + account.signing_key.sign(CONTEXT + body)


def initial_device_list(identity: DeviceIdentity, device_id: int, issued_at: int) -> bytes:
    """An account made before device lists: its one device's identity becomes the
    account identity (the safety number its contacts verified stays the same) and
    the list names that device alone."""
    return sign_device_list(identity, 1, [(device_id, identity.public)], issued_at)


def open_device_list(signed: bytes, account: PublicIdentity) -> DeviceList:
    """The list, if it is well formed and signed by `account` (the identity the
    safety number covers); `DeviceListError` otherwise."""
    if len(signed) <= SIGNATURE_LENGTH:
        raise DeviceListError("a device list is too short")
    body, signature = signed[:-SIGNATURE_LENGTH], signed[-SIGNATURE_LENGTH:]
    try:
        reader = Reader(body, "device list")
        reader.version(FORMAT)
        version, issued_at = reader.u64(), reader.u64()
        listed_account = PublicIdentity.from_bytes(reader.bytes16())
        count = reader.u8()
        devices = tuple(
            (reader.u32(), PublicIdentity.from_bytes(reader.bytes16())) for _ in range(count)
        )
        reader.end()
    except (MalformedMessage, ProtocolError):
        raise DeviceListError("the device list is malformed") from None
    if listed_account.to_bytes() != account.to_bytes():
        raise DeviceListError("the device list names another account identity")
    try:
        account.verify_key.verify(signature, CONTEXT + body)
    except CryptoError:
        raise DeviceListError("the device list's signature does not verify") from None
    ids = [device_id for device_id, _identity in devices]
    if version < 1 or not 1 <= count <= MAX_DEVICES or ids != sorted(set(ids)) or 0 in ids:
        raise DeviceListError("the device list's version or devices are out of order")
    return DeviceList(version, issued_at, listed_account, devices, signed)


def declared(signed: bytes) -> tuple[int, PublicIdentity]:
    """The version and account identity a list names for itself, unchecked: what a
    client that holds no identity for the account yet (or sees it change) opens
    the list under, and then warns about as any identity change (trust on first
    use)."""
    try:
        reader = Reader(signed, "device list")
        reader.version(FORMAT)
        version, _issued = reader.u64(), reader.u64()
        return version, PublicIdentity.from_bytes(reader.bytes16())
    except (MalformedMessage, ProtocolError):
        raise DeviceListError("the device list is malformed") from None


def newest(held: DeviceList | None, candidate: DeviceList) -> DeviceList:
    """The list to go on with: `candidate` if it is newer than `held`, `held` if it
    is the same; `StaleDeviceList` if it is older, or differs under the same version."""
    if held is None or candidate.version > held.version:
        return candidate
    if candidate.version == held.version and candidate.signed == held.signed:
        return held
    if candidate.version == held.version:
        raise StaleDeviceList("two different device lists under one version")
    raise StaleDeviceList("an older device list than one already seen")
