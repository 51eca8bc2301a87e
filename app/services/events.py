"""What the services tell the UI, as plain values delivered to a callback."""

from __future__ import annotations

from dataclasses import dataclass

from app.services.views import ConversationView, MessageView


@dataclass(frozen=True)
class ConversationsChanged:
    conversations: list[ConversationView]


@dataclass(frozen=True)
class MessagesChanged:
    conversation_id: int
    messages: list[MessageView]


@dataclass(frozen=True)
class MessagesExpired:
    """Disappearing messages whose timer ran out were deleted; views drop them."""

    conversation_id: int
    message_ids: tuple[int, ...]


@dataclass(frozen=True)
class IncomingMessage:
    """A new message worth a notification (the UI decides whether to show text)."""

    conversation_id: int
    conversation_title: str
    sender: str
    body: str


@dataclass(frozen=True)
class ConnectionChanged:
    connected: bool
    detail: str = ""


@dataclass(frozen=True)
class IdentityChanged:
    peer: str


@dataclass(frozen=True)
class TypingChanged:
    """`sender` started (or stopped) typing in a chat; ephemeral, never stored."""

    conversation_id: int
    sender: str
    started: bool


@dataclass(frozen=True)
class DeviceUnlinked:
    """This device was removed from the account (from another of its devices, or
    the relay revoked it): it locks itself and says why."""

    reason: str


@dataclass(frozen=True)
class HistoryProgress:
    """A history transfer between two of the account's devices moved on
    (docs/protocol.md §14, "History transfer"): on the new device as chunks are
    imported (`sending` False), on the existing one as they are sent (`sending`
    True). Counts are messages; `finished` once every chunk is through;
    `stopped` for one that is not running and will not resume by itself (the user
    cancelled it, or its device was unlinked)."""

    done_messages: int
    total_messages: int
    finished: bool
    sending: bool = False
    stopped: bool = False


@dataclass(frozen=True)
class ServiceError:
    """An operation failed; `text` is a sentence for the user."""

    text: str


Event = (
    ConversationsChanged
    | MessagesChanged
    | MessagesExpired
    | IncomingMessage
    | ConnectionChanged
    | IdentityChanged
    | TypingChanged
    | DeviceUnlinked
    | HistoryProgress
    | ServiceError
)
