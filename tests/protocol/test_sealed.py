"""Sealed sender's envelope and certificate (app/protocol/sealed.py): the vectors of
docs/protocol.md, and every way a sealed envelope must be refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.crypto import DeterministicRng, SigningKey
from app.protocol.errors import MalformedMessage
from app.protocol.identity import DeviceIdentity
from app.protocol.sealed import (
    SMALLEST_BUCKET,
    CertificateCache,
    CertificateError,
    ExpiredCertificate,
    IdentityMismatch,
    SealedSenderError,
    SenderCertificate,
    access_key,
    check_identity,
    open_sealed,
    padded_length,
    seal,
    unseal,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sealed_v1.json"
NOW = 1_700_000_000_000
DAY = 86_400_000


def _fixture() -> tuple[SigningKey, DeviceIdentity, DeviceIdentity]:
    relay = SigningKey.generate(DeterministicRng(b"relay certificate key"))
    alice = DeviceIdentity.generate(DeterministicRng(b"alice identity"))
    bob = DeviceIdentity.generate(DeterministicRng(b"bob identity"))
    return relay, alice, bob


def _vector() -> dict[str, str]:
    relay, alice, bob = _fixture()
    certificate = SenderCertificate.issue(relay, "alice", 1, alice.public.to_bytes(), NOW + DAY)
    frame = bytes.fromhex("0101") + b"inner ratchet message"
    sealed = seal(bob.public, certificate.to_bytes(), frame, DeterministicRng(b"ephemeral"))
    return {
        "relay_key": relay.verify_key().to_bytes().hex(),
        "certificate": certificate.to_bytes().hex(),
        "frame": frame.hex(),
        "sealed": sealed.hex(),
        "access_key": access_key(bytes(range(32))).hex(),
    }


def test_the_published_vectors_still_hold() -> None:
    published = json.loads(VECTORS.read_text())
    assert _vector() == {key: published[key] for key in _vector()}
    _relay, _alice, bob = _fixture()
    opened = open_sealed(
        bob,
        bytes.fromhex(published["sealed"]),
        (SigningKey.generate(DeterministicRng(b"relay certificate key")).verify_key(),),
        NOW,
    )
    assert opened.frame.hex() == published["frame"]
    assert opened.certificate.username == "alice"
    assert opened.certificate.device_id == 1


def test_round_trip_and_identity_check() -> None:
    relay, alice, bob = _fixture()
    certificate = SenderCertificate.issue(relay, "alice", 7, alice.public.to_bytes(), NOW + DAY)
    sealed = seal(bob.public, certificate.to_bytes(), b"\x01\x02frame")
    opened = open_sealed(bob, sealed, (relay.verify_key(),), NOW, cache=CertificateCache())
    assert (opened.certificate.username, opened.certificate.device_id) == ("alice", 7)
    assert opened.frame == b"\x01\x02frame"
    check_identity(opened.certificate, alice.public.to_bytes())
    with pytest.raises(IdentityMismatch):
        check_identity(opened.certificate, bob.public.to_bytes())


def test_forged_expired_and_misdirected_envelopes_are_refused() -> None:
    relay, alice, bob = _fixture()
    impostor = SigningKey.generate()
    trusted = (relay.verify_key(),)
    forged = SenderCertificate.issue(impostor, "alice", 1, alice.public.to_bytes(), NOW + DAY)
    with pytest.raises(CertificateError):
        open_sealed(bob, seal(bob.public, forged.to_bytes(), b"x"), trusted, NOW)
    expired = SenderCertificate.issue(relay, "alice", 1, alice.public.to_bytes(), NOW)
    with pytest.raises(ExpiredCertificate):
        open_sealed(bob, seal(bob.public, expired.to_bytes(), b"x"), trusted, NOW)
    # The cache never lets an expired certificate through, however it was seen before.
    cache = CertificateCache()
    fresh = SenderCertificate.issue(relay, "alice", 1, alice.public.to_bytes(), NOW + 10)
    envelope = seal(bob.public, fresh.to_bytes(), b"x")
    open_sealed(bob, envelope, trusted, NOW, cache=cache)
    with pytest.raises(ExpiredCertificate):
        open_sealed(bob, envelope, trusted, NOW + 10, cache=cache)
    # A certificate whose signed body was altered (the name changed) is forged.
    good = SenderCertificate.issue(relay, "alice", 1, alice.public.to_bytes(), NOW + DAY)
    renamed = good.to_bytes().replace(b"alice", b"mally")
    with pytest.raises(CertificateError):
        open_sealed(bob, seal(bob.public, renamed, b"x"), trusted, NOW)
    # Sealed to Bob: Alice's identity key cannot open it, and no byte may change.
    sealed = seal(bob.public, good.to_bytes(), b"x")
    with pytest.raises(SealedSenderError):
        unseal(alice, sealed)
    for position in (0, 5, 40, len(sealed) - 1):
        altered = bytearray(sealed)
        altered[position] ^= 1
        with pytest.raises((SealedSenderError, MalformedMessage)):
            unseal(bob, bytes(altered))
    with pytest.raises(MalformedMessage):
        unseal(bob, sealed[:20])


def test_copies_share_no_bytes_and_sizes_fall_in_buckets() -> None:
    relay, alice, bob = _fixture()
    certificate = SenderCertificate.issue(relay, "alice", 1, alice.public.to_bytes(), NOW + DAY)
    frame = b"\x01\x02" + bytes(100)
    first = seal(bob.public, certificate.to_bytes(), frame)
    second = seal(bob.public, certificate.to_bytes(), frame)
    # Two copies of one message (as a group fan-out sends) have no 8-byte run in common.
    runs = {first[i : i + 8] for i in range(len(first) - 7)}
    assert not any(second[i : i + 8] in runs for i in range(len(second) - 7))
    assert len(first) == len(second) == SMALLEST_BUCKET + 1 + 32 + 16
    longer = seal(bob.public, certificate.to_bytes(), b"\x01\x02" + bytes(400))
    assert len(longer) == 2 * SMALLEST_BUCKET + 1 + 32 + 16
    assert [padded_length(n) for n in (1, 512, 513, 65_536, 65_537)] == [
        512,
        512,
        1024,
        65_536,
        131_072,
    ]


def test_access_keys_differ_per_profile_key() -> None:
    assert access_key(bytes(32)) != access_key(bytes([1]) + bytes(31))
    assert len(access_key(bytes(32))) == 16
    with pytest.raises(ValueError, match="32 bytes"):
        access_key(bytes(16))
