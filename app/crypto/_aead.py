"""AES-256-GCM with associated data: the only message cipher in Cipherline."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import DecryptionError, InvalidKey
from ._secret import AeadKey

NONCE_LENGTH = 12
TAG_LENGTH = 16


def _cipher(key: AeadKey | bytes) -> AESGCM:
    raw = key.raw if isinstance(key, AeadKey) else key
    if len(raw) != 32:
        raise InvalidKey("AES-256-GCM needs a 32-byte key")
    return AESGCM(raw)


def aead_seal(
    key: AeadKey | bytes, nonce: bytes, plaintext: bytes, associated_data: bytes
) -> bytes:
    """Encrypt and authenticate; returns ciphertext || 16-byte tag."""
    if len(nonce) != NONCE_LENGTH:
        raise ValueError("AES-GCM nonce must be 12 bytes")
    return _cipher(key).encrypt(nonce, plaintext, associated_data)


def aead_open(
    key: AeadKey | bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes
) -> bytes:
    """Authenticate and decrypt; any mismatch raises `DecryptionError` and nothing else."""
    if len(nonce) != NONCE_LENGTH or len(ciphertext) < TAG_LENGTH:
        raise DecryptionError("ciphertext failed authentication")
    try:
        return _cipher(key).decrypt(nonce, ciphertext, associated_data)
    except InvalidTag:
        raise DecryptionError("ciphertext failed authentication") from None


class ReusableAead:
    """AES-256-GCM bound to one key, for loops that seal many chunks under it."""

    __slots__ = ("_cipher",)

    def __init__(self, key: AeadKey | bytes) -> None:
        self._cipher = _cipher(key)

    def seal(self, nonce: bytes, plaintext: bytes | memoryview, associated_data: bytes) -> bytes:
        return self._cipher.encrypt(nonce, plaintext, associated_data)

    def open(self, nonce: bytes, ciphertext: bytes | memoryview, associated_data: bytes) -> bytes:
        try:
            return self._cipher.decrypt(nonce, ciphertext, associated_data)
        except InvalidTag:
            raise DecryptionError("ciphertext failed authentication") from None

    def seal_into(
        self,
        nonce: bytes,
        plaintext: bytes | memoryview,
        associated_data: bytes,
        out: bytearray | memoryview,
    ) -> int:
        """`seal`, written into `out` (exactly len(plaintext) + 16 bytes): a writer
        filling one large buffer then makes no copy and takes no fresh memory."""
        return self._cipher.encrypt_into(nonce, plaintext, associated_data, out)

    def open_into(
        self,
        nonce: bytes,
        ciphertext: bytes | memoryview,
        associated_data: bytes,
        out: bytearray | memoryview,
    ) -> int:
        """`open`, the plaintext written into `out` (exactly len(ciphertext) - 16
        bytes); on failure `out` holds nothing to be used."""
        try:
            return self._cipher.decrypt_into(nonce, ciphertext, associated_data, out)
        except InvalidTag:
            raise DecryptionError("ciphertext failed authentication") from None

    def __repr__(self) -> str:
        return "ReusableAead(<key hidden>)"
