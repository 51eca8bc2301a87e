"""Writes tests/vectors/protocol_v1.json from fixed seeds.

Everything derived from `DeterministicRng` is reproduced by the tests byte for
byte. The PQXDH prekey message cannot be (ML-KEM encapsulation takes its
randomness from OpenSSL), so it is recorded once and the tests check that the
responder, from the fixed keys, still derives the same session and plaintext.
Run with `--check` to compare without writing.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from app.crypto import DeterministicRng, DhPrivateKey
from app.protocol.content import (
    AttachmentPointer,
    Delete,
    Edit,
    Quote,
    Reaction,
    Text,
    Typing,
    encode_content,
)
from app.protocol.identity import DeviceIdentity, LocalPrekeys, RemoteBundle
from app.protocol.ratchet import RatchetState
from app.protocol.safety import qr_payload, safety_number
from app.protocol.sender_keys import SenderKeyState
from app.protocol.session import Session

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "protocol_v1.json"


def deterministic() -> dict[str, Any]:
    rng = DeterministicRng(b"cipherline protocol vectors v1")
    shared = rng.random_bytes(32)
    bob_ratchet = DhPrivateKey.generate(rng)
    alice = RatchetState.init_sender(shared, bob_ratchet.public_key(), rng)
    ad = b"vector associated data"
    messages = []
    for text in (b"first", b"second", b""):
        header, ciphertext = alice.encrypt(text, ad)
        messages.append(
            {"plaintext": text.hex(), "header": header.hex(), "ciphertext": ciphertext.hex()}
        )
    alice_identity = DeviceIdentity.generate(rng)
    bob_identity = DeviceIdentity.generate(rng)
    sender = SenderKeyState.create(b"vector group", rng)
    distribution = sender.distribution().to_bytes().hex()
    group_messages = [sender.encrypt(text).hex() for text in (b"to the group", b"again")]
    a_pub, b_pub = alice_identity.public.to_bytes(), bob_identity.public.to_bytes()
    return {
        "ratchet": {
            "shared_secret": shared.hex(),
            "bob_ratchet_private": bob_ratchet.to_bytes().hex(),
            "associated_data": ad.hex(),
            "messages": messages,
        },
        "identities": {
            "alice_private": alice_identity.to_bytes().hex(),
            "alice_public": a_pub.hex(),
            "bob_private": bob_identity.to_bytes().hex(),
            "bob_public": b_pub.hex(),
        },
        "safety_number": {
            "number": safety_number(a_pub, "alice", b_pub, "bob"),
            "qr_from_alice": qr_payload(a_pub, "alice", b_pub, "bob").hex(),
        },
        "sender_key": {
            "distribution": distribution,
            "messages": group_messages,
        },
        "content": {
            "text": encode_content(Text("00000000-vector", 1_700_000_000_000, "hello ✓", 0)).hex(),
            "reply": encode_content(
                Text(
                    "00000001-vector",
                    1_700_000_001_000,
                    "yes",
                    0,
                    Quote("00000000-vector", "alice", "hello ✓"),
                )
            ).hex(),
            "reaction": encode_content(
                Reaction("00000000-vector", "alice", 1_700_000_002_000, "👍")
            ).hex(),
            "reaction_removed": encode_content(
                Reaction("00000000-vector", "alice", 1_700_000_003_000, "")
            ).hex(),
            "delete": encode_content(Delete("00000000-vector", "alice", 1_700_000_005_000)).hex(),
            "edit": encode_content(
                Edit("00000000-vector", "alice", 1_700_000_006_000, "hello again ✓")
            ).hex(),
            "typing_started": encode_content(Typing(1_700_000_007_000, True)).hex(),
            "typing_stopped": encode_content(Typing(1_700_000_008_000, False)).hex(),
            "attachment": encode_content(_attachment()).hex(),
            "attachment_thumbnail": encode_content(
                dataclasses.replace(
                    _attachment(),
                    thumbnail=bytes.fromhex("ffd8ffe000104a464946") + b"vector",
                    thumbnail_width=256,
                    thumbnail_height=171,
                )
            ).hex(),
        },
    }


def _attachment() -> AttachmentPointer:
    return AttachmentPointer(
        "00000002-vector",
        1_700_000_004_000,
        "the view ✓",
        "blob-vector",
        bytes(range(32)),
        bytes(range(32, 64)),
        123_456,
        "photo.jpg",
        "image/jpeg",
    )


def recorded_session_start() -> dict[str, Any]:
    rng = DeterministicRng(b"cipherline pqxdh vector v1")
    alice = DeviceIdentity.generate(rng)
    bob = DeviceIdentity.generate(rng)
    bob_prekeys = LocalPrekeys.generate(rng, batch=1)
    upload = bob_prekeys.upload_json(bob)
    entry = {
        "device_id": 1,
        "identity": upload["identity"],
        "signed_prekey": upload["signed_prekey"],
        "last_resort_kem_prekey": upload["last_resort_kem_prekey"],
        "one_time_prekey": upload["one_time_prekeys"][0],
        "one_time_kem_prekey": upload["one_time_kem_prekeys"][0],
    }
    session = Session.initiate(alice, RemoteBundle.from_fetched_device(entry), rng)
    envelope = session.encrypt(b"session start vector", rng)
    return {
        "seed": "cipherline pqxdh vector v1",
        "bob_prekeys": bob_prekeys.to_bytes().hex(),
        "prekey_message": envelope.hex(),
        "plaintext": b"session start vector".hex(),
    }


def main() -> int:
    existing = json.loads(VECTORS.read_text()) if VECTORS.exists() else {}
    vectors = {"version": 1, **deterministic()}
    vectors["pqxdh"] = existing.get("pqxdh") or recorded_session_start()
    if "--check" in sys.argv:
        return 0 if vectors == existing else 1
    VECTORS.write_text(json.dumps(vectors, indent=2, sort_keys=True) + "\n")
    print(f"wrote {VECTORS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
