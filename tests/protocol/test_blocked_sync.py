"""Content type 21, the blocked list our own devices share (docs/protocol.md §5
and §13, "Own devices"): its bytes as the spec lays them out, and every way a
crafted one is refused."""

from __future__ import annotations

import struct

import pytest

from app.protocol.content import MAX_BLOCKED, BlockedSync, decode_content, encode_content
from app.protocol.errors import MalformedMessage


def _text16(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def _type_21(changed_at: int, names: list[str], tail: bytes = b"") -> bytes:
    """Built from the spec's table alone: version 1, type 21, u64, u16, text16s."""
    body = struct.pack(">BBQH", 1, 21, changed_at, len(names))
    return body + b"".join(_text16(name) for name in names) + tail


def test_a_blocked_list_is_the_bytes_the_spec_lays_out() -> None:
    content = BlockedSync(("mallory", "trudy"), 1_767_225_600_000)
    assert encode_content(content) == _type_21(1_767_225_600_000, ["mallory", "trudy"])
    assert decode_content(_type_21(1_767_225_600_000, ["mallory", "trudy"])) == content
    empty = BlockedSync((), 5)
    assert decode_content(encode_content(empty)) == empty


@pytest.mark.parametrize(
    ("data", "says"),
    [
        pytest.param(_type_21(1, ["eve", "eve"]), "each account once", id="twice"),
        pytest.param(_type_21(1, ["eve", ""]), "each account once", id="empty-name"),
        pytest.param(_type_21(1, ["eve"], b"\x00"), None, id="trailing-byte"),
        pytest.param(_type_21(1, ["eve"])[:-1], None, id="cut-short"),
        pytest.param(
            _type_21(1, [f"u{n}" for n in range(MAX_BLOCKED + 1)]), "at most", id="too-many"
        ),
    ],
)
def test_a_crafted_blocked_list_is_refused(data: bytes, says: str | None) -> None:
    with pytest.raises(MalformedMessage, match=says):
        decode_content(data)


def test_a_blocked_list_too_long_to_send_is_not_encoded() -> None:
    with pytest.raises(ValueError, match="at most"):
        encode_content(BlockedSync(tuple(f"u{n}" for n in range(MAX_BLOCKED + 1)), 1))
