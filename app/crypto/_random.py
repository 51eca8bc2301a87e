"""Randomness as a parameter.

Code that needs random bytes takes an `Rng` so tests can make runs reproducible
(test vectors) while production always uses the operating system's CSPRNG.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol


class Rng(Protocol):
    def random_bytes(self, length: int) -> bytes: ...


class SystemRng:
    """The operating system's CSPRNG (`os.urandom`)."""

    def random_bytes(self, length: int) -> bytes:
        return os.urandom(length)


class DeterministicRng:
    """A reproducible byte stream for test vectors only: SHAKE-256 over a seed.

    Never use it for real keys; it exists so that `tests/vectors/` can be
    regenerated bit for bit.
    """

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0

    def random_bytes(self, length: int) -> bytes:
        block = hashlib.shake_256(self._seed + self._counter.to_bytes(8, "big")).digest(length)
        self._counter += 1
        return block

    def __repr__(self) -> str:
        return "DeterministicRng(<seed hidden>)"


SYSTEM_RNG: Rng = SystemRng()


def random_bytes(length: int, rng: Rng | None = None) -> bytes:
    return (rng or SYSTEM_RNG).random_bytes(length)
