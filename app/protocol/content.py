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

import dataclasses
from dataclasses import dataclass, field

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
REPLY = 9
REACTION = 10
# An attachment with a thumbnail (issue #24): type 3's fields, then the thumbnail.
# Without a thumbnail an attachment still travels as type 3, so a reader that
# predates type 11 loses only the attachments that carry one.
ATTACHMENT_THUMBNAIL = 11
DELETE = 12
EDIT = 13
TYPING = 14
PROFILE_KEY = 15
DEVICE_LIST = 16
SENT_TRANSCRIPT = 17
READ_SYNC = 18
VERIFIED_SYNC = 19
# One chunk of a history transfer to a newly linked device (docs/protocol.md §14,
# "History transfer"): from our own devices only, like types 17-19.
HISTORY_CHUNK = 20
# Everyone the user blocked, to our own devices when it changes (like 17-19).
BLOCKED_SYNC = 21
# A person or group the user accepted (a request answered, a chat started), to our
# own devices (like 17-19).
ACCEPTED_SYNC = 22
# What a sent transcript may carry: a text or reply, or an attachment.
TRANSCRIBED = (TEXT, REPLY, ATTACHMENT, ATTACHMENT_THUMBNAIL)
# A signed device list is at most 32 devices of about 100 bytes each.
MAX_DEVICE_LIST = 8192
# A history transfer names itself with 16 random bytes; a chunk holds at most this
# many messages and its encrypted blob at most this many plaintext bytes (a sender
# cuts chunks far below both: app/services/history.py).
HISTORY_TRANSFER_ID_LENGTH = 16
MAX_HISTORY_CHUNK_MESSAGES = 50_000
MAX_HISTORY_CHUNK_BYTES = 64 * 1024 * 1024
MAX_BLOB_ID = 128
# A blocked list names at most this many accounts (Signal caps its own lower).
MAX_BLOCKED = 4096

RECEIPT_DELIVERED = 1
RECEIPT_READ = 2
MAX_BODY = 64 * 1024
# A quote carries a short snippet of what it quotes, so it still shows where the
# original was deleted (or never arrived); longer is cut by the sender.
MAX_QUOTE_SNIPPET = 200
MAX_EMOJI_BYTES = 32
# How long after sending its author may delete a message for everyone or edit it
# (as Signal allows); receivers check it against the times the contents carry.
CHANGE_WINDOW_MS = 24 * 3600 * 1000
# A thumbnail is a preview, not the picture: small enough to travel inside the
# message and to keep in the store for every image in a chat.
MAX_THUMBNAIL_BYTES = 16 * 1024
MAX_THUMBNAIL_SIDE = 256


@dataclass(frozen=True)
class Quote:
    """The message a reply answers: named by its id and author (as Signal names it
    by author and timestamp), with a snippet of its text."""

    message_id: str
    author: str
    snippet: str

    def __repr__(self) -> str:
        return f"Quote({self.message_id!r}, by {self.author!r}, <snippet hidden>)"


@dataclass(frozen=True)
class Text:
    """A text message; with `quote` it is a reply and travels as type 9, so a reader
    that predates replies refuses only the replies."""

    message_id: str
    sent_at: int
    body: str
    timer_seconds: int = 0
    quote: Quote | None = None

    def __repr__(self) -> str:
        return f"Text({self.message_id!r}, sent at {self.sent_at}, <body hidden>)"


@dataclass(frozen=True)
class Reaction:
    """One emoji from the sender on a message (named by id and author); it replaces
    the sender's earlier reaction there, and "" takes it away. `sent_at` orders a
    person's reactions, so a late one never undoes a newer one."""

    message_id: str
    author: str
    sent_at: int
    emoji: str


@dataclass(frozen=True)
class Delete:
    """Delete for everyone: the author takes back their message (named by id and
    author, as reactions name theirs); `sent_at` is when, for the 24 h limit."""

    message_id: str
    author: str
    sent_at: int


@dataclass(frozen=True)
class Edit:
    """The author replaces the text of their message (named by id and author);
    `sent_at` orders edits, so a late one never undoes a newer one."""

    message_id: str
    author: str
    sent_at: int
    body: str

    def __repr__(self) -> str:
        return f"Edit({self.message_id!r}, at {self.sent_at}, <body hidden>)"


@dataclass(frozen=True)
class Typing:
    """The sender started (or stopped) typing in the chat this came through.
    Ephemeral: never stored, never retried."""

    sent_at: int
    started: bool


