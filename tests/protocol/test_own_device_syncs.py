"""Content types 21 (the blocked list) and 22 (a person or group accepted), which
our own devices share (docs/protocol.md §5 and §13, "Own devices"): their bytes as
the spec lays them out, and every way a crafted one is refused."""

from __future__ import annotations

import struct

import pytest

from app.protocol.content import (
    MAX_BLOCKED,
    AcceptedSync,
    BlockedSync,
    decode_content,
    encode_content,
)
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


def test_an_accepted_sync_is_the_bytes_the_spec_lays_out() -> None:
    person = AcceptedSync("carol", b"")
    assert encode_content(person) == struct.pack(">BB", 1, 22) + _text16("carol") + bytes(2)
    group = AcceptedSync("", b"\x07" * 32)
    assert encode_content(group) == struct.pack(">BBHH", 1, 22, 0, 32) + b"\x07" * 32
    for content in (person, group):
        assert decode_content(encode_content(content)) == content


@pytest.mark.parametrize("group_id", [b"", b"\x07" * 32], ids=["neither", "both"])
def test_an_accepted_sync_names_a_person_or_a_group(group_id: bytes) -> None:
    username = "carol" if group_id else ""
    crafted = (
        struct.pack(">BB", 1, 22) + _text16(username) + struct.pack(">H", len(group_id)) + group_id
    )
    with pytest.raises(MalformedMessage, match="a person or a group"):
        decode_content(crafted)
    with pytest.raises(ValueError, match="a person or a group"):
        encode_content(AcceptedSync(username, group_id))
