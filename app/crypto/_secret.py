"""Typed secret bytes whose repr never shows the value."""

from __future__ import annotations

import hmac
from typing import Self

from ._errors import InvalidKey
from ._random import Rng, random_bytes


class SecretKey:
    """A fixed-length symmetric key.

    Subclasses fix `LENGTH`. The value is reachable only through `.raw`, so a key
    never ends up in a log line by way of `repr`, f-strings or exception messages.
    """

    LENGTH = 32
    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray) or len(raw) != self.LENGTH:
            raise InvalidKey(f"{type(self).__name__} needs exactly {self.LENGTH} bytes")
        self._raw = bytes(raw)

    @classmethod
    def generate(cls, rng: Rng | None = None) -> Self:
        return cls(random_bytes(cls.LENGTH, rng))

    @property
    def raw(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, SecretKey)
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{self.LENGTH} bytes hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would copy the key to wherever the pickle goes (queues, caches).
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class AeadKey(SecretKey):
    """A 256-bit key for AES-256-GCM."""
