"""The version 3 backup repository format (docs/backup-format.md, "Version 3"), sans-I/O.

A version 3 backup is a folder of immutable files: packs of encrypted chunks,
index files saying which pack holds which chunk, and one snapshot file per
backup listing the chunks of the store's pages and of each attachment. A chunk's
id is a keyed hash of its plaintext, so a chunk already in the folder is never
written again, and nobody without the key can tell two chunks' contents equal.
Every file starts with the same clear header (magic, version 3, kind, method,
vault record id, salt, key commitment); its body is sealed under a key derived
from the backup key and the file's own salt.

Nothing here touches a file, a clock or the network.
"""

from __future__ import annotations

import hmac as _stdlib_hmac
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from app.backup.errors import CorruptBackup, NotABackup, WrongKey
from app.backup.format import METHOD_KEY, METHOD_NAMES, METHOD_PASSWORD
from app.crypto import (
    DecryptionError,
    ReusableAead,
    Rng,
    SystemRng,
    constant_time_equal,
    hkdf_sha256,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import ProtocolError

MAGIC = b"CLBK"
VERSION = 3
KIND_SNAPSHOT = 1
KIND_INDEX = 2
KIND_PACK = 3
KIND_NAMES = {KIND_SNAPSHOT: "snapshot", KIND_INDEX: "index", KIND_PACK: "pack"}
SALT_LENGTH = 32
COMMITMENT_LENGTH = 32
ID_LENGTH = 32
TAG_LENGTH = 16
# Common header without the record id: magic, version, kind, method, flags,
# created, salt, record id length byte, commitment.
BASE_HEADER_LENGTH = 4 + 1 + 1 + 1 + 1 + 8 + SALT_LENGTH + 1 + COMMITMENT_LENGTH
SNAPSHOT_EXTRA_LENGTH = 16  # u64 total bytes, u64 added bytes (snapshot files only)
MAX_HEADER_LENGTH = BASE_HEADER_LENGTH + 16 + SNAPSHOT_EXTRA_LENGTH

FLAG_ATTACHMENTS = 0x01  # snapshot files only
MAX_CHUNK = 1 << 24  # plaintext bytes of one chunk
MAX_BODY = 1 << 30  # plaintext bytes of one snapshot or index body
MAX_PATH = 4096
PACK_TARGET = 16 << 20  # a pack is closed once it holds this many bytes

COMMITMENT_INFO = b"Cipherline backup v3 key commitment"
FILE_KEY_INFO = {
    KIND_SNAPSHOT: b"Cipherline backup v3 snapshot key",
    KIND_INDEX: b"Cipherline backup v3 index key",
    KIND_PACK: b"Cipherline backup v3 pack key",
}
CHUNK_ID_INFO = b"Cipherline backup v3 chunk id key"
FOLDER_NAME_INFO = b"Cipherline backup v3 folder name"
ZERO_NONCE = bytes(12)
_U32 = struct.Struct(">I")
_PACK = struct.Struct(">32sI")
_BLOB = struct.Struct(">32sQI")


def chunk_id_key(key: bytes) -> bytes:
    """The HMAC key of chunk ids: the same for every file under one backup key."""
    return hkdf_sha256(key, salt=None, info=CHUNK_ID_INFO, length=32)


def chunk_id(id_key: bytes, plain: bytes | memoryview) -> bytes:
    return _stdlib_hmac.digest(id_key, plain, "sha256")


def folder_name(key: bytes) -> str:
    """`cipherline-<16 hex>`: one repository per backup key, so a new key (a new
    method, another profile) never mixes files it cannot read with its own."""
    return "cipherline-" + hkdf_sha256(key, salt=None, info=FOLDER_NAME_INFO, length=8).hex()


@dataclass(frozen=True)
class Header:
    kind: int
    method: int
    flags: int
    created_ns: int
    salt: bytes
    record_id: bytes
    commitment: bytes
    total: int = 0  # snapshot files: bytes of every pack the snapshot uses
    added: int = 0  # snapshot files: bytes this backup wrote into the folder

    @property
    def method_name(self) -> str:
        return METHOD_NAMES.get(self.method, "unknown")

    def to_bytes(self) -> bytes:
        writer = (
            Writer()
            .raw(MAGIC)
            .u8(VERSION)
            .u8(self.kind)
            .u8(self.method)
            .u8(self.flags)
            .u64(self.created_ns)
            .raw(self.salt)
            .bytes8(self.record_id)
            .raw(self.commitment)
        )
        if self.kind == KIND_SNAPSHOT:
            writer.u64(self.total).u64(self.added)
        return writer.getvalue()

    @staticmethod
    def parse(data: bytes, expected_kind: int | None = None) -> tuple[Header, int]:
        """The header at the start of `data` and its length."""
        if data[:4] != MAGIC:
            raise NotABackup("this file is not a Cipherline backup")
        if len(data) < 6 or data[4] != VERSION:
            raise NotABackup("this file is not a version 3 Cipherline backup file")
        reader = Reader(data, "backup header")
        try:
            reader.raw(5)
            kind = reader.u8()
            method = reader.u8()
            flags = reader.u8()
            created = reader.u64()
            salt = reader.raw(SALT_LENGTH)
            record_id = reader.bytes8()
            commitment = reader.raw(COMMITMENT_LENGTH)
            total = added = 0
            if kind == KIND_SNAPSHOT:
                total, added = reader.u64(), reader.u64()
        except ProtocolError:
            raise CorruptBackup(0, "the header is cut short") from None
        if kind not in KIND_NAMES or (expected_kind is not None and kind != expected_kind):
            raise CorruptBackup(5, "this file is not of the kind its place in the folder says")
        if method not in METHOD_NAMES:
            raise CorruptBackup(6, "unknown protection method")
        allowed = FLAG_ATTACHMENTS if kind == KIND_SNAPSHOT else 0
        if flags & ~allowed:
            raise CorruptBackup(7, "unknown flags are set")
        if (method == METHOD_PASSWORD) != (len(record_id) == 16):
            raise CorruptBackup(48, "the vault record id does not match the method")
        header = Header(kind, method, flags, created, salt, record_id, commitment, total, added)
        return header, reader.offset

    def check_key(self, key: bytes) -> None:
        if not constant_time_equal(derive_commitment(key, self.salt), self.commitment):
            raise WrongKey

    def file_key(self, key: bytes) -> bytes:
        return hkdf_sha256(key, salt=self.salt, info=FILE_KEY_INFO[self.kind], length=32)


def derive_commitment(key: bytes, salt: bytes) -> bytes:
    return hkdf_sha256(key, salt=salt, info=COMMITMENT_INFO, length=COMMITMENT_LENGTH)


def new_header(
    key: bytes,
    kind: int,
    method: int,
    *,
    record_id: bytes = b"",
    created_ns: int,
    flags: int = 0,
    total: int = 0,
    added: int = 0,
    rng: Rng | None = None,
) -> Header:
    if method not in (METHOD_KEY, METHOD_PASSWORD):
        raise ValueError("unknown method")
    salt = (rng or SystemRng()).random_bytes(SALT_LENGTH)
    return Header(
        kind, method, flags, created_ns, salt, record_id, derive_commitment(key, salt), total, added
    )


def blob_nonce(number: int) -> bytes:
    """Blob `number` (from 0) of a pack: a counter, unique under the pack's own key."""
    return number.to_bytes(12, "big")


# ---- snapshot and index bodies ------------------------------------------------------


def seal_body(key: bytes, header: Header, plain: bytes) -> bytes:
    """A whole snapshot or index file: header || AES-256-GCM(body), header as AD.
    The file key is used once (its salt is fresh), so the nonce is zero."""
    if len(plain) > MAX_BODY:
        raise ValueError("a snapshot or index body is at most 1 GiB")
    head = header.to_bytes()
    return head + ReusableAead(header.file_key(key)).seal(ZERO_NONCE, plain, head)


def open_body(key: bytes, data: bytes, kind: int) -> tuple[Header, bytes]:
    header, length = Header.parse(data, kind)
    header.check_key(key)
    if len(data) - length > MAX_BODY + TAG_LENGTH:
        raise CorruptBackup(length, "the file is impossibly long")
    try:
        plain = ReusableAead(header.file_key(key)).open(
            ZERO_NONCE, memoryview(data)[length:], data[:length]
        )
    except DecryptionError:
        detail = "it ends early" if len(data) - length < TAG_LENGTH else "it fails authentication"
        raise CorruptBackup(length, detail) from None
    return header, plain


class BlobEntry(NamedTuple):
    """A tuple: an index holds one per chunk, and every backup reads them all."""

    chunk_id: bytes
    offset: int
    length: int  # sealed bytes in the pack: plaintext + 16


@dataclass(frozen=True)
class PackEntry:
    pack_id: bytes  # SHA-256 of the whole pack file, also its name
    blobs: tuple[BlobEntry, ...]


def _read_ids(reader: Reader, count: int) -> tuple[bytes, ...]:
    """`count` chunk ids in one read: a snapshot names one per store page, and every
    backup and prune reads them all."""
    block = reader.raw(count * ID_LENGTH)
    return tuple(block[at : at + ID_LENGTH] for at in range(0, len(block), ID_LENGTH))


def encode_index(packs: list[PackEntry]) -> bytes:
    writer = Writer().u32(len(packs))
    for pack in packs:
        writer.raw(pack.pack_id).u32(len(pack.blobs))
        for blob in pack.blobs:
            writer.raw(blob.chunk_id).u64(blob.offset).u32(blob.length)
    return writer.getvalue()


def decode_index(plain: bytes) -> list[PackEntry]:
    """Pack entries; blobs in pack order, contiguous (checked here).

    Parsed with `struct` rather than `Reader`: an index holds an entry per chunk
    (one per store page), and every backup and prune reads all of them."""
    packs = []
    position = 0
    end = len(plain)
    try:
        (count,) = _U32.unpack_from(plain, 0)
        position = 4
        for _ in range(count):
            pack_id, blob_count = _PACK.unpack_from(plain, position)
            position += _PACK.size
            stop = position + blob_count * _BLOB.size
            if stop > end:
                raise CorruptBackup(0, "an index file is malformed")
            blobs = tuple(map(BlobEntry._make, _BLOB.iter_unpack(plain[position:stop])))
            position = stop
            following = blobs[0].offset if blobs else 0
            for _chunk, offset, length in blobs:
                if not TAG_LENGTH < length <= MAX_CHUNK + TAG_LENGTH:
                    raise CorruptBackup(0, "an index entry has an impossible length")
                if offset != following:
                    raise CorruptBackup(0, "an index lists a pack's chunks out of order")
                following = offset + length
            packs.append(PackEntry(pack_id, blobs))
    except struct.error:
        raise CorruptBackup(0, "an index file is malformed") from None
    if position != end:
        raise CorruptBackup(0, "an index file is malformed")
    return packs


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    chunks: tuple[bytes, ...]


@dataclass(frozen=True)
class Snapshot:
    """What one backup holds: the store's pages and the attachment files, by chunk id."""

    schema: int
    page_size: int
    reserve: int  # bytes at the end of each page SQLite keeps free; not stored
    pages: tuple[bytes, ...] = field(repr=False)  # chunk id of page 1, 2, …
    files: tuple[FileEntry, ...] = field(repr=False)

    def chunk_ids(self) -> set[bytes]:
        ids = set(self.pages)
        for entry in self.files:
            ids.update(entry.chunks)
        return ids

    def encode(self) -> bytes:
        writer = Writer().u16(self.schema).u32(self.page_size).u8(self.reserve)
        writer.u32(len(self.pages)).raw(b"".join(self.pages))
        writer.u32(len(self.files))
        for entry in self.files:
            writer.text16(entry.path).u64(entry.size).u32(len(entry.chunks))
            writer.raw(b"".join(entry.chunks))
        return writer.getvalue()

    @staticmethod
    def decode(plain: bytes) -> Snapshot:
        reader = Reader(plain, "snapshot")
        try:
            schema, page_size, reserve = reader.u16(), reader.u32(), reader.u8()
            pages = _read_ids(reader, reader.u32())
            files = []
            for _ in range(reader.u32()):
                path, size = reader.text16(), reader.u64()
                files.append(FileEntry(path, size, _read_ids(reader, reader.u32())))
            reader.end()
        except ProtocolError:
            raise CorruptBackup(0, "the snapshot is malformed") from None
        if page_size & (page_size - 1) or not 512 <= page_size <= 65536:
            raise CorruptBackup(0, "the snapshot has an impossible page size")
        if not 48 <= reserve < page_size // 2 or not pages:
            raise CorruptBackup(0, "the snapshot's database pages are impossible")
        previous = None
        for entry in files:
            check_path(entry.path)
            key = entry.path.encode()
            if previous is not None and key <= previous:
                raise CorruptBackup(0, f"the file {entry.path} is listed twice or out of order")
            previous = key
        # A file where another file's folder would be: restore could not make both.
        paths = {entry.path for entry in files}
        for entry in files:
            parts = entry.path.split("/")
            for depth in range(1, len(parts)):
                if "/".join(parts[:depth]) in paths:
                    raise CorruptBackup(
                        0, f"the file {entry.path} is inside another file of the backup"
                    )
        return Snapshot(schema, page_size, reserve, pages, tuple(files))


def check_path(path: str) -> None:
    """Attachment paths: relative, '/'-separated, no empty, '.' or '..' part."""
    parts = path.split("/")
    if (
        not path
        or len(path.encode()) > MAX_PATH
        or "\\" in path
        or "\x00" in path
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise CorruptBackup(0, f"the file name {path!r} points outside the attachments folder")
