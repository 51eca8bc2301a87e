"""Signed device lists (app/protocol/device_list.py, docs/protocol.md §13): only the
account identity makes one, a relay can neither add a device to one nor serve an
older one unnoticed, and an account from before lists keeps its safety number."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.protocol.device_list import (
    DeviceListError,
    StaleDeviceList,
    initial_device_list,
    newest,
    open_device_list,
    sign_device_list,
)
from app.protocol.identity import DeviceIdentity, PublicIdentity
from app.protocol.safety import safety_number

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "device_list_v1.json").read_text()
)
NOW = 1_800_000_000_000


def _identity(hex_text: str) -> DeviceIdentity:
    return DeviceIdentity.from_bytes(bytes.fromhex(hex_text))


def test_the_vectors_are_reproduced_and_open() -> None:
    account = _identity(VECTORS["account_private"])
    laptop = _identity(VECTORS["linked_device_private"])
    assert account.public.to_bytes().hex() == VECTORS["account_public"]
    first = initial_device_list(account, 1, VECTORS["first"]["issued_at"])
    second = sign_device_list(
        account, 2, [(1, account.public), (2, laptop.public)], VECTORS["second"]["issued_at"]
    )
    assert first.hex() == VECTORS["first"]["signed"]
    assert second.hex() == VECTORS["second"]["signed"]
    opened = open_device_list(second, account.public)
    assert opened.version == 2 and opened.device_ids() == [1, 2]
    identity = opened.identity_of(2)
    assert identity is not None and identity.to_bytes() == laptop.public.to_bytes()
    from scripts.gen_device_list_vectors import deterministic

    assert deterministic() == VECTORS


def test_an_account_from_before_lists_keeps_its_safety_number() -> None:
    alice, bob = DeviceIdentity.generate(), DeviceIdentity.generate()
    before = safety_number(alice.public.to_bytes(), "alice", bob.public.to_bytes(), "bob")
    listed = open_device_list(initial_device_list(alice, 1, NOW), alice.public)
    after = safety_number(listed.account.to_bytes(), "alice", bob.public.to_bytes(), "bob")
    assert after == before
    assert listed.device_ids() == [1]


def test_a_device_the_relay_adds_is_in_no_list_it_can_make() -> None:
    """The ghost-device attack: the relay lists a device of its own. Signing a list
    that names it needs the account's private key."""
    alice, ghost = DeviceIdentity.generate(), DeviceIdentity.generate()
    genuine = open_device_list(initial_device_list(alice, 1, NOW), alice.public)
    assert genuine.identity_of(2) is None
    forged = sign_device_list(ghost, 2, [(1, alice.public), (2, ghost.public)], NOW)
    with pytest.raises(DeviceListError, match="another account identity"):
        open_device_list(forged, alice.public)
    # A list naming Alice's identity and the ghost, under the ghost's signature.
    claimed = sign_device_list(alice, 2, [(1, alice.public), (2, ghost.public)], NOW)
    spliced = claimed[:-64] + ghost.signing_key.sign(b"Cipherline device list v1" + claimed[:-64])
    with pytest.raises(DeviceListError, match="signature"):
        open_device_list(spliced, alice.public)


def test_every_changed_byte_is_refused() -> None:
    alice, laptop = DeviceIdentity.generate(), DeviceIdentity.generate()
    signed = sign_device_list(alice, 3, [(1, alice.public), (4, laptop.public)], NOW)
    open_device_list(signed, alice.public)
    for position in range(len(signed)):
        changed = bytearray(signed)
        changed[position] ^= 0x01
        with pytest.raises(DeviceListError):
            open_device_list(bytes(changed), alice.public)
    for cut in (0, 1, len(signed) // 2, len(signed) - 64, len(signed) - 1):
        with pytest.raises(DeviceListError):
            open_device_list(signed[:cut], alice.public)
    with pytest.raises(DeviceListError):
        open_device_list(signed + b"\x00", alice.public)


def test_an_older_or_forked_list_is_refused_and_changes_are_named() -> None:
    alice, laptop, desktop = (DeviceIdentity.generate() for _ in range(3))

    def listed(version: int, devices: list[tuple[int, PublicIdentity]]) -> Any:
        return open_device_list(sign_device_list(alice, version, devices, NOW), alice.public)

    one = listed(1, [(1, alice.public)])
    two = listed(2, [(1, alice.public), (2, laptop.public)])
    three = listed(3, [(1, alice.public), (3, desktop.public)])
    held = newest(None, one)
    held = newest(held, two)
    assert newest(held, two) is held
    with pytest.raises(StaleDeviceList, match="older"):
        newest(held, one)  # a relay bringing back the list before a device was linked
    fork = listed(2, [(1, alice.public), (2, desktop.public)])
    with pytest.raises(StaleDeviceList, match="one version"):
        newest(held, fork)
    held = newest(held, three)
    assert three.changes_from(two) == ([3], [2], [])
    relinked = listed(4, [(1, alice.public), (3, laptop.public)])
    assert relinked.changes_from(three) == ([], [], [3])


def test_lists_that_break_the_rules_are_not_made() -> None:
    alice = DeviceIdentity.generate()
    for version, devices in (
        (0, [(1, alice.public)]),
        (1, []),
        (1, [(2, alice.public), (1, alice.public)]),
        (1, [(1, alice.public), (1, alice.public)]),
        (1, [(0, alice.public)]),
    ):
        with pytest.raises(ValueError):
            sign_device_list(alice, version, devices, NOW)
