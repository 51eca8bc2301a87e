"""List models over the services' views.

The message model holds a window of a conversation, newest at the bottom. It never
reads the store itself: it asks for older pages by signal when the view nears the
top, and the answer arrives on the UI thread from a worker. A 100,000-message
conversation therefore opens with one 50-row page.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
    Signal,
)

from app.services.views import (
    DELETED_TEXT,
    ConversationView,
    MessageStatus,
    MessageView,
    SearchResultView,
)

ModelIndex = QModelIndex | QPersistentModelIndex
VIEW_ROLE = int(Qt.ItemDataRole.UserRole) + 1


def format_time(ms: int | None, *, now: dt.datetime | None = None) -> str:
    if ms is None:
        return ""
    moment = dt.datetime.fromtimestamp(ms / 1000).astimezone()
    today = (now or dt.datetime.now().astimezone()).date()
    if moment.date() == today:
        return moment.strftime("%H:%M")
    if (today - moment.date()).days < 7:
        return moment.strftime("%a")
    return moment.strftime("%d %b %Y") if moment.year != today.year else moment.strftime("%d %b")


def format_remaining(expires_at_ms: int, *, now_ms: int | None = None) -> str:
    """A disappearing message's time left, in its largest unit: "⏱ 25 s", "⏱ 4 min"."""
    now = dt.datetime.now().timestamp() * 1000 if now_ms is None else now_ms
    seconds = max(0, int((expires_at_ms - now + 999) // 1000))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"⏱ {seconds // size} {unit}"
    return f"⏱ {seconds} s"


def format_day(ms: int, *, now: dt.datetime | None = None) -> str:
    day = dt.datetime.fromtimestamp(ms / 1000).astimezone().date()
    today = (now or dt.datetime.now().astimezone()).date()
    if day == today:
        return "Today"
    if (today - day).days == 1:
        return "Yesterday"
    return day.strftime("%A, %d %B %Y")


STATUS_WORDS = {
    MessageStatus.SENDING: "sending",
    MessageStatus.SENT: "sent",
    MessageStatus.DELIVERED: "delivered",
    MessageStatus.READ: "read",
    MessageStatus.FAILED: "not sent",
    MessageStatus.RECEIVED: "",
}


def message_sentence(view: MessageView) -> str:
    """What a painted bubble shows, for a screen reader that sees no pixels: who,
    the quote it answers, the text, its reactions and (own) whether it was read."""
    if view.system:
        return view.body
    parts = ["You" if view.outgoing else view.sender]
    if view.quote is not None:
        parts.append(f"replying to {view.quote.author}: {view.quote.snippet}")
    text = view.body
    if view.attachment is not None:
        text = f"attachment {view.attachment.filename}" + (f", {text}" if text else "")
    parts.append(text)
    if view.edited:
        parts.append("edited")
    if view.reactions:
        parts.append(
            "reactions " + ", ".join(f"{emoji} {count}" for emoji, count in view.reactions)
        )
    parts.append(format_time(view.sent_at_ms))
    if view.outgoing:
        parts.append(STATUS_WORDS[view.status])
    return ", ".join(part for part in parts if part)


class ConversationListModel(QAbstractListModel):
    def __init__(self) -> None:
        super().__init__()
        self._rows: list[ConversationView] = []

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return row.title
        if role == Qt.ItemDataRole.ToolTipRole:
            # A chat that cannot send says why before it is opened.
            return row.send_blocked or row.last_text
        if role == Qt.ItemDataRole.AccessibleTextRole:
            # What the painted row shows, for a screen reader that sees no pixels.
            unread = f", {row.unread} unread" if row.unread else ""
            last = f": {row.last_text}" if row.last_text else ""
            state = ", blocked" if row.blocked else ", message request" if row.request else ""
            return f"{row.title}{state}{unread}{last}"
        if role == VIEW_ROLE:
            return row
        return None

    def set_conversations(self, rows: list[ConversationView]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def conversation_at(self, row: int) -> ConversationView | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def row_of(self, conversation_id: int) -> int:
        for row, view in enumerate(self._rows):
            if view.conversation_id == conversation_id:
                return row
        return -1


class MessageListModel(QAbstractListModel):
    """A window onto one conversation; rows are oldest first."""

    older_requested = Signal(int, int)  # conversation id, oldest loaded message id

    PAGE = 50

    def __init__(self) -> None:
        super().__init__()
        self._rows: list[MessageView] = []
        self._conversation_id: int | None = None
        self._has_older = False
        self._loading_older = False

    @property
    def conversation_id(self) -> int | None:
        return self._conversation_id

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return row.body
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return message_sentence(row)
        if role == VIEW_ROLE:
            return row
        return None

    def message_at(self, row: int) -> MessageView | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def previous_of(self, row: int) -> MessageView | None:
        return self._rows[row - 1] if 0 < row <= len(self._rows) else None

    def show_conversation(self, conversation_id: int, newest: list[MessageView]) -> None:
        self.beginResetModel()
        self._conversation_id = conversation_id
        self._rows = list(newest)
        self._has_older = len(newest) >= self.PAGE
        self._loading_older = False
        self.endResetModel()

    def clear(self) -> None:
        self.beginResetModel()
        self._conversation_id = None
        self._rows = []
        self._has_older = False
        self.endResetModel()

    def request_older(self) -> None:
        if self._conversation_id is None or not self._has_older or self._loading_older:
            return
        if not self._rows:
            return
        self._loading_older = True
        self.older_requested.emit(self._conversation_id, self._rows[0].message_id)

    def prepend_older(self, conversation_id: int, older: list[MessageView]) -> None:
        if conversation_id != self._conversation_id:
            return
        self._loading_older = False
        self._has_older = len(older) >= self.PAGE
        if not older:
            return
        self.beginInsertRows(QModelIndex(), 0, len(older) - 1)
        self._rows[0:0] = older
        self.endInsertRows()

    def add_or_update(self, messages: list[MessageView]) -> None:
        """New messages go to the bottom; known ones (status changes) update in place."""
        if self._conversation_id is None:
            return
        positions = {view.message_id: row for row, view in enumerate(self._rows)}
        fresh: list[MessageView] = []
        for message in messages:
            if message.conversation_id != self._conversation_id:
                continue
            row = positions.get(message.message_id)
            if row is None:
                fresh.append(message)
            else:
                self._rows[row] = message
                index = self.index(row)
                self.dataChanged.emit(index, index)
                if message.deleted:
                    self._quotes_deleted(message.message_id)
        if fresh:
            fresh.sort(key=lambda view: (view.sent_at_ms, view.message_id))
            start = len(self._rows)
            self.beginInsertRows(QModelIndex(), start, start + len(fresh) - 1)
            self._rows.extend(fresh)
            self.endInsertRows()

    def _quotes_deleted(self, message_id: int) -> None:
        """Replies already on screen stop quoting a message deleted for everyone
        (the services do the same for rows loaded later)."""
        for row, view in enumerate(self._rows):
            quote = view.quote
            if (
                quote is not None
                and quote.message_id == message_id
                and quote.snippet != DELETED_TEXT
            ):
                self._rows[row] = replace(view, quote=replace(quote, snippet=DELETED_TEXT))
                index = self.index(row)
                self.dataChanged.emit(index, index)

    def remove_messages(self, conversation_id: int, message_ids: list[int]) -> None:
        """Drops deleted messages (disappearing ones whose timer ran out)."""
        if conversation_id != self._conversation_id:
            return
        gone = set(message_ids)
        for row in range(len(self._rows) - 1, -1, -1):
            if self._rows[row].message_id in gone:
                self.beginRemoveRows(QModelIndex(), row, row)
                del self._rows[row]
                self.endRemoveRows()

    def refresh_timed(self) -> None:
        """Repaints the rows that show a remaining time."""
        for row, view in enumerate(self._rows):
            if view.expires_at_ms is not None:
                index = self.index(row)
                self.dataChanged.emit(index, index)

    def row_of(self, message_id: int) -> int:
        for row, view in enumerate(self._rows):
            if view.message_id == message_id:
                return row
        return -1


class SearchResultModel(QAbstractListModel):
    def __init__(self) -> None:
        super().__init__()
        self._rows: list[SearchResultView] = []

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            snippet = row.snippet.replace("[", "").replace("]", "")
            return f"{row.conversation_title} · {format_time(row.sent_at_ms)}\n{snippet}"
        if role == VIEW_ROLE:
            return row
        return None

    def set_results(self, rows: list[SearchResultView]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def result_at(self, row: int) -> SearchResultView | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None
