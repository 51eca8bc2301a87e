"""HPKE (RFC 9180, base mode) with the hybrid X25519 + ML-KEM-768 KEM.

Used to seal a message to a long-term public key, such as a Backup Key Vault node's
key that clients pin: nobody in between (the relay) can read it, today or with a
future quantum computer. Suite: KEM MLKEM768-X25519, HKDF-SHA256, AES-256-GCM.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from ._asymmetric import (
    MLKEM768_PUBLIC_KEY_LENGTH,
    MLKEM768_SEED_LENGTH,
    X25519_KEY_LENGTH,
)
from ._errors import DecryptionError, InvalidKey
from ._random import Rng, random_bytes

_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

HPKE_PUBLIC_KEY_LENGTH = MLKEM768_PUBLIC_KEY_LENGTH + X25519_KEY_LENGTH
HPKE_PRIVATE_KEY_LENGTH = MLKEM768_SEED_LENGTH + X25519_KEY_LENGTH


class HpkePublicKey:
    """Serialised as ML-KEM-768 public key (1184 bytes) || X25519 public key (32 bytes)."""

    __slots__ = ("_key", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != HPKE_PUBLIC_KEY_LENGTH:
            raise InvalidKey(f"an HPKE public key is {HPKE_PUBLIC_KEY_LENGTH} bytes")
        try:
            kem_part = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_KEY_LENGTH])
            dh_part = x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_KEY_LENGTH:])
        except ValueError:
            raise InvalidKey("not an HPKE public key") from None
        self._raw = bytes(raw)
        self._key = hpke.MLKEM768X25519PublicKey(kem_part, dh_part)

    def to_bytes(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HpkePublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"HpkePublicKey({self._raw.hex()[:16]}…)"


class HpkePrivateKey:
    """Serialised as ML-KEM-768 seed (64 bytes) || X25519 private key (32 bytes)."""

    __slots__ = ("_key", "_public", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != HPKE_PRIVATE_KEY_LENGTH:
            raise InvalidKey(f"an HPKE private key is {HPKE_PRIVATE_KEY_LENGTH} bytes")
        kem_part = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:MLKEM768_SEED_LENGTH])
        dh_part = x25519.X25519PrivateKey.from_private_bytes(raw[MLKEM768_SEED_LENGTH:])
        self._raw = bytes(raw)
        self._key = hpke.MLKEM768X25519PrivateKey(kem_part, dh_part)
        self._public = HpkePublicKey(
            kem_part.public_key().public_bytes_raw() + dh_part.public_key().public_bytes_raw()
        )

    @classmethod
    def generate(cls, rng: Rng | None = None) -> HpkePrivateKey:
        return cls(random_bytes(HPKE_PRIVATE_KEY_LENGTH, rng))

    def public_key(self) -> HpkePublicKey:
        return self._public

    def to_bytes(self) -> bytes:
        return self._raw

    def __repr__(self) -> str:
        return "HpkePrivateKey(<hidden>)"


def hpke_seal(recipient: HpkePublicKey, plaintext: bytes, info: bytes) -> bytes:
    """Single-shot HPKE: returns enc || ciphertext. `info` binds the context (purpose, version)."""
    return _SUITE.encrypt(plaintext, recipient._key, info=info)


def hpke_open(recipient: HpkePrivateKey, sealed: bytes, info: bytes) -> bytes:
    """Inverse of `hpke_seal`; every failure raises `DecryptionError`."""
    try:
        return _SUITE.decrypt(sealed, recipient._key, info=info)
    except Exception:  # noqa: BLE001 - one opaque error, no oracle (see _errors)
        raise DecryptionError("sealed message failed authentication") from None
