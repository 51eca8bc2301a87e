"""The STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár, 2015) over AES-256-GCM.

A long plaintext is cut into segments; segment *i* is sealed with the nonce

    nonce_prefix (7 bytes) || i (4 bytes, big-endian) || last (1 byte: 0x00 or 0x01)

so reordering, dropping, duplicating or truncating segments fails authentication,
and the final segment cannot be passed off as a middle one or the other way round.
This is the nonce layout of Tink's streaming AEAD. Attachments and backups both
use it; their formats (docs/) fix the key derivation and associated data.
"""

from __future__ import annotations

from ._aead import NONCE_LENGTH, TAG_LENGTH, ReusableAead
from ._errors import DecryptionError
from ._secret import AeadKey

NONCE_PREFIX_LENGTH = 7
MAX_SEGMENTS = 2**32
SEGMENT_OVERHEAD = TAG_LENGTH


class StreamError(DecryptionError):
    """A stream was truncated, extended, reordered or altered."""


def stream_nonce(nonce_prefix: bytes, index: int, last: bool) -> bytes:
    if len(nonce_prefix) != NONCE_PREFIX_LENGTH:
        raise ValueError("STREAM nonce prefix must be 7 bytes")
    if not 0 <= index < MAX_SEGMENTS:
        raise ValueError("STREAM segment index out of range")
    nonce = nonce_prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
    assert len(nonce) == NONCE_LENGTH
    return nonce


class StreamSealer:
    """Seals segments in order. Call `seal(chunk, last=True)` exactly once, at the end."""

    def __init__(self, key: AeadKey, nonce_prefix: bytes, associated_data: bytes) -> None:
        self._aead = ReusableAead(key)
        self._prefix = nonce_prefix
        self._ad = associated_data
        self._index = 0
        self._finished = False

    @property
    def segments_sealed(self) -> int:
        return self._index

    def seal(self, plaintext: bytes | memoryview, *, last: bool) -> bytes:
        if self._finished:
            raise ValueError("stream already finished")
        nonce = stream_nonce(self._prefix, self._index, last)
        self._index += 1
        self._finished = last
        return self._aead.seal(nonce, plaintext, self._ad)


class StreamOpener:
    """Opens segments in order; `finished` turns true only after an authentic last segment."""

    def __init__(self, key: AeadKey, nonce_prefix: bytes, associated_data: bytes) -> None:
        self._aead = ReusableAead(key)
        self._prefix = nonce_prefix
        self._ad = associated_data
        self._index = 0
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def segments_opened(self) -> int:
        return self._index

    def open(self, ciphertext: bytes | memoryview, *, last: bool) -> bytes:
        if self._finished:
            raise StreamError("data after the final segment")
        try:
            plaintext = self._aead.open(
                stream_nonce(self._prefix, self._index, last), ciphertext, self._ad
            )
        except DecryptionError:
            raise StreamError(f"segment {self._index} failed authentication") from None
        self._index += 1
        self._finished = last
        return plaintext