@dataclass(frozen=True)
class ProfileKey:
    """The sending device's profile key, shared with a contact so that it can send
    this device sealed mail (the delivery token is derived from it:
    app/protocol/sealed.py, `access_key`)."""

    key: bytes

    def __repr__(self) -> str:
        return "ProfileKey(<hidden>)"


@dataclass(frozen=True)
class DeviceListUpdate:
    """The sender account's signed device list (app/protocol/device_list.py): the
    first message of every session a device starts, and sent to every contact
    when the list changes, so that a contact encrypts to exactly the devices the
    account identity lists and accepts messages only from them."""

    signed: bytes = field(repr=False)


@dataclass(frozen=True)
class SentTranscript:
    """A message this account sent from another of its devices, to our own
    devices only: so that every device shows the chat whole (Signal's "sent
    transcript"). `destination` is the peer of a direct chat ("" in a group);
    `group_id` the group's (empty for a direct chat); `content` the encoded
    content as sent (a text, reply or attachment)."""

    destination: str
    group_id: bytes = field(repr=False)
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class ReadSync:
    """Messages the user read on another of the account's devices (their ids)."""

    message_ids: tuple[str, ...]


@dataclass(frozen=True)
class VerifiedSync:
    """The user marked a contact's identity verified (or not) on another of the
    account's devices; applied only while the contact has that identity."""

    username: str
    identity: bytes = field(repr=False)
    verified: bool


@dataclass(frozen=True)
class BlockedSync:
    """Everyone the user has blocked, as one of the account's devices held it when
    the user changed it there at `changed_at` (milliseconds, that device's clock).
    The whole list rather than the change, so a lost or late one is repaired by
    the next; the newest `changed_at` wins."""

    usernames: tuple[str, ...]
    changed_at: int


@dataclass(frozen=True)
class AcceptedSync:
    """The user accepted a person (`username`) or a group (`group_id`) on another of
    the account's devices: a request answered, or a chat started. Exactly one of
    the two is set. Accepting only ever goes one way, so order does not matter."""

    username: str
    group_id: bytes = field(repr=False)


@dataclass(frozen=True)
class HistoryChunk:
    """One chunk of the history another of our devices transfers to this one
    (docs/protocol.md §14, "History transfer"): where its encrypted blob waits on
    the relay (its attachment path) and the key and digest to open it. `index`
    counts chunks from 0 within the transfer, `last` marks the final one,
    `messages` is how many this chunk holds and `total` how many the whole
    transfer does (for progress); `size` is the blob's plaintext size."""

    transfer_id: bytes = field(repr=False)
    index: int
    last: bool
    messages: int
    total: int
    blob_id: str
    key: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    size: int


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
    # A JPEG or PNG of at most MAX_THUMBNAIL_SIDE pixels a side (b"" for none), and
    # its size in pixels, so a bubble is laid out before the image is decoded.
    thumbnail: bytes = b""
    thumbnail_width: int = 0
    thumbnail_height: int = 0

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
    | Reaction
    | Delete
    | Edit
    | Typing
    | ProfileKey
    | DeviceListUpdate
    | SentTranscript
    | ReadSync
    | VerifiedSync
    | BlockedSync
    | AcceptedSync
    | HistoryChunk
)


