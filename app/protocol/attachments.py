"""Attachment encryption: a random key per file, STREAM over AES-256-GCM, a digest.

Encrypted file (version 1): u8 version || 7-byte nonce prefix || segments of
SEGMENT_SIZE plaintext bytes (the last one shorter, possibly empty), each followed
by its 16-byte tag. The digest is SHA-256 over the whole encrypted file; key,
digest and size travel inside the (end-to-end encrypted) message, so the relay
holds only ciphertext and can neither read nor swap the file unnoticed.
Reading and writing go through file objects the caller opens: never the whole
file in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from app.crypto import (
    NONCE_PREFIX_LENGTH,
    SEGMENT_OVERHEAD,
    AeadKey,
    Rng,
    Sha256,
    StreamError,
    StreamOpener,
    StreamSealer,
    SystemRng,
    constant_time_equal,
)
from app.protocol.errors import AuthenticationError, MalformedMessage

ATTACHMENT_VERSION = 1
SEGMENT_SIZE = 64 * 1024
ASSOCIATED_DATA = b"Cipherline attachment v1"


@dataclass(frozen=True)
class AttachmentSecret:
    key: bytes
    digest: bytes
    size: int

    def __repr__(self) -> str:
        return f"AttachmentSecret(<key hidden>, size={self.size})"


def _read_full(source: BinaryIO, length: int) -> bytes:
    parts: list[bytes] = []
    remaining = length
    while remaining:
        chunk = source.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def encrypt_attachment(
    source: BinaryIO, target: BinaryIO, rng: Rng | None = None
) -> AttachmentSecret:
    rng = rng or SystemRng()
    key = rng.random_bytes(32)
    prefix = rng.random_bytes(NONCE_PREFIX_LENGTH)
    sealer = StreamSealer(AeadKey(key), prefix, ASSOCIATED_DATA)
    digest = Sha256()
    size = 0

    def emit(data: bytes) -> None:
        digest.update(data)
        target.write(data)

    emit(bytes([ATTACHMENT_VERSION]) + prefix)
    pending = _read_full(source, SEGMENT_SIZE)
    while True:
        following = _read_full(source, SEGMENT_SIZE) if len(pending) == SEGMENT_SIZE else b""
        last = not following
        size += len(pending)
        emit(sealer.seal(pending, last=last))
        if last:
            break
        pending = following
    return AttachmentSecret(key, digest.digest(), size)


def decrypt_attachment(source: BinaryIO, target: BinaryIO, secret: AttachmentSecret) -> int:
    """Checks the digest while decrypting; raises AuthenticationError on any change.

    Plaintext is written as segments authenticate; on an error the caller must
    discard the partial output (the client writes to a temporary file).
    """
    digest = Sha256()
    head = _read_full(source, 1 + NONCE_PREFIX_LENGTH)
    if len(head) != 1 + NONCE_PREFIX_LENGTH:
        raise MalformedMessage("the attachment is truncated")
    if head[0] != ATTACHMENT_VERSION:
        raise MalformedMessage(f"attachment version {head[0]} is not supported")
    digest.update(head)
    opener = StreamOpener(AeadKey(secret.key), head[1:], ASSOCIATED_DATA)
    segment = SEGMENT_SIZE + SEGMENT_OVERHEAD
    written = 0
    pending = _read_full(source, segment)
    try:
        while True:
            following = _read_full(source, segment) if len(pending) == segment else b""
            digest.update(pending)
            plaintext = opener.open(pending, last=not following)
            written += len(plaintext)
            target.write(plaintext)
            if not following:
                break
            pending = following
    except StreamError:
        raise AuthenticationError("the attachment was altered or truncated") from None
    if not constant_time_equal(digest.digest(), secret.digest) or written != secret.size:
        raise AuthenticationError("the attachment does not match its digest")
    return written
