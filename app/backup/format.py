"""The backup file format, versions 1 and 2 (docs/backup-format.md), sans-I/O.

A header in the clear (magic, version, method, vault record id, salt, key
commitment, chunk size), then the STREAM construction over AES-256-GCM: chunks of
`chunk_size` plaintext bytes, each sealed with a nonce made of a per-file prefix,
the chunk counter and a final-chunk flag, and the whole header as associated
data. Truncation, reordering, splicing between backups and any altered byte fail
authentication at a known offset. Inside the stream, typed frames carry the
attachment files (optional) and the store: in version 2 as one encrypted database
image, in version 1 (still read) as one JSON record per row.

`BackupEncoder` turns frames into file bytes; `BackupDecoder` turns file bytes
back into frames. Neither touches a file, a clock or the network.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.backup.errors import CorruptBackup, NotABackup, WrongKey
from app.crypto import (
    NONCE_PREFIX_LENGTH,
    SEGMENT_OVERHEAD,
    AeadKey,
    Rng,
    StreamError,
    StreamOpener,
    StreamSealer,
    SystemRng,
    constant_time_equal,
    hkdf_sha256,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import MalformedMessage, ProtocolError

MAGIC = b"CLBK"
VERSION = 2
READABLE_VERSIONS = (1, 2)
METHOD_KEY = 1
METHOD_PASSWORD = 2
METHOD_NAMES = {METHOD_KEY: "64-digit key", METHOD_PASSWORD: "password"}
FLAG_ATTACHMENTS = 0x01
SALT_LENGTH = 32
COMMITMENT_LENGTH = 32
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 12
MAX_CHUNK_SIZE = 1 << 24
MAX_HEADER_LENGTH = 4 + 1 + 1 + 1 + 4 + 8 + SALT_LENGTH + NONCE_PREFIX_LENGTH + 1 + 255 + 32

STREAM_INFO = b"Cipherline backup v1 stream key"
COMMITMENT_INFO = b"Cipherline backup v1 key commitment"

FRAME_RECORD = 1
FRAME_FILE_START = 2
FRAME_FILE_DATA = 3
FRAME_FILE_END = 4
FRAME_DATABASE_START = 5
FRAME_DATABASE_DATA = 6
FRAME_DATABASE_END = 7
FRAME_END = 0xFF
FRAME_HEADER_LENGTH = 5
MAX_FRAME_LENGTH = MAX_CHUNK_SIZE
# How many bytes of decryption a failed final chunk may spend looking for bytes
# appended after it (about 0.1 s; with 1 MiB chunks, up to 64 appended bytes).
TRAILING_SEARCH_BYTES = 64 << 20


@dataclass(frozen=True)
class BackupHeader:
    version: int
    method: int
    flags: int
    chunk_size: int
    created: int
    salt: bytes
    nonce_prefix: bytes
    record_id: bytes
    commitment: bytes

    @property
    def method_name(self) -> str:
        return METHOD_NAMES.get(self.method, "unknown")

    @property
    def has_attachments(self) -> bool:
        return bool(self.flags & FLAG_ATTACHMENTS)

    def to_bytes(self) -> bytes:
        return (
            Writer()
            .raw(MAGIC)
            .u8(self.version)
            .u8(self.method)
            .u8(self.flags)
            .u32(self.chunk_size)
            .u64(self.created)
            .raw(self.salt)
            .raw(self.nonce_prefix)
            .bytes8(self.record_id)
            .raw(self.commitment)
            .getvalue()
        )

    @staticmethod
    def parse(data: bytes) -> tuple[BackupHeader, int]:
        """The header at the start of `data` and its length in bytes."""
        if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
            raise NotABackup("this file is not a Cipherline backup")
        reader = Reader(data, "backup header")
        try:
            reader.raw(len(MAGIC))
            version = reader.u8()
            if version not in READABLE_VERSIONS:
                raise NotABackup(
                    f"this backup has format version {version}; this Cipherline reads "
                    f"versions up to {VERSION} — update Cipherline to open it"
                )
            header = BackupHeader(
                version=version,
                method=reader.u8(),
                flags=reader.u8(),
                chunk_size=reader.u32(),
                created=reader.u64(),
                salt=reader.raw(SALT_LENGTH),
                nonce_prefix=reader.raw(NONCE_PREFIX_LENGTH),
                record_id=reader.bytes8(),
                commitment=reader.raw(COMMITMENT_LENGTH),
            )
        except ProtocolError:
            raise CorruptBackup(0, "the header is cut short") from None
        if header.method not in METHOD_NAMES:
            raise CorruptBackup(5, "unknown protection method")
        if not MIN_CHUNK_SIZE <= header.chunk_size <= MAX_CHUNK_SIZE:
            raise CorruptBackup(7, "impossible chunk size")
        if (header.method == METHOD_PASSWORD) != (len(header.record_id) == 16):
            raise CorruptBackup(51, "the vault record id does not match the method")
        return header, reader.offset


def derive_commitment(key: bytes, salt: bytes) -> bytes:
    """A value only the right key produces; it reveals nothing about the key."""
    return hkdf_sha256(key, salt=salt, info=COMMITMENT_INFO, length=COMMITMENT_LENGTH)


def _stream_key(key: bytes, salt: bytes) -> AeadKey:
    return AeadKey(hkdf_sha256(key, salt=salt, info=STREAM_INFO, length=32))


def new_header(
    key: bytes,
    method: int,
    *,
    record_id: bytes = b"",
    attachments: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    created: int | None = None,
    rng: Rng | None = None,
    version: int = VERSION,
) -> BackupHeader:
    rng = rng or SystemRng()
    salt = rng.random_bytes(SALT_LENGTH)
    return BackupHeader(
        version=version,
        method=method,
        flags=FLAG_ATTACHMENTS if attachments else 0,
        chunk_size=chunk_size,
        created=int(time.time()) if created is None else created,
        salt=salt,
        nonce_prefix=rng.random_bytes(NONCE_PREFIX_LENGTH),
        record_id=record_id,
        commitment=derive_commitment(key, salt),
    )


def check_key(header: BackupHeader, key: bytes) -> None:
    """Raises WrongKey at once for a well-formed but wrong key."""
    if not constant_time_equal(derive_commitment(key, header.salt), header.commitment):
        raise WrongKey


def frame(kind: int, payload: bytes) -> bytes:
    return frame_header(kind, len(payload)) + payload


def frame_header(kind: int, length: int) -> bytes:
    """For writers that hand the payload on separately (saves copying it)."""
    return kind.to_bytes(1, "big") + length.to_bytes(4, "big")


def record_frame(table: str, payload: bytes) -> bytes:
    return frame(FRAME_RECORD, Writer().text16(table).getvalue() + payload)


@dataclass(frozen=True)
class DatabaseImage:
    """What precedes a version 2 database image: how to open the pages that follow.

    The image is an SQLCipher 4 database under its own random key (raw, no KDF),
    made for this backup alone; the key travels only inside the encrypted stream.
    """

    schema: int
    page_size: int
    size: int
    key: bytes = field(repr=False)

    KEY_LENGTH = 32

    def to_frame(self) -> bytes:
        if len(self.key) != self.KEY_LENGTH:
            raise ValueError("a database image key is 32 bytes")
        payload = Writer().u16(self.schema).u32(self.page_size).u64(self.size).raw(self.key)
        return frame(FRAME_DATABASE_START, payload.getvalue())

    @staticmethod
    def parse(payload: bytes) -> DatabaseImage:
        reader = Reader(payload, "database image entry")
        image = DatabaseImage(
            schema=reader.u16(),
            page_size=reader.u32(),
            size=reader.u64(),
            key=reader.raw(DatabaseImage.KEY_LENGTH),
        )
        reader.end()
        if image.page_size & (image.page_size - 1) or not 512 <= image.page_size <= 65536:
            raise MalformedMessage("the database image has an impossible page size")
        if image.size % image.page_size:
            raise MalformedMessage("the database image is not a whole number of pages")
        return image


class BackupEncoder:
    """Frames in, file bytes out: `start()`, then `write(frame)`…, then `finish()`."""

    def __init__(self, key: bytes, header: BackupHeader) -> None:
        self.header = header
        self._header_bytes = header.to_bytes()
        self._sealer = StreamSealer(
            _stream_key(key, header.salt), header.nonce_prefix, self._header_bytes
        )
        self._pending = bytearray()

    def start(self) -> bytes:
        return self._header_bytes

    def write(self, data: bytes) -> Iterator[bytes]:
        """Sealed chunks that are complete, keeping at least one byte back so the
        final chunk is never empty unless the whole stream is."""
        self._pending += data
        size = self.header.chunk_size
        if len(self._pending) <= size:
            return iter(())
        # Seal straight out of the buffer (no copy per chunk), then drop what was
        # sealed in one move: a backup pushes every byte of the profile through here.
        sealed = []
        start = 0
        with memoryview(self._pending) as view:
            while len(view) - start > size:
                sealed.append(self._sealer.seal(view[start : start + size], last=False))
                start += size
        del self._pending[:start]
        return iter(sealed)

    def finish(self) -> bytes:
        sealed = self._sealer.seal(bytes(self._pending) + frame(FRAME_END, b""), last=True)
        self._pending.clear()
        return sealed


@dataclass(frozen=True)
class Frame:
    kind: int
    payload: bytes
    offset: int  # file offset of the chunk where the frame ends, for errors


class BackupDecoder:
    """File bytes in (after the header), frames out; every chunk authenticated.

    A chunk is only opened once the byte after it is known, so the decoder knows
    whether it must be the final one. `finish()` must be called at end of file.
    """

    def __init__(self, key: bytes, header: BackupHeader, header_length: int) -> None:
        check_key(header, key)
        self.header = header
        self._opener = StreamOpener(
            _stream_key(key, header.salt), header.nonce_prefix, header.to_bytes()
        )
        self._sealed_size = header.chunk_size + SEGMENT_OVERHEAD
        self._buffer = bytearray()
        self._chunk_offset = header_length
        self._plain = bytearray()
        self._ended = False

    @property
    def offset(self) -> int:
        return self._chunk_offset

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buffer += data
        size = self._sealed_size
        frames: list[Frame] = []
        start = 0
        # Open chunks straight out of the buffer and drop them in one move (see
        # BackupEncoder.write); a chunk's frames are few, so they are collected.
        with memoryview(self._buffer) as view:
            while len(view) - start > size:
                frames += self._open(view[start : start + size], last=False)
                start += size
        del self._buffer[:start]
        return iter(frames)

    def finish(self) -> Iterator[Frame]:
        if not self._opener.finished:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            yield from self._open(chunk, last=True)
        if not self._ended:
            raise CorruptBackup(self._chunk_offset, "the end marker is missing")

    def _open(self, chunk: bytes | memoryview, *, last: bool) -> Iterator[Frame]:
        if self._ended:
            raise CorruptBackup(self._chunk_offset, "data after the end marker")
        try:
            plain = self._opener.open(chunk, last=last)
        except StreamError:
            raise self._failure(chunk, last=last) from None
        self._chunk_offset += len(chunk)
        self._plain += plain
        yield from self._frames(last)

    def _failure(self, chunk: bytes | memoryview, *, last: bool) -> CorruptBackup:
        """Names why `chunk` failed. A cut at a chunk boundary and bytes appended
        after the final chunk each leave a chunk that authenticates under another
        reading, so they are named only when that second opening succeeds; anything
        else is a chunk that does not authenticate, which cannot tell an altered
        byte from a cut inside it (the tag is what is missing or wrong either way).
        """
        at = self._chunk_offset
        size = len(chunk)
        if last and size == self._sealed_size and self._opens(chunk, last=False):
            return CorruptBackup(
                at + size,
                f"the file ends after chunk {self._opener.segments_opened - 1}, not the final one",
            )
        # The real final chunk followed by extra bytes: a prefix opens as final. Each
        # try costs a decryption, so the search is bounded (the failure path only).
        budget = TRAILING_SEARCH_BYTES
        length = size if not last else size - 1
        while length > SEGMENT_OVERHEAD and budget > 0:
            if self._opens(chunk[:length], last=True):
                return CorruptBackup(at + length, "extra data follows the end of the backup")
            budget -= length
            length -= 1
        return CorruptBackup(at, "the chunk there is damaged, or the file is cut short inside it")

    def _opens(self, chunk: bytes | memoryview, *, last: bool) -> bool:
        try:
            self._opener.open(chunk, last=last)
        except StreamError:
            return False
        return True

    def _frames(self, last: bool) -> Iterator[Frame]:
        position = 0
        plain = self._plain
        frames: list[Frame] = []
        with memoryview(plain) as view:
            while len(plain) - position >= FRAME_HEADER_LENGTH:
                kind = plain[position]
                length = int.from_bytes(view[position + 1 : position + 5], "big")
                if length > MAX_FRAME_LENGTH:
                    raise CorruptBackup(self._chunk_offset, "a frame is impossibly long")
                end = position + FRAME_HEADER_LENGTH + length
                if end > len(plain):
                    break
                payload = bytes(view[position + FRAME_HEADER_LENGTH : end])
                position = end
                if kind == FRAME_END:
                    if length or position != len(plain) or not last:
                        raise CorruptBackup(self._chunk_offset, "data after the end marker")
                    self._ended = True
                    break
                frames.append(Frame(kind, payload, self._chunk_offset))
        del plain[:position]
        if last and not self._ended:
            raise CorruptBackup(self._chunk_offset, "the end marker is missing")
        return iter(frames)


def parse_record(payload: bytes) -> tuple[str, bytes]:
    """`u16 length || table name || row JSON` (hot in restores: no Reader copy)."""
    if len(payload) < 2:
        raise MalformedMessage("the backup record is truncated")
    end = 2 + int.from_bytes(payload[:2], "big")
    if end > len(payload):
        raise MalformedMessage("the backup record is truncated")
    try:
        table = payload[2:end].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("the backup record holds invalid UTF-8") from None
    return table, payload[end:]
