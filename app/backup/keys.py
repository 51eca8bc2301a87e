"""The 64-digit backup key: 32 random bytes shown as 64 hexadecimal digits."""

from __future__ import annotations

import string

from app.backup.errors import InvalidKeyFormat
from app.crypto import Rng, SystemRng

KEY_LENGTH = 32
DIGITS = KEY_LENGTH * 2
_SEPARATORS = str.maketrans("", "", " -\t\n\r")
_HEX = set(string.hexdigits.lower())


def generate_backup_key(rng: Rng | None = None) -> bytes:
    return (rng or SystemRng()).random_bytes(KEY_LENGTH)


def format_key(key: bytes) -> str:
    """`1a2b 3c4d …`: 16 groups of 4 lowercase hex digits."""
    if len(key) != KEY_LENGTH:
        raise ValueError("a backup key is 32 bytes")
    digits = key.hex()
    return " ".join(digits[i : i + 4] for i in range(0, DIGITS, 4))


def parse_key(text: str) -> bytes:
    """Accepts any spacing, dashes and case; refuses before anything is tried."""
    digits = text.translate(_SEPARATORS).lower()
    bad = sorted({c for c in digits if c not in _HEX})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:3])
        raise InvalidKeyFormat(f"it may hold only 0-9 and a-f, not {shown}")
    if len(digits) != DIGITS:
        raise InvalidKeyFormat(f"it has {len(digits)} digits instead of {DIGITS}")
    return bytes.fromhex(digits)
