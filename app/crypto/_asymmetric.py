"""Typed wrappers for the asymmetric primitives Cipherline uses.

- X25519 for Diffie-Hellman (identity agreement keys, prekeys, ratchet keys)
- Ed25519 for signatures (identity signing keys, sender-key signatures, vault nodes)
- ML-KEM-768 (FIPS 203) for post-quantum key encapsulation

Private keys are generated from `Rng` bytes so test vectors are reproducible, and
their repr never shows key material.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from ._errors import InvalidKey, InvalidSignature
from ._random import Rng, random_bytes

X25519_KEY_LENGTH = 32
ED25519_KEY_LENGTH = 32
ED25519_SIGNATURE_LENGTH = 64
MLKEM768_SEED_LENGTH = 64
MLKEM768_PUBLIC_KEY_LENGTH = 1184
MLKEM768_CIPHERTEXT_LENGTH = 1088
MLKEM768_SHARED_SECRET_LENGTH = 32


class DhPublicKey:
    __slots__ = ("_key", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != X25519_KEY_LENGTH:
            raise InvalidKey("an X25519 public key is 32 bytes")
        self._raw = bytes(raw)
        self._key = x25519.X25519PublicKey.from_public_bytes(self._raw)

    def to_bytes(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DhPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"DhPublicKey({self._raw.hex()[:16]}…)"


class DhPrivateKey:
    __slots__ = ("_key",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != X25519_KEY_LENGTH:
            raise InvalidKey("an X25519 private key is 32 bytes")
        self._key = x25519.X25519PrivateKey.from_private_bytes(bytes(raw))

    @classmethod
    def generate(cls, rng: Rng | None = None) -> DhPrivateKey:
        return cls(random_bytes(X25519_KEY_LENGTH, rng))

    def public_key(self) -> DhPublicKey:
        return DhPublicKey(self._key.public_key().public_bytes_raw())

    def exchange(self, peer: DhPublicKey) -> bytes:
        """X25519; a low-order peer key (all-zero output) raises `InvalidKey`."""
        try:
            return self._key.exchange(peer._key)
        except ValueError:
            raise InvalidKey("peer public key is of low order") from None

    def to_bytes(self) -> bytes:
        return self._key.private_bytes_raw()

    def __repr__(self) -> str:
        return "DhPrivateKey(<hidden>)"


class VerifyKey:
    __slots__ = ("_key", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != ED25519_KEY_LENGTH:
            raise InvalidKey("an Ed25519 public key is 32 bytes")
        self._raw = bytes(raw)
        try:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(self._raw)
        except ValueError:
            raise InvalidKey("not an Ed25519 public key") from None

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raises `InvalidSignature` unless `signature` is valid for `message`."""
        if len(signature) != ED25519_SIGNATURE_LENGTH:
            raise InvalidSignature("signature has the wrong length")
        try:
            self._key.verify(signature, message)
        except _CryptographyInvalidSignature:
            raise InvalidSignature("signature does not verify") from None

    def to_bytes(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self._raw.hex()[:16]}…)"


class SigningKey:
    __slots__ = ("_key",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != ED25519_KEY_LENGTH:
            raise InvalidKey("an Ed25519 private key is 32 bytes")
        self._key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(raw))

    @classmethod
    def generate(cls, rng: Rng | None = None) -> SigningKey:
        return cls(random_bytes(ED25519_KEY_LENGTH, rng))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def verify_key(self) -> VerifyKey:
        return VerifyKey(self._key.public_key().public_bytes_raw())

    def to_bytes(self) -> bytes:
        return self._key.private_bytes_raw()

    def __repr__(self) -> str:
        return "SigningKey(<hidden>)"


class KemPublicKey:
    """An ML-KEM-768 encapsulation key."""

    __slots__ = ("_key", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != MLKEM768_PUBLIC_KEY_LENGTH:
            raise InvalidKey("an ML-KEM-768 public key is 1184 bytes")
        try:
            self._key = mlkem.MLKEM768PublicKey.from_public_bytes(bytes(raw))
        except ValueError:
            raise InvalidKey("not an ML-KEM-768 public key") from None
        self._raw = bytes(raw)

    def encapsulate(self) -> tuple[bytes, bytes]:
        """Returns (ciphertext, shared_secret). The randomness comes from OpenSSL."""
        shared_secret, ciphertext = self._key.encapsulate()
        return ciphertext, shared_secret

    def to_bytes(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KemPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"KemPublicKey({self._raw.hex()[:16]}…)"


class KemPrivateKey:
    """An ML-KEM-768 decapsulation key, stored as its 64-byte seed."""

    __slots__ = ("_key", "_seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != MLKEM768_SEED_LENGTH:
            raise InvalidKey("an ML-KEM-768 seed is 64 bytes")
        self._seed = bytes(seed)
        self._key = mlkem.MLKEM768PrivateKey.from_seed_bytes(self._seed)

    @classmethod
    def generate(cls, rng: Rng | None = None) -> KemPrivateKey:
        return cls(random_bytes(MLKEM768_SEED_LENGTH, rng))

    def public_key(self) -> KemPublicKey:
        return KemPublicKey(self._key.public_key().public_bytes_raw())

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """ML-KEM decapsulation. A malformed ciphertext raises `InvalidKey`; a
        well-formed but wrong one yields an unrelated secret (implicit rejection),
        which the AEAD that follows then rejects."""
        if len(ciphertext) != MLKEM768_CIPHERTEXT_LENGTH:
            raise InvalidKey("an ML-KEM-768 ciphertext is 1088 bytes")
        try:
            return self._key.decapsulate(ciphertext)
        except ValueError:
            raise InvalidKey("not an ML-KEM-768 ciphertext") from None

    def to_bytes(self) -> bytes:
        return self._seed

    def __repr__(self) -> str:
        return "KemPrivateKey(<hidden>)"