def encode_content(content: Content) -> bytes:
    writer = Writer().u8(CONTENT_VERSION)
    match content:
        case Text():
            writer.u8(TEXT if content.quote is None else REPLY)
            writer.text16(content.message_id).u64(content.sent_at)
            writer.bytes32(content.body.encode("utf-8")).u32(content.timer_seconds)
            if content.quote is not None:
                writer.text16(content.quote.message_id).text16(content.quote.author)
                writer.text16(content.quote.snippet[:MAX_QUOTE_SNIPPET])
        case Reaction():
            emoji = content.emoji.encode("utf-8")
            if len(emoji) > MAX_EMOJI_BYTES:
                raise ValueError("a reaction is one emoji")
            writer.u8(REACTION).text16(content.message_id).text16(content.author)
            writer.u64(content.sent_at).bytes8(emoji)
        case Delete():
            writer.u8(DELETE).text16(content.message_id).text16(content.author)
            writer.u64(content.sent_at)
        case Edit():
            writer.u8(EDIT).text16(content.message_id).text16(content.author)
            writer.u64(content.sent_at).bytes32(content.body.encode("utf-8"))
        case Typing():
            writer.u8(TYPING).u64(content.sent_at).u8(1 if content.started else 0)
        case Receipt():
            writer.u8(RECEIPT).u8(content.kind).u16(len(content.message_ids))
            for message_id in content.message_ids:
                writer.text16(message_id)
        case AttachmentPointer():
            _check_thumbnail(content, ValueError)
            writer.u8(ATTACHMENT_THUMBNAIL if content.thumbnail else ATTACHMENT)
            writer.text16(content.message_id).u64(content.sent_at)
            writer.bytes32(content.caption.encode("utf-8")).text16(content.blob_id)
            writer.raw(content.key).raw(content.digest).u64(content.size)
            writer.text16(content.filename).text16(content.mime).u32(content.timer_seconds)
            if content.thumbnail:
                writer.bytes16(content.thumbnail)
                writer.u16(content.thumbnail_width).u16(content.thumbnail_height)
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
        case ProfileKey():
            if len(content.key) != 32:
                raise ValueError("a profile key is 32 bytes")
            writer.u8(PROFILE_KEY).raw(content.key)
        case DeviceListUpdate():
            if len(content.signed) > MAX_DEVICE_LIST:
                raise ValueError("a device list is at most 8 KiB")
            writer.u8(DEVICE_LIST).bytes16(content.signed)
        case SentTranscript():
            writer.u8(SENT_TRANSCRIPT).text16(content.destination).bytes16(content.group_id)
            writer.bytes32(content.content)
        case ReadSync():
            writer.u8(READ_SYNC).u16(len(content.message_ids))
            for message_id in content.message_ids:
                writer.text16(message_id)
        case VerifiedSync():
            writer.u8(VERIFIED_SYNC).text16(content.username).bytes16(content.identity)
            writer.u8(1 if content.verified else 0)
        case BlockedSync():
            _check_blocked(content, ValueError)
            writer.u8(BLOCKED_SYNC).u64(content.changed_at).u16(len(content.usernames))
            for username in content.usernames:
                writer.text16(username)
        case AcceptedSync():
            if bool(content.username) == bool(content.group_id):
                raise ValueError("an accepted sync names a person or a group")
            writer.u8(ACCEPTED_SYNC).text16(content.username).bytes16(content.group_id)
        case HistoryChunk():
            _check_history_chunk(content, ValueError)
            writer.u8(HISTORY_CHUNK).raw(content.transfer_id).u32(content.index)
            writer.u8(1 if content.last else 0).u32(content.messages).u32(content.total)
            writer.text16(content.blob_id).raw(content.key).raw(content.digest)
            writer.u64(content.size)
    return writer.getvalue()


