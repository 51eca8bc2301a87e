"""Device names sealed for the account's own devices (app/protocol/device_names.py)."""

from __future__ import annotations

import pytest

from app.protocol.device_names import (
    MAX_NAME_CHARACTERS,
    PREFIX,
    STORED_LENGTH,
    open_device_name,
    seal_device_name,
)
from app.protocol.identity import DeviceIdentity


def test_a_name_opens_under_its_identity_only() -> None:
    identity, other = DeviceIdentity.generate(), DeviceIdentity.generate()
    longest = "\U0001f4bb" * MAX_NAME_CHARACTERS  # 4 bytes each: the largest block
    for name in ("Laptop", "Küche ☕", longest):
        stored = seal_device_name(identity, name)
        assert stored.startswith(PREFIX) and name not in stored
        assert open_device_name(identity, stored) == name
        assert open_device_name(other, stored) is None


def test_every_name_is_stored_at_one_length_and_never_twice_the_same() -> None:
    identity = DeviceIdentity.generate()
    stored = [seal_device_name(identity, name) for name in ("a", "a", "x" * MAX_NAME_CHARACTERS)]
    assert {len(text) for text in stored} == {STORED_LENGTH}
    assert len(set(stored)) == 3


def test_a_tampered_name_does_not_open() -> None:
    identity = DeviceIdentity.generate()
    stored = seal_device_name(identity, "Laptop")
    position = len(PREFIX) + 20
    flipped = "A" if stored[position] != "A" else "B"
    assert open_device_name(identity, stored[:position] + flipped + stored[position + 1 :]) is None
    assert open_device_name(identity, stored[:-4]) is None
    assert open_device_name(identity, PREFIX + "!!!") is None


def test_a_name_an_older_client_stored_in_the_clear_is_shown_as_it_is() -> None:
    assert open_device_name(DeviceIdentity.generate(), "laptop") == "laptop"


def test_names_outside_the_limit_are_refused() -> None:
    identity = DeviceIdentity.generate()
    for name in ("", "x" * (MAX_NAME_CHARACTERS + 1)):
        with pytest.raises(ValueError):
            seal_device_name(identity, name)
