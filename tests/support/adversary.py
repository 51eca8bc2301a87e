"""Adversaries as fixtures: a relay that keeps every byte it forwards.

`RecordingRelay` sits where the relay sits between a client and the vault: it
forwards each request, and remembers the request and the answer. Tests then play
the relay at full strength: send any recorded body again, at any time, in any
order, to any node, and compare what it saw of right and wrong passwords.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Reply = tuple[int, bytes]
Transport = Callable[[str, bytes], Reply]


@dataclass(frozen=True)
class Forwarded:
    op: str
    body: bytes
    status: int
    answer: bytes


@dataclass
class RecordingRelay:
    forward_to: Transport
    seen: list[Forwarded] = field(default_factory=list)

    def __call__(self, op: str, body: bytes) -> Reply:
        status, answer = self.forward_to(op, body)
        self.seen.append(Forwarded(op, body, status, answer))
        return status, answer

    def mark(self) -> int:
        """A bookmark: `since(mark)` lists what was forwarded after it."""
        return len(self.seen)

    def since(self, mark: int) -> list[Forwarded]:
        return self.seen[mark:]

    def bodies(self, op: str) -> list[bytes]:
        return [item.body for item in self.seen if item.op == op]

    def replay_all(self, to: Transport, items: list[Forwarded] | None = None) -> list[Reply]:
        """Sends every recorded request again, in the order recorded."""
        return [to(item.op, item.body) for item in (self.seen if items is None else items)]
