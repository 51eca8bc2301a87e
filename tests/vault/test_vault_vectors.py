"""docs/vault-protocol.md against tests/vectors/vault_v1.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.crypto import HpkePrivateKey, hpke_open
from app.protocol import vault
from scripts.gen_vault_vectors import deterministic

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "vault_v1.json").read_text())


def test_deterministic_parts_are_reproduced_byte_for_byte() -> None:
    fresh = deterministic()
    for section in ("fleet", "response", "key_transfer"):
        assert fresh[section] == VECTORS[section]


def test_bundle_verifies_against_its_pins_and_not_others() -> None:
    fleet = VECTORS["fleet"]
    bundle = bytes.fromhex(fleet["bundle"])
    parsed = vault.Fleet.from_bytes(bundle)
    pins = [
        vault.PinnedNode(node.name, bytes.fromhex(fleet["hpke_public_key"]), node.signing_key)
        for node in parsed.nodes
    ]
    key = vault.verify_fleet(bundle, pins)
    assert key.to_bytes().hex() == fleet["hpke_public_key"]
    tampered = bytearray(bundle)
    tampered[-1] ^= 1
    with pytest.raises(vault.VaultKeyMismatch):
        vault.verify_fleet(bytes(tampered), pins)


def test_recorded_request_opens_with_the_fleet_key() -> None:
    request = VECTORS["request"]
    private = HpkePrivateKey(bytes.fromhex(VECTORS["fleet"]["hpke_private_key"]))
    plain = hpke_open(
        private, bytes.fromhex(request["body"]), vault.REQUEST_INFO + request["op"].encode()
    )
    inner = vault.parse_inner_request(plain)
    assert inner.response_key.hex() == request["response_key"]
    assert inner.record_id.hex() == request["record_id"]
    assert inner.fields.raw(len(bytes.fromhex(request["fields"]))).hex() == request["fields"]


def test_response_opens_and_rejects_the_wrong_op() -> None:
    response = VECTORS["response"]
    key = bytes.fromhex(response["response_key"])
    sealed = bytes.fromhex(response["sealed"])
    status, left, payload = vault.open_response(key, response["op"], (200, sealed))
    assert (status, left, payload.hex()) == (
        response["status"],
        response["attempts_left"],
        response["payload"],
    )
    with pytest.raises(vault.VaultProtocolError):
        vault.open_response(key, "login_finish", (200, sealed))
