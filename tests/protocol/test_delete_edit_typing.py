"""Delete for everyone, edits and typing indicators (content types 12, 13 and 14,
docs/protocol.md §5): round trips, the published vectors, and what a reader refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.protocol import MalformedMessage
from app.protocol.content import (
    DELETE,
    EDIT,
    MAX_BODY,
    TYPING,
    Delete,
    Edit,
    Typing,
    decode_content,
    encode_content,
)
from app.protocol.encoding import Writer

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "protocol_v1.json").read_text()
)["content"]


@pytest.mark.parametrize(
    "content",
    [
        Delete("id-1", "alice", 1_700_000_000_000),
        Edit("id-1", "alice", 1_700_000_000_001, "fixed ✓\nsecond line"),
        Edit("id-2", "bob", 2, ""),  # decodes; the receiver ignores an empty edit
        Typing(1_700_000_000_002, True),
        Typing(3, False),
    ],
)
def test_round_trip(content: Delete | Edit | Typing) -> None:
    assert decode_content(encode_content(content)) == content


def test_vectors_decode_to_what_they_say() -> None:
    assert decode_content(bytes.fromhex(VECTORS["delete"])) == Delete(
        "00000000-vector", "alice", 1_700_000_005_000
    )
    assert decode_content(bytes.fromhex(VECTORS["edit"])) == Edit(
        "00000000-vector", "alice", 1_700_000_006_000, "hello again ✓"
    )
    assert decode_content(bytes.fromhex(VECTORS["typing_started"])) == Typing(
        1_700_000_007_000, True
    )
    assert decode_content(bytes.fromhex(VECTORS["typing_stopped"])) == Typing(
        1_700_000_008_000, False
    )
    assert [bytes.fromhex(VECTORS[k])[1] for k in ("delete", "edit", "typing_started")] == [
        DELETE,
        EDIT,
        TYPING,
    ]


def test_the_layout_is_the_documented_one() -> None:
    # §5: 12 delete = text16 id | text16 author | u64 sent-at; 13 edit adds the
    # u32-length body; 14 typing = u64 sent-at | u8 action.
    expected = Writer().u8(1).u8(DELETE).text16("m").text16("alice").u64(7).getvalue()
    assert encode_content(Delete("m", "alice", 7)) == expected
    edit = Writer().u8(1).u8(EDIT).text16("m").text16("alice").u64(8).bytes32(b"hi")
    assert encode_content(Edit("m", "alice", 8, "hi")) == edit.getvalue()
    assert encode_content(Typing(9, True)) == Writer().u8(1).u8(TYPING).u64(9).u8(1).getvalue()


def test_a_reader_refuses_malformed_ones() -> None:
    with pytest.raises(MalformedMessage):
        decode_content(Writer().u8(1).u8(TYPING).u64(1).u8(2).getvalue())  # unknown action
    with pytest.raises(MalformedMessage):
        decode_content(Writer().u8(1).u8(DELETE).text16("m").text16("a").getvalue())  # cut
    trailing = Writer().u8(1).u8(DELETE).text16("m").text16("a").u64(1).u8(0)
    with pytest.raises(MalformedMessage):
        decode_content(trailing.getvalue())
    invalid = Writer().u8(1).u8(EDIT).text16("m").text16("a").u64(1).bytes32(b"\xff")
    with pytest.raises(MalformedMessage):
        decode_content(invalid.getvalue())
    too_long = Writer().u8(1).u8(EDIT).text16("m").text16("a").u64(1)
    too_long.bytes32(b"x" * (MAX_BODY + 1))
    with pytest.raises(MalformedMessage):
        decode_content(too_long.getvalue())
