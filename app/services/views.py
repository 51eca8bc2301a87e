"""What the UI shows, as plain immutable values.

The services fill these from the store; widgets and list models read nothing else,
so no SQL, key or ratchet state ever reaches the UI layer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from app.protocol.content import CHANGE_WINDOW_MS

# What a message deleted for everyone shows in its place.
DELETED_TEXT = "This message was deleted"


class MessageStatus(enum.StrEnum):
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    RECEIVED = "received"


class ConversationKind(enum.StrEnum):
    DIRECT = "direct"
    GROUP = "group"


@dataclass(frozen=True)
class Thumbnail:
    """An image's preview as it travels (docs/protocol.md §5, type 11): JPEG or PNG
    bytes and their size in pixels. The UI makes it; the services only carry it."""

    data: bytes = field(repr=False)
    width: int
    height: int


@dataclass(frozen=True)
class AttachmentView:
    attachment_id: int
    filename: str
    size: int
    mime: str
    ready: bool
    thumbnail: Thumbnail | None = None
    # Too large to fetch unasked (messenger.AUTO_DOWNLOAD_BYTES): a click fetches it.
    on_request: bool = False


@dataclass(frozen=True)
class QuoteView:
    """What a reply shows of the message it answers."""

    author: str
    snippet: str
    # The quoted message here, to scroll to; None when it is gone or never arrived.
    message_id: int | None


@dataclass(frozen=True)
class MessageView:
    message_id: int
    conversation_id: int
    outgoing: bool
    sender: str
    body: str
    sent_at_ms: int
    status: MessageStatus
    attachment: AttachmentView | None = None
    system: bool = False
    expires_at_ms: int | None = None  # a disappearing message's end, in ms
    quote: QuoteView | None = None
    # (emoji, how many reacted with it), most first; and the user's own, or "".
    reactions: tuple[tuple[str, int], ...] = ()
    own_reaction: str = ""
    # Deleted for everyone: `body` is DELETED_TEXT and nothing else is left.
    deleted: bool = False
    edited: bool = False

    def changeable(self, now_ms: int) -> bool:
        """Whether the user may still edit it (if text) or delete it for everyone:
        their own, not deleted, sent less than CHANGE_WINDOW_MS ago."""
        return (
            self.outgoing
            and not self.system
            and not self.deleted
            and now_ms - self.sent_at_ms < CHANGE_WINDOW_MS
        )

    @property
    def editable_kind(self) -> bool:
        return self.attachment is None and not self.system and not self.deleted


@dataclass(frozen=True)
class ConversationView:
    conversation_id: int
    kind: ConversationKind
    title: str
    last_text: str
    last_time_ms: int | None
    unread: int
    timer_seconds: int = 0
    peer: str | None = None
    identity_changed: bool = False
    verified: bool = False
    members: tuple[str, ...] = ()
    # The peer, or the members, whose identity changed after it was verified and is
    # not yet accepted: nothing is sent to this conversation until they are.
    unaccepted: tuple[str, ...] = ()
    # A message request (docs/protocol.md, "Message requests and blocking"): a
    # stranger's chat, or a group a stranger added the user to, not yet accepted.
    request: bool = False
    # The peer is blocked: nothing they send is kept and nothing is sent to them.
    blocked: bool = False

    @property
    def send_blocked(self) -> str:
        """Why nothing can be sent here, as a sentence; "" when sending is allowed."""
        if not self.unaccepted:
            return ""
        return unaccepted_sentence(self.unaccepted, group=self.kind == ConversationKind.GROUP)


@dataclass(frozen=True)
class SearchResultView:
    conversation_id: int
    conversation_title: str
    message_id: int
    snippet: str
    position: int
    sent_at_ms: int


@dataclass(frozen=True)
class SafetyNumberView:
    peer: str
    digits: str  # 60 digits, no spaces
    qr_payload: bytes
    verified: bool
    # It changed after it was verified: sending is blocked until it is accepted.
    unaccepted: bool = False

    @property
    def groups(self) -> list[str]:
        return [self.digits[i : i + 5] for i in range(0, len(self.digits), 5)]


@dataclass(frozen=True)
class DeviceView:
    device_id: int
    name: str
    current: bool


def unaccepted_sentence(names: tuple[str, ...] | list[str], *, group: bool) -> str:
    """The sentence for a send refused because `names` have unaccepted identities."""
    if len(names) == 1:
        who = names[0]
        changed = f"{who}'s safety number has changed since you verified it."
    else:
        who = ", ".join(names[:-1]) + f" and {names[-1]}"
        changed = f"The safety numbers of {who} have changed since you verified them."
    target = "this group" if group else who
    number = "number" if len(names) == 1 else "numbers"
    return f"{changed} Nothing is sent to {target} until you accept the new safety {number}."
