"""History transfer to a newly linked device (issue #19; docs/protocol.md §14,
"History transfer"). No network and no threads: the client runs these on its
threads (`Client.transfer_history`, `Client._import_history`).

The existing device exports the store's messages, every chat, in the order its
store holds them (by row id, so a transfer can resume after any chunk whatever
arrives or is deleted meanwhile), as numbered chunks of at most CHUNK_MESSAGES
messages and about CHUNK_BYTES of records. A chunk is a version 1 record batch
(`encode_records`), zlib-compressed at level 1 and encrypted exactly like an
attachment (a fresh key per chunk, docs/protocol.md §9), so the relay carries it
on its attachment path and sees a blob like any other; the key and digest reach
the new device only inside the end-to-end encrypted `HistoryChunk` announcement.

The new device imports each chunk in one transaction, skipping message ids it
already holds: a chunk imported twice, or a message that arrived live as well as
in the history, is there once. Attachments arrive as pointers (blob id, key,
digest) to fetch on demand while the relay still holds the file.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from app.crypto import Rng, SystemRng
from app.protocol.attachments import AttachmentSecret, decrypt_attachment, encrypt_attachment
from app.protocol.content import (
    HISTORY_TRANSFER_ID_LENGTH,
    MAX_BODY,
    MAX_HISTORY_CHUNK_BYTES,
    MAX_HISTORY_CHUNK_MESSAGES,
    MAX_THUMBNAIL_BYTES,
)
from app.protocol.encoding import Reader
from app.protocol.errors import MalformedMessage
from app.store import Store
from app.store.database import HistoryChunkRow

HISTORY_FORMAT = 1
COMPRESSION_LEVEL = 1
# A chunk is cut at this many messages or once its records pass CHUNK_BYTES,
# whichever comes first: about 1 MB compressed for ordinary texts, so a dropped
# connection costs little and progress moves every fraction of a second.
CHUNK_MESSAGES = 5_000
CHUNK_BYTES = 4 * 1024 * 1024
# What a reader accepts of one record batch once decompressed (a zip bomb stops here).
MAX_CHUNK_PLAINTEXT = 64 * 1024 * 1024
MAX_RECORD_BODY = 1024 * 1024
MAX_REACTIONS = 64 * 1024
OUTGOING_SETTING = "history_transfer_out"

DIRECT = 1
GROUP = 2
FLAG_OUTGOING = 1
FLAG_QUOTE = 2
FLAG_REACTIONS = 4
FLAG_ATTACHMENT = 8
KNOWN_FLAGS = FLAG_OUTGOING | FLAG_QUOTE | FLAG_REACTIONS | FLAG_ATTACHMENT
KINDS = frozenset({"text", "attachment", "system", "deleted"})
STATUSES = frozenset({"sending", "sent", "delivered", "read", "failed", "received"})

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class HistoryFormatError(MalformedMessage):
    """A history chunk that is malformed, too large or of an unknown version;
    nothing of it is imported."""


@dataclass(frozen=True)
class HistoryAttachment:
    """An attachment's pointer: enough to fetch and open the file from the relay
    while it still holds it (docs/protocol.md §9)."""

    filename: str
    mime: str
    size: int
    blob_id: str | None
    key: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    caption: str = field(default="", repr=False)
    thumbnail: bytes = field(default=b"", repr=False)
    thumbnail_width: int = 0
    thumbnail_height: int = 0


@dataclass(frozen=True)
class HistoryRecord:
    """One message as a history transfer carries it; its chat is a direct chat's
    peer or a group's id (exactly one of them)."""

    peer: str | None
    group_id: bytes | None
    uuid: str
    sender: str
    outgoing: bool
    kind: str
    body: str = field(repr=False)
    sent_at: int
    received_at: int | None
    status: str
    expires_at: int | None = None
    edited_at: int | None = None
    quote: tuple[str, str, str] | None = field(default=None, repr=False)
    reactions: str | None = field(default=None, repr=False)
    attachment: HistoryAttachment | None = None


@dataclass(frozen=True)
class ExportedChunk:
    """The next chunk's records, the row id to resume after, and whether any
    message of the transfer is left after it."""

    records: list[HistoryRecord]
    last_id: int
    more: bool


@dataclass(frozen=True)
class SealedChunk:
    blob: bytes = field(repr=False)
    secret: AttachmentSecret


