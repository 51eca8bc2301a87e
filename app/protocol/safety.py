"""Safety numbers, after Signal's NumericFingerprintGenerator (version 2 iteration).

For each party: h = SHA-512(0x0000 || identity || stable id); 5199 times more
h = SHA-512(h || identity). The first 30 bytes, as six 5-byte big-endian numbers
mod 100000, give 30 digits. The safety number is the two 30-digit halves, the
smaller first, so both sides see the same 60 digits. Here `identity` is our
identity encoding (both public keys and their binding signature) and the stable
id is the username.

QR payload (version 1): u8 1 || 32-byte local fingerprint || 32-byte remote
fingerprint (the first 32 bytes of each final hash). A scan verifies when the
scanned payload has our halves swapped.
"""

from __future__ import annotations

from app.crypto import constant_time_equal, sha512
from app.protocol.errors import MalformedMessage

ITERATIONS = 5200
QR_VERSION = 1


def _fingerprint_hash(identity: bytes, stable_id: str) -> bytes:
    digest = sha512(b"\x00\x00" + identity + stable_id.encode("utf-8"))
    for _ in range(ITERATIONS - 1):
        digest = sha512(digest + identity)
    return digest


def _digits(digest: bytes) -> str:
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
    )


def safety_number(own_identity: bytes, own_id: str, remote_identity: bytes, remote_id: str) -> str:
    own = _digits(_fingerprint_hash(own_identity, own_id))
    remote = _digits(_fingerprint_hash(remote_identity, remote_id))
    return own + remote if own <= remote else remote + own


def display_groups(number: str) -> list[str]:
    return [number[i : i + 5] for i in range(0, len(number), 5)]


def qr_payload(own_identity: bytes, own_id: str, remote_identity: bytes, remote_id: str) -> bytes:
    return (
        bytes([QR_VERSION])
        + _fingerprint_hash(own_identity, own_id)[:32]
        + _fingerprint_hash(remote_identity, remote_id)[:32]
    )


def verify_scanned(
    scanned: bytes, own_identity: bytes, own_id: str, remote_identity: bytes, remote_id: str
) -> bool:
    """True when the payload scanned from the peer's screen matches what we hold."""
    if len(scanned) != 65 or scanned[0] != QR_VERSION:
        raise MalformedMessage("that QR code is not a Cipherline safety number")
    expected = qr_payload(remote_identity, remote_id, own_identity, own_id)
    return constant_time_equal(scanned, expected)


def identity_changed(previous: bytes | None, current: bytes) -> bool:
    return previous is not None and not constant_time_equal(previous, current)
