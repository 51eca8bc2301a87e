"""History transfer chunks against tests/vectors/history_v1.json (docs/protocol.md
§14, "History transfer"; written by scripts/gen_history_vectors.py).

Our code must reproduce the vectors byte for byte, and the chunk must also open
without it: SHA-256 from hashlib, AES-256-GCM from `cryptography`, zlib from the
standard library, and the record batch and type 20 content parsed by hand from
the layout the protocol page gives."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.crypto import DeterministicRng
from app.protocol.attachments import AttachmentSecret, encrypt_attachment
from app.protocol.content import HistoryChunk, decode_content, encode_content
from app.protocol.errors import MalformedMessage
from app.services.history import compress, decode_records, encode_records, open_chunk
from scripts.gen_history_vectors import BLOB_ID, SEED, TRANSFER_ID, records

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "history_v1.json").read_text("utf-8")
)


def _hex(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name])


def test_our_code_reproduces_the_vectors() -> None:
    plaintext = encode_records(records())
    assert plaintext == _hex("plaintext")
    if VECTORS["zlib_version"] == zlib.ZLIB_RUNTIME_VERSION:
        assert compress(plaintext) == _hex("compressed")
    else:  # another zlib build may compress differently; what it inflates to may not
        assert zlib.decompress(compress(plaintext)) == plaintext
    target = io.BytesIO()
    secret = encrypt_attachment(io.BytesIO(_hex("compressed")), target, DeterministicRng(SEED))
    assert target.getvalue() == _hex("encrypted")
    assert (secret.key, secret.digest, secret.size) == (
        _hex("key"),
        _hex("digest"),
        VECTORS["size"],
    )
    opened = open_chunk(_hex("encrypted"), secret)
    assert opened == records()
    announcement = HistoryChunk(
        TRANSFER_ID, 0, True, 3, 3, BLOB_ID, secret.key, secret.digest, secret.size
    )
    assert encode_content(announcement) == _hex("content")
    assert decode_content(_hex("content")) == announcement


class _Bytes:
    """A hand-written reader for the layouts in docs/protocol.md."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        assert self.at + n <= len(self.data)
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def int(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")

    def text16(self) -> str:
        return self.take(self.int(2)).decode("utf-8")


def _parse_batch(data: bytes) -> list[dict[str, Any]]:
    reader = _Bytes(data)
    assert reader.int(1) == 1  # format
    found = []
    for _ in range(reader.int(4)):
        record: dict[str, Any] = {}
        chat = reader.int(1)
        record["chat"] = reader.text16() if chat == 1 else reader.take(reader.int(2)).hex()
        record["uuid"], record["sender"] = reader.text16(), reader.text16()
        flags = reader.int(1)
        record["kind"] = reader.text16()
        record["body"] = reader.take(reader.int(4)).decode("utf-8")
        record["sent_at"], record["received_at"] = struct.unpack(">QQ", reader.take(16))
        record["status"] = reader.text16()
        record["expires_at"], record["edited_at"] = struct.unpack(">QQ", reader.take(16))
        if flags & 2:
            record["quote"] = (reader.text16(), reader.text16(), reader.text16())
        if flags & 4:
            record["reactions"] = json.loads(reader.take(reader.int(4)))
        if flags & 8:
            record["file"] = (reader.text16(), reader.text16(), reader.int(8))
            record["blob"] = reader.text16()
            record["file_key"], record["file_digest"] = reader.take(32), reader.take(32)
            record["caption"] = reader.take(reader.int(4)).decode("utf-8")
            record["thumbnail"] = reader.take(reader.int(2))
            record["thumbnail_size"] = (reader.int(2), reader.int(2))
        record["outgoing"] = bool(flags & 1)
        found.append(record)
    assert reader.at == len(data)
    return found


def test_the_chunk_opens_with_standard_tools_and_the_page_alone() -> None:
    blob, key = _hex("encrypted"), _hex("key")
    assert hashlib.sha256(blob).digest() == _hex("digest")
    # §9: u8 1 | 7-byte nonce prefix | segments of 64 KiB (this one: one, the last).
    assert blob[0] == 1
    prefix, sealed = blob[1:8], blob[8:]
    assert len(sealed) <= 64 * 1024 + 16
    nonce = prefix + (0).to_bytes(4, "big") + b"\x01"
    compressed = AESGCM(key).decrypt(nonce, sealed, b"Cipherline attachment v1")
    assert compressed == _hex("compressed")
    assert len(compressed) == VECTORS["size"]
    batch = _parse_batch(zlib.decompress(compressed))
    assert [(r["uuid"], r["kind"], r["body"], r["sent_at"]) for r in batch] == [
        (r["uuid"], r["kind"], r["body"], r["sent_at"]) for r in VECTORS["records"]
    ]
    reply, notice, picture = batch
    assert (reply["chat"], reply["outgoing"], reply["status"]) == ("bob", True, "read")
    assert reply["quote"][1:] == ("bob", "Where?")
    assert reply["reactions"] == {"bob": ["👍", 1_700_000_001_000]}
    assert (reply["received_at"], reply["edited_at"]) == (0, 1_700_000_060_000)
    assert (notice["chat"], notice["expires_at"]) == ("aa" * 16, 1_800_000_000_000)
    assert picture["file"] == ("harbour.jpg", "image/jpeg", 123_456)
    assert picture["blob"] == "fedcba9876543210fedcba9876543210"
    assert picture["file_key"] == bytes([0x11]) * 32
    assert picture["thumbnail_size"] == (256, 171)

    # Type 20: u8 1 | u8 20 | 16 transfer id | u32 index | u8 last | u32 messages |
    # u32 total | text16 blob id | 32 key | 32 digest | u64 size.
    content = _Bytes(_hex("content"))
    assert (content.int(1), content.int(1)) == (1, 20)
    assert content.take(16) == TRANSFER_ID
    assert (content.int(4), content.int(1), content.int(4), content.int(4)) == (0, 1, 3, 3)
    assert content.text16() == BLOB_ID
    assert (content.take(32), content.take(32)) == (key, _hex("digest"))
    assert content.int(8) == VECTORS["size"]
    assert content.at == len(content.data)


@pytest.mark.parametrize(
    ("at", "value"),
    [(2 + 16 + 4, 2), (2 + 16 + 4 + 1, 0xFF)],
    ids=["last-flag", "too-many-messages"],
)
def test_a_malformed_announcement_is_refused(at: int, value: int) -> None:
    data = bytearray(_hex("content"))
    data[at] = value
    with pytest.raises(MalformedMessage):
        decode_content(bytes(data))
    with pytest.raises(MalformedMessage):
        decode_content(_hex("content")[:-1])
    with pytest.raises(MalformedMessage):
        decode_content(_hex("content") + b"\x00")


def test_an_announcement_refuses_wrong_sizes_when_encoded() -> None:
    good = decode_content(_hex("content"))
    assert isinstance(good, HistoryChunk)
    for bad in (
        HistoryChunk(b"short", 0, True, 1, 1, BLOB_ID, good.key, good.digest, 1),
        HistoryChunk(TRANSFER_ID, 0, True, 1, 1, "", good.key, good.digest, 1),
        HistoryChunk(TRANSFER_ID, 0, True, 1, 1, BLOB_ID, b"k", good.digest, 1),
        HistoryChunk(TRANSFER_ID, 0, True, 1, 1, BLOB_ID, good.key, good.digest, 1 << 40),
    ):
        with pytest.raises(ValueError):
            encode_content(bad)
    assert repr(good).count(good.key.hex()) == 0
    assert decode_records(_hex("plaintext")) == records()
    assert (
        open_chunk(_hex("encrypted"), AttachmentSecret(good.key, good.digest, good.size))
        == records()
    )
