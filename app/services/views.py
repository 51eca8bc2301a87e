"""What the UI shows, as plain immutable values.

The services fill these from the store; widgets and list models read nothing else,
so no SQL, key or ratchet state ever reaches the UI layer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
class AttachmentView:
    attachment_id: int
    filename: str
    size: int
    mime: str
    ready: bool


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

    @property
    def groups(self) -> list[str]:
        return [self.digits[i : i + 5] for i in range(0, len(self.digits), 5)]


@dataclass(frozen=True)
class DeviceView:
    device_id: int
    name: str
    current: bool
