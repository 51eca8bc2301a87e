"""Writes tests/vectors/vault_v2.json from fixed seeds.

The fleet bundle, response sealing, key transfer, the client's key wrapping and
a sealed record state are deterministic and are reproduced byte for byte by the
tests (these detect change only: our own code made them; the OPAQUE exchange
under them is checked against an independent implementation in
tests/vault/test_opaque_interop.py). An HPKE-sealed request is not (ML-KEM
encapsulation draws from OpenSSL), so one is recorded and the tests check that the
fixed fleet key still opens it into the recorded inner request.
Run with `--check` to compare the deterministic parts without writing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from app.crypto import DeterministicRng, HpkePrivateKey, SigningKey
from app.protocol import vault
from vault_emulator import state
from vault_emulator.records import Versioned

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "vault_v2.json"


def deterministic() -> dict[str, Any]:
    rng = DeterministicRng(b"cipherline vault vectors v2")
    fleet_private = HpkePrivateKey.generate(rng)
    fleet_public = fleet_private.public_key().to_bytes()
    nodes = []
    signers = []
    for name in ("node-1", "node-2"):
        signer = SigningKey.generate(rng)
        signers.append(signer.to_bytes().hex())
        signature = signer.sign(vault.Fleet.signed_message(fleet_public, name))
        nodes.append(vault.FleetNode(name, signer.verify_key().to_bytes(), signature))
    bundle = vault.Fleet(fleet_public, tuple(nodes)).to_bytes()
    response_key, nonce = rng.random_bytes(32), rng.random_bytes(12)
    payload = b"login answer payload"
    response = vault.seal_response(response_key, "login_start", vault.OK, 7, payload, nonce)
    session_key, record_id = rng.random_bytes(64), rng.random_bytes(16)
    transfer_nonce, stored_key = rng.random_bytes(12), rng.random_bytes(60)
    export_key, backup_key, wrap_nonce = (
        rng.random_bytes(64),
        rng.random_bytes(32),
        rng.random_bytes(12),
    )
    record_key, state_nonce = rng.random_bytes(32), rng.random_bytes(12)
    record_state = state.RecordState(
        state.ACTIVE,
        generation=rng.random_bytes(16),
        password_file=rng.random_bytes(192),
        stored_key=stored_key,
        key_format=vault.KEY_WRAPPED,
        limit=10,
        attempts=3,
        open_tickets=(rng.random_bytes(16),),
        seen=((rng.random_bytes(16), 1_800_000_000),),
    )
    at = Versioned(b"", version=4, created=1234, revision=99)
    return {
        "fleet": {
            "hpke_private_key": fleet_private.to_bytes().hex(),
            "hpke_public_key": fleet_public.hex(),
            "signing_private_keys": signers,
            "bundle": bundle.hex(),
        },
        "response": {
            "op": "login_start",
            "response_key": response_key.hex(),
            "nonce": nonce.hex(),
            "status": vault.OK,
            "attempts_left": 7,
            "payload": payload.hex(),
            "sealed": response.hex(),
        },
        "key_transfer": {
            "session_key": session_key.hex(),
            "record_id": record_id.hex(),
            "nonce": transfer_nonce.hex(),
            "stored_key": stored_key.hex(),
            "transfer_key": vault.key_transfer_key(session_key).hex(),
            "sealed": vault.seal_key_transfer(
                session_key, record_id, stored_key, transfer_nonce
            ).hex(),
        },
        "key_wrap": {
            "export_key": export_key.hex(),
            "record_id": record_id.hex(),
            "backup_key": backup_key.hex(),
            "nonce": wrap_nonce.hex(),
            "wrapped": vault.wrap_backup_key(export_key, record_id, backup_key, wrap_nonce).hex(),
        },
        "record_state": {
            "record_key": record_key.hex(),
            "record_id": record_id.hex(),
            "created": at.created,
            "version_written": at.version + 1,
            "nonce": state_nonce.hex(),
            "plaintext": record_state.to_bytes().hex(),
            "sealed": state.seal_state(record_key, record_id, record_state, at, state_nonce).hex(),
        },
    }


def recorded_request(fleet_private: HpkePrivateKey) -> dict[str, Any]:
    rng = DeterministicRng(b"cipherline vault request vector v2")
    record_id = rng.random_bytes(16)
    fields = b"\x00\x03abc"
    body, response_key = vault.seal_request(
        fleet_private.public_key(), "login_start", record_id, fields, rng
    )
    return {
        "op": "login_start",
        "body": body.hex(),
        "response_key": response_key.hex(),
        "record_id": record_id.hex(),
        "fields": fields.hex(),
    }


def main() -> int:
    fresh = deterministic()
    if "--check" in sys.argv:
        stored = json.loads(VECTORS.read_text())
        stored.pop("request")
        return 0 if stored == fresh else 1
    fleet_private = HpkePrivateKey(bytes.fromhex(fresh["fleet"]["hpke_private_key"]))
    fresh["request"] = recorded_request(fleet_private)
    VECTORS.write_text(json.dumps(fresh, indent=2) + "\n")
    print(f"wrote {VECTORS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
