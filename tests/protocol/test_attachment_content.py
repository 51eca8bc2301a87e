"""Attachments with a caption and a thumbnail (content types 3 and 11, docs/protocol.md
§5): round trips, the published vectors, and what a reader refuses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from app.protocol import MalformedMessage
from app.protocol.content import (
    ATTACHMENT,
    ATTACHMENT_THUMBNAIL,
    MAX_THUMBNAIL_BYTES,
    AttachmentPointer,
    decode_content,
    encode_content,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "protocol_v1.json").read_text()
)["content"]

PLAIN = AttachmentPointer(
    "id-1",
    1_700_000_000_000,
    "a caption ✓",
    "blob",
    b"k" * 32,
    b"d" * 32,
    4096,
    "a.png",
    "image/png",
)
WITH_THUMBNAIL = dataclasses.replace(
    PLAIN, thumbnail=b"\x89PNG thumbnail", thumbnail_width=256, thumbnail_height=1
)


@pytest.mark.parametrize("content", [PLAIN, WITH_THUMBNAIL, dataclasses.replace(PLAIN, caption="")])
def test_attachment_round_trip(content: AttachmentPointer) -> None:
    assert decode_content(encode_content(content)) == content


def test_without_a_thumbnail_it_stays_type_3_and_with_one_it_is_type_11() -> None:
    plain = encode_content(PLAIN)
    thumbed = encode_content(WITH_THUMBNAIL)
    assert plain[1] == ATTACHMENT
    assert thumbed[1] == ATTACHMENT_THUMBNAIL
    assert thumbed.startswith(bytes([1, ATTACHMENT_THUMBNAIL]) + plain[2:])


def test_vectors_decode_to_what_they_say() -> None:
    plain = decode_content(bytes.fromhex(VECTORS["attachment"]))
    assert isinstance(plain, AttachmentPointer)
    assert plain.caption == "the view ✓" and plain.thumbnail == b""
    assert bytes.fromhex(VECTORS["attachment"])[1] == ATTACHMENT
    thumbed = decode_content(bytes.fromhex(VECTORS["attachment_thumbnail"]))
    assert thumbed == dataclasses.replace(
        plain,
        thumbnail=bytes.fromhex("ffd8ffe000104a464946") + b"vector",
        thumbnail_width=256,
        thumbnail_height=171,
    )


def _type_11(thumbnail: bytes, width: int, height: int) -> bytes:
    """A type 11 content built by hand, so the reader's limits are tested and not
    only the writer's."""
    body = bytearray(encode_content(PLAIN))
    body[1] = ATTACHMENT_THUMBNAIL
    return (
        bytes(body)
        + len(thumbnail).to_bytes(2, "big")
        + thumbnail
        + width.to_bytes(2, "big")
        + height.to_bytes(2, "big")
    )


def test_the_hand_built_form_matches_the_writer() -> None:
    assert _type_11(b"\x89PNG thumbnail", 256, 1) == encode_content(WITH_THUMBNAIL)


@pytest.mark.parametrize(
    ("thumbnail", "width", "height"),
    [
        (b"x" * (MAX_THUMBNAIL_BYTES + 1), 10, 10),
        (b"x", 257, 10),
        (b"x", 10, 0),
        (b"", 10, 10),
    ],
)
def test_a_reader_refuses_a_thumbnail_out_of_bounds(
    thumbnail: bytes, width: int, height: int
) -> None:
    with pytest.raises(MalformedMessage):
        decode_content(_type_11(thumbnail, width, height))


def test_a_writer_refuses_an_oversized_thumbnail() -> None:
    with pytest.raises(ValueError, match="too large"):
        encode_content(
            dataclasses.replace(WITH_THUMBNAIL, thumbnail=b"x" * (MAX_THUMBNAIL_BYTES + 1))
        )


def test_the_key_and_the_thumbnail_stay_out_of_the_repr() -> None:
    assert "thumbnail" not in repr(WITH_THUMBNAIL) and "kkkk" not in repr(WITH_THUMBNAIL)
