"""docs/vault-protocol.md against tests/vectors/vault_v2.json.

These vectors come from our own code (scripts/gen_vault_vectors.py): they pin the
formats so that a change is seen, and let another implementation check itself
against ours. The OPAQUE exchange they carry is checked against an independent
implementation in test_opaque_interop.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.crypto import HpkePrivateKey, hpke_open
from app.protocol import vault
from scripts.gen_vault_vectors import deterministic
from vault_emulator import state
from vault_emulator.records import Versioned

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "vault_v2.json").read_text())


def test_deterministic_parts_are_reproduced_byte_for_byte() -> None:
    fresh = deterministic()
    for section in ("fleet", "response", "key_transfer", "key_wrap", "record_state"):
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


def test_response_opens_has_one_size_and_rejects_the_wrong_op() -> None:
    response = VECTORS["response"]
    key = bytes.fromhex(response["response_key"])
    sealed = bytes.fromhex(response["sealed"])
    assert len(sealed) == 12 + vault.RESPONSE_PLAINTEXT_LENGTH + 16
    status, left, payload = vault.open_response(key, response["op"], (200, sealed))
    assert (status, left, payload.hex()) == (
        response["status"],
        response["attempts_left"],
        response["payload"],
    )
    with pytest.raises(vault.VaultProtocolError):
        vault.open_response(key, "login_finish", (200, sealed))
    with pytest.raises(vault.VaultProtocolError):
        vault.open_response(key, response["op"], (200, sealed[:-1]))


def test_key_transfer_and_wrapping_open_only_for_their_record() -> None:
    transfer = VECTORS["key_transfer"]
    session_key, record_id = (
        bytes.fromhex(transfer["session_key"]),
        bytes.fromhex(transfer["record_id"]),
    )
    sealed = bytes.fromhex(transfer["sealed"])
    assert vault.open_key_transfer(session_key, record_id, sealed).hex() == transfer["stored_key"]
    with pytest.raises(vault.VaultProtocolError):
        vault.open_key_transfer(session_key, bytes(16), sealed)
    wrap = VECTORS["key_wrap"]
    export_key, wrapped = bytes.fromhex(wrap["export_key"]), bytes.fromhex(wrap["wrapped"])
    assert len(wrapped) == vault.WRAPPED_KEY_LENGTH
    record = bytes.fromhex(wrap["record_id"])
    assert vault.unwrap_backup_key(export_key, record, wrapped).hex() == wrap["backup_key"]
    with pytest.raises(vault.VaultProtocolError):
        vault.unwrap_backup_key(bytes(64), record, wrapped)


def test_a_sealed_record_state_opens_only_where_it_was_written() -> None:
    vector = VECTORS["record_state"]
    key, record_id = bytes.fromhex(vector["record_key"]), bytes.fromhex(vector["record_id"])
    sealed = bytes.fromhex(vector["sealed"])
    here = Versioned(sealed, vector["version_written"], vector["created"], 0)
    assert state.open_state(key, record_id, here).to_bytes().hex() == vector["plaintext"]
    elsewhere = [
        Versioned(sealed, here.version + 1, here.created, 0),  # put back over a newer value
        Versioned(sealed, here.version, here.created + 1, 0),  # key deleted and re-created
        Versioned(sealed, 1, here.created, 0),  # re-created and written once
    ]
    for stored in elsewhere:
        with pytest.raises(state.Tampered):
            state.open_state(key, record_id, stored)
    with pytest.raises(state.Tampered):
        state.open_state(key, bytes(16), here)
