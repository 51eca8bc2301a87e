"""Device names sealed for the account's own devices (app/protocol/device_names.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from app.crypto import NONCE_LENGTH, DhPrivateKey, SigningKey, aead_open
from app.protocol.device_names import (
    MAX_NAME_CHARACTERS,
    PREFIX,
    STORED_LENGTH,
    open_device_name,
    seal_device_name,
)
from app.protocol.identity import DeviceIdentity
from scripts.gen_device_name_vectors import deterministic

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "device_names_v1.json"


def test_the_published_vectors_are_reproduced_byte_for_byte() -> None:
    assert VECTORS.read_bytes() == (
        json.dumps(deterministic(), indent=2, ensure_ascii=False) + "\n"
    ).encode("utf-8")


def test_the_published_vectors_open_step_by_step() -> None:
    published = json.loads(VECTORS.read_text(encoding="utf-8"))
    identity = DeviceIdentity(
        SigningKey(bytes.fromhex(published["identity_signing_seed"])),
        DhPrivateKey(bytes.fromhex(published["identity_dh_private_key"])),
    )
    key = bytes.fromhex(published["key"])
    associated_data = bytes.fromhex(published["associated_data"])
    assert len(published["cases"]) == 3
    for case in published["cases"]:
        stored = case["stored"]
        assert stored.startswith(PREFIX) and len(stored) == STORED_LENGTH
        text = stored[len(PREFIX) :]
        sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        assert sealed[:NONCE_LENGTH].hex() == case["nonce"]
        block = aead_open(key, sealed[:NONCE_LENGTH], sealed[NONCE_LENGTH:], associated_data)
        assert block.hex() == case["block"]
        assert open_device_name(identity, stored) == case["name"]
        assert open_device_name(DeviceIdentity.generate(), stored) is None


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
