"""The code reproduces the published vectors in tests/vectors/protocol_v1.json."""

from __future__ import annotations

import json
from pathlib import Path

from app.crypto import DeterministicRng, DhPrivateKey
from app.protocol.identity import DeviceIdentity, LocalPrekeys
from app.protocol.ratchet import RatchetState
from app.protocol.sender_keys import SenderKeyDistribution, SenderKeyState
from app.protocol.session import Session
from scripts.gen_protocol_vectors import deterministic

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "protocol_v1.json").read_text()
)


def test_deterministic_vectors_are_reproduced() -> None:
    fresh = deterministic()
    for section, values in fresh.items():
        assert VECTORS[section] == values, section


def test_ratchet_vectors_decrypt_from_the_published_keys() -> None:
    vector = VECTORS["ratchet"]
    bob = RatchetState.init_receiver(
        bytes.fromhex(vector["shared_secret"]),
        DhPrivateKey(bytes.fromhex(vector["bob_ratchet_private"])),
    )
    ad = bytes.fromhex(vector["associated_data"])
    for message in vector["messages"]:
        plaintext = bob.decrypt(
            bytes.fromhex(message["header"]), bytes.fromhex(message["ciphertext"]), ad
        )
        assert plaintext == bytes.fromhex(message["plaintext"])


def test_sender_key_vectors_decrypt() -> None:
    vector = VECTORS["sender_key"]
    view = SenderKeyState.from_distribution(
        SenderKeyDistribution.from_bytes(bytes.fromhex(vector["distribution"]))
    )
    assert [view.decrypt(bytes.fromhex(m)) for m in vector["messages"]] == [
        b"to the group",
        b"again",
    ]


def test_recorded_session_start_still_completes() -> None:
    vector = VECTORS["pqxdh"]
    rng = DeterministicRng(vector["seed"].encode())
    _alice = DeviceIdentity.generate(rng)
    bob = DeviceIdentity.generate(rng)
    prekeys = LocalPrekeys.from_bytes(bytes.fromhex(vector["bob_prekeys"]))
    _session, plaintext, _remote = Session.respond(
        bob, prekeys, bytes.fromhex(vector["prekey_message"])
    )
    assert plaintext == bytes.fromhex(vector["plaintext"])
