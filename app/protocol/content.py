"""What travels inside the encryption: messages, receipts, attachments, group changes.

Content (version 1): u8 version, u8 type, then the type's fields (see docs/protocol.md).
New types are added under version 1 with the next free number; a reader refuses a
type it does not know (MalformedMessage), so only that one message is lost to it.
Transport frame (what the relay carries as an envelope body): u8 version, u8 kind
(1 = pairwise session envelope, 2 = Sender Key group message), then the bytes.
Receipts and group-management messages are content like any other, so they are
end-to-end encrypted too.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.protocol.encoding import Reader, Writer
from app.protocol.errors import MalformedMessage

CONTENT_VERSION = 1
FRAME_VERSION = 1
FRAME_PAIRWISE = 1
FRAME_GROUP = 2

TEXT = 1
RECEIPT = 2
ATTACHMENT = 3
GROUP_UPDATE = 4
SENDER_KEY = 5
TIMER = 6
RESTORE_NOTICE = 7
GROUP_CHANGE = 8

RECEIPT_DELIVERED = 1
RECEIPT_READ = 2
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Text:
    message_id: str
    sent_at: int
    body: str
    timer_seconds: int = 0

    def __repr__(self) -> str:
        return f"Text({self.message_id!r}, sent at {self.sent_at}, <body hidden>)"


@dataclass(frozen=True)
class Receipt:
    kind: int
    message_ids: tuple[str, ...]


@dataclass(frozen=True)
class AttachmentPointer:
    message_id: str
    sent_at: int
    caption: str
    blob_id: str
    key: bytes
    digest: bytes
    size: int
    filename: str
    mime: str
    timer_seconds: int = 0

    def __repr__(self) -> str:
        return f"AttachmentPointer({self.filename!r}, {self.size} bytes, <key hidden>)"


@dataclass(frozen=True)
class GroupUpdate:
    message_id: str
    sent_at: int
    group_id: bytes
    title: str
    members: tuple[str, ...]

    def __repr__(self) -> str:
        return f"GroupUpdate({self.message_id!r}, {len(self.members)} members, <title hidden>)"


@dataclass(frozen=True)
class SenderKey:
    distribution: bytes  # holds the sender's chain key

    def __repr__(self) -> str:
        return "SenderKey(<distribution hidden>)"


@dataclass(frozen=True)
class TimerUpdate:
    message_id: str
    sent_at: int
    seconds: int


@dataclass(frozen=True)
class RestoreNotice:
    """The first content of every session a restored device starts: it was restored
    from a backup, its old sessions are archived and messages continue in this new
    one (docs/protocol.md, "Restore")."""

    message_id: str
    sent_at: int


@dataclass(frozen=True)
class GroupChangeContent:
    """A signed group state (app.protocol.group_state.GroupChange, as bytes): the way
    membership changes travel since type 4 (`GroupUpdate`), which carried an
    unsigned, unnumbered member list a relay could replay, is no longer applied."""

    change: bytes

    def __repr__(self) -> str:
        return f"GroupChangeContent({len(self.change)} bytes)"


Content = (
    Text
    | Receipt
    | AttachmentPointer
    | GroupUpdate
    | SenderKey
    | TimerUpdate
    | RestoreNotice
    | GroupChangeContent
)


def encode_content(content: Content) -> bytes:
    writer = Writer().u8(CONTENT_VERSION)
    match content:
        case Text():
            writer.u8(TEXT).text16(content.message_id).u64(content.sent_at)
            writer.bytes32(content.body.encode("utf-8")).u32(content.timer_seconds)
        case Receipt():
            writer.u8(RECEIPT).u8(content.kind).u16(len(content.message_ids))
            for message_id in content.message_ids:
                writer.text16(message_id)
        case AttachmentPointer():
            writer.u8(ATTACHMENT).text16(content.message_id).u64(content.sent_at)
            writer.bytes32(content.caption.encode("utf-8")).text16(content.blob_id)
            writer.raw(content.key).raw(content.digest).u64(content.size)
            writer.text16(content.filename).text16(content.mime).u32(content.timer_seconds)
        case GroupUpdate():
            writer.u8(GROUP_UPDATE).text16(content.message_id).u64(content.sent_at)
            writer.bytes16(content.group_id).text16(content.title).u16(len(content.members))
            for member in content.members:
                writer.text16(member)
        case SenderKey():
            writer.u8(SENDER_KEY).bytes32(content.distribution)
        case TimerUpdate():
            writer.u8(TIMER).text16(content.message_id).u64(content.sent_at).u32(content.seconds)
        case RestoreNotice():
            writer.u8(RESTORE_NOTICE).text16(content.message_id).u64(content.sent_at)
        case GroupChangeContent():
            writer.u8(GROUP_CHANGE).bytes32(content.change)
    return writer.getvalue()


def decode_content(data: bytes) -> Content:
    reader = Reader(data, "message content")
    reader.version(CONTENT_VERSION)
    kind = reader.u8()
    content: Content
    if kind == TEXT:
        message_id, sent_at = reader.text16(), reader.u64()
        body = _utf8(reader.bytes32(MAX_BODY))
        content = Text(message_id, sent_at, body, reader.u32())
    elif kind == RECEIPT:
        receipt_kind = reader.u8()
        if receipt_kind not in (RECEIPT_DELIVERED, RECEIPT_READ):
            raise MalformedMessage("unknown receipt type")
        content = Receipt(receipt_kind, tuple(reader.text16() for _ in range(reader.u16())))
    elif kind == ATTACHMENT:
        content = AttachmentPointer(
            message_id=reader.text16(),
            sent_at=reader.u64(),
            caption=_utf8(reader.bytes32(MAX_BODY)),
            blob_id=reader.text16(),
            key=reader.raw(32),
            digest=reader.raw(32),
            size=reader.u64(),
            filename=reader.text16(),
            mime=reader.text16(),
            timer_seconds=reader.u32(),
        )
    elif kind == GROUP_UPDATE:
        message_id, sent_at = reader.text16(), reader.u64()
        group_id, title = reader.bytes16(), reader.text16()
        members = tuple(reader.text16() for _ in range(reader.u16()))
        content = GroupUpdate(message_id, sent_at, group_id, title, members)
    elif kind == SENDER_KEY:
        content = SenderKey(reader.bytes32(4096))
    elif kind == TIMER:
        content = TimerUpdate(reader.text16(), reader.u64(), reader.u32())
    elif kind == RESTORE_NOTICE:
        content = RestoreNotice(reader.text16(), reader.u64())
    elif kind == GROUP_CHANGE:
        content = GroupChangeContent(reader.bytes32(1 << 20))
    else:
        raise MalformedMessage(f"unknown content type {kind}")
    reader.end()
    return content


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("the message text is not valid UTF-8") from None


def encode_frame(kind: int, payload: bytes) -> bytes:
    return bytes([FRAME_VERSION, kind]) + payload


def decode_frame(data: bytes) -> tuple[int, bytes]:
    if len(data) < 2:
        raise MalformedMessage("the envelope is truncated")
    if data[0] != FRAME_VERSION:
        raise MalformedMessage(f"envelope frame version {data[0]} is not supported")
    if data[1] not in (FRAME_PAIRWISE, FRAME_GROUP):
        raise MalformedMessage("unknown envelope frame kind")
    return data[1], data[2:]