@dataclass(frozen=True)
class OutgoingTransfer:
    """The existing device's side of a transfer, kept in settings after every
    announced chunk (in the transaction that queues the announcement), so a
    dropped connection, a relay restart or an app restart resumes at the next one.
    `until_id` is the newest message when it began: what arrives later reaches
    the new device directly."""

    transfer_id: bytes = field(repr=False)
    device_id: int
    until_id: int
    after_id: int
    next_index: int
    done: int
    total: int
    finished: bool
    # Cancelled by the user: not resumed at the next start, only when asked again.
    cancelled: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "transfer_id": self.transfer_id.hex(),
            "device_id": self.device_id,
            "until_id": self.until_id,
            "after_id": self.after_id,
            "next_index": self.next_index,
            "done": self.done,
            "total": self.total,
            "finished": self.finished,
            "cancelled": self.cancelled,
        }

    @staticmethod
    def from_json(raw: dict[str, Any]) -> OutgoingTransfer:
        return OutgoingTransfer(
            transfer_id=bytes.fromhex(str(raw["transfer_id"])),
            device_id=int(raw["device_id"]),
            until_id=int(raw["until_id"]),
            after_id=int(raw["after_id"]),
            next_index=int(raw["next_index"]),
            done=int(raw["done"]),
            total=int(raw["total"]),
            finished=bool(raw["finished"]),
            cancelled=bool(raw.get("cancelled", False)),
        )

    def advanced(self, chunk: ExportedChunk) -> OutgoingTransfer:
        return replace(
            self,
            after_id=chunk.last_id,
            next_index=self.next_index + 1,
            done=min(self.total, self.done + len(chunk.records)),
            finished=not chunk.more,
        )


# ---- the record batch (version 1) ---------------------------------------------
def _text(out: bytearray, text: str) -> None:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("a history field is too long for a u16 length")
    out += _U16.pack(len(data))
    out += data


def _long(out: bytearray, data: bytes) -> None:
    out += _U32.pack(len(data))
    out += data


def _encode_record(out: bytearray, record: HistoryRecord) -> None:
    if record.group_id is not None:
        out += _U8.pack(GROUP) + _U16.pack(len(record.group_id)) + record.group_id
    else:
        assert record.peer is not None
        out += _U8.pack(DIRECT)
        _text(out, record.peer)
    _text(out, record.uuid)
    _text(out, record.sender)
    flags = (
        (FLAG_OUTGOING if record.outgoing else 0)
        | (FLAG_QUOTE if record.quote is not None else 0)
        | (FLAG_REACTIONS if record.reactions is not None else 0)
        | (FLAG_ATTACHMENT if record.attachment is not None else 0)
    )
    out += _U8.pack(flags)
    _text(out, record.kind)
    _long(out, record.body.encode("utf-8"))
    out += _U64.pack(record.sent_at) + _U64.pack(record.received_at or 0)
    _text(out, record.status)
    out += _U64.pack(record.expires_at or 0) + _U64.pack(record.edited_at or 0)
    if record.quote is not None:
        for part in record.quote:
            _text(out, part)
    if record.reactions is not None:
        _long(out, record.reactions.encode("utf-8"))
    attachment = record.attachment
    if attachment is not None:
        _text(out, attachment.filename)
        _text(out, attachment.mime)
        out += _U64.pack(attachment.size)
        _text(out, attachment.blob_id or "")
        if len(attachment.key) != 32 or len(attachment.digest) != 32:
            raise ValueError("an attachment's key and digest are 32 bytes each")
        out += attachment.key + attachment.digest
        _long(out, attachment.caption.encode("utf-8"))
        out += _U16.pack(len(attachment.thumbnail)) + attachment.thumbnail
        out += _U16.pack(attachment.thumbnail_width) + _U16.pack(attachment.thumbnail_height)


def encode_records(records: Iterable[HistoryRecord]) -> bytes:
    """u8 format | u32 count | count x record (docs/protocol.md §14)."""
    listed = list(records)
    if len(listed) > MAX_HISTORY_CHUNK_MESSAGES:
        raise ValueError("too many messages for one history chunk")
    out = bytearray(_U8.pack(HISTORY_FORMAT) + _U32.pack(len(listed)))
    for record in listed:
        _encode_record(out, record)
    return bytes(out)


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise HistoryFormatError(f"a history record's {what} is not UTF-8") from None


