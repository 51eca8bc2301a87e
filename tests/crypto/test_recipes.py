"""The crypto recipes: round trips, every tamper refused with the one error type."""

from __future__ import annotations

import pickle
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import crypto
from app.crypto import (
    AeadKey,
    DecryptionError,
    DeterministicRng,
    DhPrivateKey,
    HpkePrivateKey,
    InvalidKey,
    InvalidSignature,
    KemPrivateKey,
    SigningKey,
    StreamError,
    StreamOpener,
    StreamSealer,
    aead_open,
    aead_seal,
    hkdf_sha256,
    hpke_open,
    hpke_seal,
)


def test_public_api_is_complete() -> None:
    # Submodules imported on their own (app.crypto.oprf) are not part of the API.
    exported = {
        name
        for name in dir(crypto)
        if not name.startswith("_") and not isinstance(getattr(crypto, name), ModuleType)
    }
    assert set(crypto.__all__) == exported - {"annotations"}


def test_hkdf_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


@given(st.binary(max_size=512), st.binary(max_size=64), st.integers(min_value=0))
def test_aead_any_flipped_bit_is_refused(plaintext: bytes, ad: bytes, position: int) -> None:
    key = AeadKey(b"k" * 32)
    nonce = b"n" * 12
    sealed = aead_seal(key, nonce, plaintext, ad)
    assert aead_open(key, nonce, sealed, ad) == plaintext
    bit = position % (len(sealed) * 8)
    tampered = bytearray(sealed)
    tampered[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptionError):
        aead_open(key, nonce, bytes(tampered), ad)
    with pytest.raises(DecryptionError):
        aead_open(key, nonce, sealed, ad + b"x")
    with pytest.raises(DecryptionError):
        aead_open(key, nonce, sealed[:-1], ad)


def test_secret_keys_never_show_in_repr_or_pickle() -> None:
    key = AeadKey(bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(key)
    assert "hidden" in f"{key}"
    with pytest.raises(TypeError):
        pickle.dumps(key)
    for private in (
        DhPrivateKey.generate(),
        SigningKey.generate(),
        KemPrivateKey.generate(),
        HpkePrivateKey.generate(),
    ):
        assert private.to_bytes().hex() not in repr(private)


def test_wrong_key_lengths_raise_invalid_key() -> None:
    with pytest.raises(InvalidKey):
        AeadKey(b"short")
    with pytest.raises(InvalidKey):
        DhPrivateKey(b"x" * 31)
    with pytest.raises(InvalidKey):
        KemPrivateKey(b"x" * 63)


def test_deterministic_rng_makes_reproducible_keys() -> None:
    first = DhPrivateKey.generate(DeterministicRng(b"seed")).public_key()
    second = DhPrivateKey.generate(DeterministicRng(b"seed")).public_key()
    assert first == second
    assert first != DhPrivateKey.generate(DeterministicRng(b"other")).public_key()


def test_x25519_agreement_and_low_order_point() -> None:
    alice, bob = DhPrivateKey.generate(), DhPrivateKey.generate()
    assert alice.exchange(bob.public_key()) == bob.exchange(alice.public_key())
    with pytest.raises(InvalidKey):
        alice.exchange(crypto.DhPublicKey(bytes(32)))


def test_ed25519_signatures() -> None:
    signer = SigningKey.generate()
    signature = signer.sign(b"message")
    signer.verify_key().verify(signature, b"message")
    with pytest.raises(InvalidSignature):
        signer.verify_key().verify(signature, b"massage")
    with pytest.raises(InvalidSignature):
        SigningKey.generate().verify_key().verify(signature, b"message")


def test_mlkem_encapsulation_round_trip() -> None:
    private = KemPrivateKey.generate()
    ciphertext, shared = private.public_key().encapsulate()
    assert private.decapsulate(ciphertext) == shared
    assert KemPrivateKey(private.to_bytes()).public_key() == private.public_key()


def test_hpke_seal_open_and_tamper() -> None:
    recipient = HpkePrivateKey.generate()
    sealed = hpke_seal(recipient.public_key(), b"backup key", b"cipherline test")
    assert hpke_open(recipient, sealed, b"cipherline test") == b"backup key"
    with pytest.raises(DecryptionError):
        hpke_open(recipient, sealed, b"other context")
    with pytest.raises(DecryptionError):
        hpke_open(HpkePrivateKey.generate(), sealed, b"cipherline test")
    with pytest.raises(DecryptionError):
        hpke_open(recipient, sealed[:100], b"cipherline test")


def _sealed_stream(parts: list[bytes]) -> tuple[AeadKey, bytes, list[bytes]]:
    key, prefix = AeadKey.generate(), b"p" * 7
    sealer = StreamSealer(key, prefix, b"ad")
    return key, prefix, [sealer.seal(p, last=i == len(parts) - 1) for i, p in enumerate(parts)]


def test_stream_round_trip() -> None:
    key, prefix, sealed = _sealed_stream([b"one", b"two", b"three"])
    opener = StreamOpener(key, prefix, b"ad")
    assert [opener.open(s, last=i == 2) for i, s in enumerate(sealed)] == [b"one", b"two", b"three"]
    assert opener.finished


def test_stream_detects_truncation_reorder_and_extension() -> None:
    key, prefix, sealed = _sealed_stream([b"one", b"two", b"three"])
    truncated = StreamOpener(key, prefix, b"ad")
    truncated.open(sealed[0], last=False)
    with pytest.raises(StreamError):
        truncated.open(sealed[1], last=True)  # middle segment passed off as the last
    reordered = StreamOpener(key, prefix, b"ad")
    with pytest.raises(StreamError):
        reordered.open(sealed[1], last=False)
    finished = StreamOpener(key, prefix, b"ad")
    for i, s in enumerate(sealed):
        finished.open(s, last=i == 2)
    with pytest.raises(StreamError):
        finished.open(sealed[2], last=True)
    with pytest.raises(StreamError):
        StreamOpener(key, prefix, b"other ad").open(sealed[0], last=False)
