"""Replies and reactions (content types 9 and 10, docs/protocol.md §5): round trips,
the published vectors, and what a reader refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.protocol import MalformedMessage
from app.protocol.content import (
    MAX_QUOTE_SNIPPET,
    REACTION,
    REPLY,
    TEXT,
    Quote,
    Reaction,
    Text,
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
        Text("id-2", 1_700_000_000_000, "reply ✓", 30, Quote("id-1", "alice", "héllo")),
        Text("id-3", 1, "reply to nothing said", 0, Quote("id-1", "bob", "")),
        Reaction("id-1", "alice", 1_700_000_000_001, "❤️"),
        Reaction("id-1", "alice", 1_700_000_000_002, ""),
    ],
)
def test_reply_and_reaction_round_trip(content: Text | Reaction) -> None:
    assert decode_content(encode_content(content)) == content


def test_a_plain_text_stays_type_1_and_a_reply_is_type_9() -> None:
    plain = encode_content(Text("id", 1, "x", 0))
    reply = encode_content(Text("id", 1, "x", 0, Quote("q", "alice", "snip")))
    assert plain[1] == TEXT
    assert reply[1] == REPLY
    assert reply.startswith(bytes([1, REPLY]) + plain[2:])  # type 1's fields, then the quote


def test_vectors_decode_to_what_they_say() -> None:
    assert decode_content(bytes.fromhex(VECTORS["reply"])) == Text(
        "00000001-vector", 1_700_000_001_000, "yes", 0, Quote("00000000-vector", "alice", "hello ✓")
    )
    assert decode_content(bytes.fromhex(VECTORS["reaction"])) == Reaction(
        "00000000-vector", "alice", 1_700_000_002_000, "👍"
    )
    removed = decode_content(bytes.fromhex(VECTORS["reaction_removed"]))
    assert isinstance(removed, Reaction) and removed.emoji == ""
    assert bytes.fromhex(VECTORS["reaction"])[1] == REACTION


def test_the_sender_cuts_a_long_snippet_and_a_reader_refuses_one() -> None:
    long = "x" * (MAX_QUOTE_SNIPPET + 50)
    sent = decode_content(encode_content(Text("id", 1, "y", 0, Quote("q", "alice", long))))
    assert isinstance(sent, Text) and sent.quote is not None
    assert sent.quote.snippet == "x" * MAX_QUOTE_SNIPPET
    crafted = Writer().u8(1).u8(REPLY).text16("id").u64(1).bytes32(b"y").u32(0)
    crafted.text16("q").text16("alice").text16(long)
    with pytest.raises(MalformedMessage):
        decode_content(crafted.getvalue())


def test_a_reaction_is_one_emoji_and_valid_utf8() -> None:
    with pytest.raises(ValueError):
        encode_content(Reaction("id", "alice", 1, "👍" * 20))
    too_long = Writer().u8(1).u8(REACTION).text16("id").text16("alice").u64(1)
    too_long.bytes8("👍".encode() * 9)
    with pytest.raises(MalformedMessage):
        decode_content(too_long.getvalue())
    invalid = Writer().u8(1).u8(REACTION).text16("id").text16("alice").u64(1).bytes8(b"\xff")
    with pytest.raises(MalformedMessage):
        decode_content(invalid.getvalue())