def _decode_record(reader: Reader) -> HistoryRecord:
    chat_kind = reader.u8()
    peer: str | None = None
    group_id: bytes | None = None
    if chat_kind == DIRECT:
        peer = reader.text16()
        if not peer:
            raise HistoryFormatError("a history record names no chat")
    elif chat_kind == GROUP:
        group_id = reader.bytes16()
        if not group_id:
            raise HistoryFormatError("a history record names no chat")
    else:
        raise HistoryFormatError("a history record's chat is of an unknown kind")
    message_uuid, sender, flags = reader.text16(), reader.text16(), reader.u8()
    if not message_uuid or flags & ~KNOWN_FLAGS:
        raise HistoryFormatError("a history record is malformed")
    kind = reader.text16()
    body = _utf8(reader.bytes32(MAX_RECORD_BODY), "text")
    sent_at, received_at = reader.u64(), reader.u64()
    status = reader.text16()
    if kind not in KINDS or status not in STATUSES:
        raise HistoryFormatError("a history record's kind or status is unknown")
    expires_at, edited_at = reader.u64(), reader.u64()
    quote = None
    if flags & FLAG_QUOTE:
        quote = (reader.text16(), reader.text16(), reader.text16())
    reactions = None
    if flags & FLAG_REACTIONS:
        reactions = _utf8(reader.bytes32(MAX_REACTIONS), "reactions")
    attachment = None
    if flags & FLAG_ATTACHMENT:
        filename, mime, size = reader.text16(), reader.text16(), reader.u64()
        blob_id = reader.text16() or None
        key, digest = reader.raw(32), reader.raw(32)
        caption = _utf8(reader.bytes32(MAX_BODY), "caption")
        thumbnail = reader.bytes16()
        width, height = reader.u16(), reader.u16()
        if len(thumbnail) > MAX_THUMBNAIL_BYTES:
            raise HistoryFormatError("a history record's thumbnail is too large")
        attachment = HistoryAttachment(
            filename, mime, size, blob_id, key, digest, caption, thumbnail, width, height
        )
    return HistoryRecord(
        peer=peer,
        group_id=group_id,
        uuid=message_uuid,
        sender=sender,
        outgoing=bool(flags & FLAG_OUTGOING),
        kind=kind,
        body=body,
        sent_at=sent_at,
        received_at=received_at or None,
        status=status,
        expires_at=expires_at or None,
        edited_at=edited_at or None,
        quote=quote,
        reactions=reactions,
        attachment=attachment,
    )


def decode_records(data: bytes) -> list[HistoryRecord]:
    """Raises HistoryFormatError for anything malformed, of another version or
    with trailing bytes."""
    reader = Reader(data, "history chunk")
    try:
        if reader.u8() != HISTORY_FORMAT:
            raise HistoryFormatError("the history chunk is of an unknown version")
        count = reader.u32()
        if count > MAX_HISTORY_CHUNK_MESSAGES:
            raise HistoryFormatError("the history chunk holds too many messages")
        records = [_decode_record(reader) for _ in range(count)]
        reader.end()
    except HistoryFormatError:
        raise
    except MalformedMessage as error:
        raise HistoryFormatError(str(error)) from None
    return records


def compress(plaintext: bytes) -> bytes:
    return zlib.compress(plaintext, COMPRESSION_LEVEL)


def decompress(data: bytes) -> bytes:
    """zlib (RFC 1950) with the output bounded: a small blob that inflates past
    MAX_CHUNK_PLAINTEXT is refused before it fills memory."""
    inflater = zlib.decompressobj()
    try:
        plaintext = inflater.decompress(data, MAX_CHUNK_PLAINTEXT)
    except zlib.error:
        raise HistoryFormatError("the history chunk does not decompress") from None
    if inflater.unconsumed_tail:
        raise HistoryFormatError("the history chunk is too large once decompressed")
    if not inflater.eof or inflater.unused_data:
        raise HistoryFormatError("the history chunk's compressed data is cut or padded")
    return plaintext


def seal_chunk(records: Iterable[HistoryRecord], rng: Rng | None = None) -> SealedChunk:
    """The records as the relay stores them: encoded, compressed, encrypted under a
    fresh attachment key."""
    compressed = compress(encode_records(records))
    if len(compressed) > MAX_HISTORY_CHUNK_BYTES:
        raise ValueError("the history chunk is too large")
    target = io.BytesIO()
    secret = encrypt_attachment(io.BytesIO(compressed), target, rng)
    return SealedChunk(target.getvalue(), secret)