def decode_content(data: bytes) -> Content:
    reader = Reader(data, "message content")
    reader.version(CONTENT_VERSION)
    kind = reader.u8()
    content: Content
    if kind in (TEXT, REPLY):
        message_id, sent_at = reader.text16(), reader.u64()
        body = _utf8(reader.bytes32(MAX_BODY))
        timer = reader.u32()
        quote = None
        if kind == REPLY:
            quote = Quote(reader.text16(), reader.text16(), reader.text16())
            if len(quote.snippet) > MAX_QUOTE_SNIPPET:
                raise MalformedMessage("the quoted snippet is too long")
        content = Text(message_id, sent_at, body, timer, quote)
    elif kind == REACTION:
        target, author, sent_at = reader.text16(), reader.text16(), reader.u64()
        raw_emoji = reader.bytes8()
        if len(raw_emoji) > MAX_EMOJI_BYTES:
            raise MalformedMessage("a reaction is one emoji")
        content = Reaction(target, author, sent_at, _utf8(raw_emoji))
    elif kind == DELETE:
        content = Delete(reader.text16(), reader.text16(), reader.u64())
    elif kind == EDIT:
        target, author, sent_at = reader.text16(), reader.text16(), reader.u64()
        content = Edit(target, author, sent_at, _utf8(reader.bytes32(MAX_BODY)))
    elif kind == TYPING:
        sent_at, action = reader.u64(), reader.u8()
        if action not in (0, 1):
            raise MalformedMessage("unknown typing action")
        content = Typing(sent_at, action == 1)
    elif kind == RECEIPT:
        receipt_kind = reader.u8()
        if receipt_kind not in (RECEIPT_DELIVERED, RECEIPT_READ):
            raise MalformedMessage("unknown receipt type")
        content = Receipt(receipt_kind, tuple(reader.text16() for _ in range(reader.u16())))
    elif kind in (ATTACHMENT, ATTACHMENT_THUMBNAIL):
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
        if kind == ATTACHMENT_THUMBNAIL:
            thumbnail = reader.bytes16()
            width, height = reader.u16(), reader.u16()
            content = dataclasses.replace(
                content, thumbnail=thumbnail, thumbnail_width=width, thumbnail_height=height
            )
            if not thumbnail:
                raise MalformedMessage("a type 11 attachment carries a thumbnail")
            _check_thumbnail(content, MalformedMessage)
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
    elif kind == PROFILE_KEY:
        content = ProfileKey(reader.raw(32))
    elif kind == SENT_TRANSCRIPT:
        destination, group_id = reader.text16(), reader.bytes16()
        inner = reader.bytes32(1 << 20)
        if not inner[1:2] or inner[1] not in TRANSCRIBED:
            raise MalformedMessage("a sent transcript carries a text or an attachment only")
        content = SentTranscript(destination, group_id, inner)
    elif kind == READ_SYNC:
        content = ReadSync(tuple(reader.text16() for _ in range(reader.u16())))
    elif kind == VERIFIED_SYNC:
        username, identity = reader.text16(), reader.bytes16()
        verified = reader.u8()
        if verified > 1:
            raise MalformedMessage("a verified sync's state is 0 or 1")
        content = VerifiedSync(username, identity, verified == 1)
    elif kind == HISTORY_CHUNK:
        transfer_id, index = reader.raw(HISTORY_TRANSFER_ID_LENGTH), reader.u32()
        last = reader.u8()
        if last > 1:
            raise MalformedMessage("a history chunk's last flag is 0 or 1")
        messages, total, blob_id = reader.u32(), reader.u32(), reader.text16()
        key, digest, size = reader.raw(32), reader.raw(32), reader.u64()
        content = HistoryChunk(
            transfer_id, index, last == 1, messages, total, blob_id, key, digest, size
        )
        _check_history_chunk(content, MalformedMessage)
    elif kind == BLOCKED_SYNC:
        changed_at = reader.u64()
        content = BlockedSync(tuple(reader.text16() for _ in range(reader.u16())), changed_at)
        _check_blocked(content, MalformedMessage)
    elif kind == ACCEPTED_SYNC:
        content = AcceptedSync(reader.text16(), reader.bytes16())
        if bool(content.username) == bool(content.group_id):
            raise MalformedMessage("an accepted sync names a person or a group")
    elif kind == DEVICE_LIST:
        content = DeviceListUpdate(reader.bytes16())
        if len(content.signed) > MAX_DEVICE_LIST:
            raise MalformedMessage("a device list is at most 8 KiB")
    else:
        raise MalformedMessage(f"unknown content type {kind}")
    reader.end()
    return content


def _check_thumbnail(content: AttachmentPointer, error: type[Exception]) -> None:
    if not content.thumbnail:
        return
    if len(content.thumbnail) > MAX_THUMBNAIL_BYTES:
        raise error("the thumbnail is too large")
    sides = (content.thumbnail_width, content.thumbnail_height)
    if not all(1 <= side <= MAX_THUMBNAIL_SIDE for side in sides):
        raise error("the thumbnail's size is out of range")


def _check_blocked(content: BlockedSync, error: type[Exception]) -> None:
    if len(content.usernames) > MAX_BLOCKED:
        raise error(f"a blocked list names at most {MAX_BLOCKED} accounts")
    if len(set(content.usernames)) != len(content.usernames) or not all(content.usernames):
        raise error("a blocked list names each account once")


def _check_history_chunk(content: HistoryChunk, error: type[Exception]) -> None:
    if len(content.transfer_id) != HISTORY_TRANSFER_ID_LENGTH:
        raise error("a history transfer id is 16 bytes")
    if len(content.key) != 32 or len(content.digest) != 32:
        raise error("a history chunk's key and digest are 32 bytes each")
    if not 0 < len(content.blob_id.encode("utf-8")) <= MAX_BLOB_ID:
        raise error("a history chunk's blob id is 1-128 bytes")
    if content.messages > MAX_HISTORY_CHUNK_MESSAGES or content.messages > content.total:
        raise error("a history chunk holds too many messages")
    if content.size > MAX_HISTORY_CHUNK_BYTES:
        raise error("a history chunk is too large")


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