def open_chunk(blob: bytes, secret: AttachmentSecret) -> list[HistoryRecord]:
    """Raises AuthenticationError for a blob that is not the one announced, and
    HistoryFormatError for an announced one that is malformed."""
    if secret.size > MAX_HISTORY_CHUNK_BYTES:
        raise HistoryFormatError("the history chunk is too large")
    compressed = io.BytesIO()
    decrypt_attachment(io.BytesIO(blob), compressed, secret)
    return decode_records(decompress(compressed.getvalue()))


class BoundedBuffer(io.BytesIO):
    """Collects a download in memory up to `limit` bytes: a relay serving more than
    the announced blob can be is cut off, not buffered."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self._limit:
            raise HistoryFormatError("the relay served more than the history chunk holds")
        return super().write(data)


def sealed_size_bound(size: int) -> int:
    """The most an honest encrypted blob of `size` plaintext bytes can be (the
    version byte, nonce prefix and one tag per 64 KiB segment): a download that
    grows past it is cut off."""
    return 8 + size + 16 * (size // (64 * 1024) + 1)


# ---- the existing device: export -------------------------------------------------
def _record(row: tuple[Any, ...]) -> HistoryRecord:
    attachment = None
    if row[18] is not None:
        attachment = HistoryAttachment(
            filename=row[19],
            mime=row[20],
            size=int(row[21]),
            blob_id=row[22],
            key=bytes(row[23]),
            digest=bytes(row[24]),
            caption=row[25] or "",
            thumbnail=bytes(row[26]) if row[26] is not None else b"",
            thumbnail_width=int(row[27]),
            thumbnail_height=int(row[28]),
        )
    quote = None
    if row[13] is not None:
        quote = (str(row[13]), str(row[14] or ""), str(row[15] or ""))
    return HistoryRecord(
        peer=row[2] if row[1] == "direct" else None,
        group_id=bytes(row[3]) if row[1] != "direct" else None,
        uuid=row[4],
        sender=row[5],
        outgoing=bool(row[6]),
        kind=row[7],
        body=row[8],
        sent_at=int(row[9]),
        received_at=row[10],
        status=row[11],
        expires_at=row[12],
        quote=quote,
        reactions=row[16],
        edited_at=row[17],
        attachment=attachment,
    )


def _estimate(record: HistoryRecord) -> int:
    size = 96 + len(record.body) + len(record.reactions or "")
    if record.attachment is not None:
        size += 128 + len(record.attachment.thumbnail) + len(record.attachment.caption)
    return size


def export_chunk(
    store: Store,
    after_id: int,
    until_id: int,
    *,
    limit: int = CHUNK_MESSAGES,
    budget: int = CHUNK_BYTES,
) -> ExportedChunk:
    """The next chunk of messages with `after_id` < row id <= `until_id` (call on
    the store's thread; reads only)."""
    records: list[HistoryRecord] = []
    last_id = after_id
    size = 0
    for row in store.history.export_rows(after_id, until_id, limit):
        if int(row[0]) == last_id:
            continue  # a second attachment of the same message: one pointer travels
        if row[1] == "group" and row[3] is None:
            last_id = int(row[0])
            continue  # a group chat without a group id cannot be named
        record = _record(row)
        if records and size + _estimate(record) > budget:
            break
        records.append(record)
        size += _estimate(record)
        last_id = int(row[0])
    more = bool(store.history.export_rows(last_id, until_id, 1))
    return ExportedChunk(records, last_id, more)


def begin_transfer(store: Store, device_id: int, rng: Rng | None = None) -> OutgoingTransfer:
    """The transfer to `device_id`: the one kept in settings when it is for that
    device (resumed where it stopped, or already finished), else a new one over
    every message held now."""
    with store.transaction():
        kept = load_outgoing(store)
        if kept is not None and kept.device_id == device_id:
            if kept.cancelled:
                kept = replace(kept, cancelled=False)
                save_outgoing(store, kept)
            return kept
        until_id = store.history.newest_message_id()
        transfer = OutgoingTransfer(
            transfer_id=(rng or SystemRng()).random_bytes(HISTORY_TRANSFER_ID_LENGTH),
            device_id=device_id,
            until_id=until_id,
            after_id=0,
            next_index=0,
            done=0,
            total=store.history.count_messages(0, until_id),
            finished=False,
        )
        save_outgoing(store, transfer)
        return transfer


def load_outgoing(store: Store) -> OutgoingTransfer | None:
    raw = store.settings.get(OUTGOING_SETTING)
    if not isinstance(raw, dict):
        return None
    try:
        return OutgoingTransfer.from_json(raw)
    except (KeyError, TypeError, ValueError):
        return None


def save_outgoing(store: Store, transfer: OutgoingTransfer) -> None:
    store.settings.set(OUTGOING_SETTING, transfer.to_json())


def cancel_outgoing(store: Store) -> None:
    with store.transaction():
        kept = load_outgoing(store)
        if kept is not None and not kept.finished:
            save_outgoing(store, replace(kept, cancelled=True))


# ---- the new device: import --------------------------------------------------------
def import_records(store: Store, records: list[HistoryRecord], *, own_username: str) -> int:
    """Inserts what this store does not hold yet, in one transaction; returns how
    many messages went in. Chats: a direct chat is made when missing (dated by its
    messages, so it sorts where it belongs); a group this device does not know is
    skipped (it came with the account's groups, or was left). Unread counts are
    never touched, so old history does not look new."""
    with store.transaction():
        wanted: dict[str, HistoryRecord] = {}
        for record in records:
            wanted.setdefault(record.uuid, record)
        for present in store.history.existing_uuids(list(wanted)):
            del wanted[present]
        chats: dict[tuple[str | None, bytes | None], int | None] = {}
        newest: dict[int, int] = {}
        rows: list[tuple[Any, ...]] = []
        with_attachment: list[HistoryRecord] = []
        for record in wanted.values():
            key = (record.peer, record.group_id)
            if key not in chats:
                chats[key] = _chat_for(store, record, own_username)
            conversation_id = chats[key]
            if conversation_id is None:
                continue
            newest[conversation_id] = max(newest.get(conversation_id, 0), record.sent_at)
            quote = record.quote or (None, None, None)
            rows.append(
                (
                    conversation_id,
                    record.uuid,
                    record.sender,
                    int(record.outgoing),
                    record.kind,
                    record.body,
                    record.sent_at,
                    record.received_at,
                    record.status,
                    record.expires_at,
                    *quote,
                    record.reactions,
                    record.edited_at,
                )
            )
            if record.attachment is not None:
                with_attachment.append(record)
        store.history.add_messages(rows)
        if with_attachment:
            ids = store.history.ids_of([r.uuid for r in with_attachment])
            store.history.add_attachments(
                [
                    (
                        ids[r.uuid],
                        a.filename,
                        a.mime,
                        a.size,
                        a.blob_id,
                        a.key,
                        a.digest,
                        "remote",  # fetched when clicked, while the relay holds it
                        a.caption,
                        a.thumbnail or None,
                        a.thumbnail_width,
                        a.thumbnail_height,
                    )
                    for r in with_attachment
                    if (a := r.attachment) is not None
                ]
            )
        for conversation_id, at in newest.items():
            store.conversations.touch(conversation_id, at)
        return len(rows)


def _chat_for(store: Store, record: HistoryRecord, own_username: str) -> int | None:
    if record.group_id is not None:
        group = store.conversations.by_group(record.group_id)
        return group.id if group is not None else None
    if record.peer is None or record.peer == own_username:
        return None
    return store.conversations.direct(record.peer, now=record.sent_at).id


def record_announcement(store: Store, row: HistoryChunkRow, *, now: int) -> bool:
    """The new device notes an announced chunk (True if it is new)."""
    return store.history.announce(row, now=now)


def import_chunk(
    store: Store, row: HistoryChunkRow, records: list[HistoryRecord], *, own_username: str
) -> int:
    """Imports an opened chunk and marks it imported, together: a crash leaves both
    or neither. A chunk already settled changes nothing."""
    with store.transaction():
        current = store.history.get(row.transfer_id, row.index)
        if current is None or current.state != "pending":
            return 0
        imported = import_records(store, records, own_username=own_username)
        store.history.settle(row.transfer_id, row.index, "imported")
        return imported


def fail_chunk(store: Store, row: HistoryChunkRow) -> None:
    """A chunk that can never be imported (expired on the relay, or not what was
    announced): counted as done so the transfer can finish."""
    with store.transaction():
        store.history.settle(row.transfer_id, row.index, "failed")


def incoming_progress(store: Store) -> tuple[int, int, bool] | None:
    """(done, total, finished) of the newest transfer to this device, if any."""
    transfer_id = store.history.latest_transfer()
    return None if transfer_id is None else store.history.progress(transfer_id)
