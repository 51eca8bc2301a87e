"""What can be done to a message in the chat (issue #24): the right-click menu
(Reply, React), the "Replying to …" bar over the composer, and the message list
that tells a click on a reply's quote from a click on the rest of the bubble."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QMouseEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListView,
    QMenu,
    QStyleOptionViewItem,
    QToolButton,
    QWidget,
)

from app.services.views import MessageView
from app.ui.delegates import MessageDelegate

# The picker's emoji (Signal Desktop's default set), each with the word a screen
# reader says for it.
REACTIONS = (
    ("👍", "Thumbs up"),
    ("❤️", "Heart"),
    ("😂", "Laughing"),
    ("😮", "Surprised"),
    ("😢", "Sad"),
    ("🙏", "Thank you"),
)


class MessageListView(QListView):
    """The chat's message list; a click on a reply's quote emits `quote_clicked`
    with the row instead of the usual `clicked`."""

    quote_clicked = Signal(int)  # row

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            position = event.position().toPoint()
            index = self.indexAt(position)
            delegate = self.itemDelegate()
            if index.isValid() and isinstance(delegate, MessageDelegate):
                option = QStyleOptionViewItem()
                self.initViewItemOption(option)
                option.rect = self.visualRect(index)
                if delegate.quote_at(option, index, position.x(), position.y()):
                    self.quote_clicked.emit(index.row())
                    event.accept()
                    return
        super().mouseReleaseEvent(event)


class MessageMenu(QMenu):
    """Right-click on a message: Reply, and React with one of REACTIONS (the one
    already chosen is checked; choosing it again takes it away)."""

    reply_requested = Signal(object)  # MessageView
    react_requested = Signal(int, str)  # message id, emoji

    def __init__(self, message: MessageView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Message actions")
        self.reply_action = QAction("Reply", self)
        self.reply_action.triggered.connect(lambda: self.reply_requested.emit(message))
        self.addAction(self.reply_action)
        self.react_menu = self.addMenu("React")
        self.react_menu.setAccessibleName("React")
        self.reaction_actions: dict[str, QAction] = {}
        for emoji, word in REACTIONS:
            action = QAction(f"{emoji}  {word}", self.react_menu)
            action.setCheckable(True)
            action.setChecked(message.own_reaction == emoji)
            action.triggered.connect(
                lambda _checked=False, emoji=emoji: self.react_requested.emit(
                    message.message_id, emoji
                )
            )
            self.react_menu.addAction(action)
            self.reaction_actions[emoji] = action

    def action_named(self, text: str) -> QAction | None:
        """The action whose text is `text` (for tests and keyboard users' scripts)."""
        for action in [*self.actions(), *self.react_menu.actions()]:
            if action.text() == text:
                return action
        return None


class ReplyBar(QWidget):
    """ "Replying to …" over the composer while a reply is being written."""

    cancelled = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message: MessageView | None = None
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 8, 0)
        self.label = QLabel()
        self.label.setStyleSheet("color: palette(placeholder-text);")
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.cancel_button = QToolButton()
        self.cancel_button.setText("×")
        self.cancel_button.setToolTip("Cancel reply")
        self.cancel_button.setAccessibleName("Cancel reply")
        self.cancel_button.clicked.connect(self.cancel)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.cancel_button)
        self.hide()

    def reply_to(self, message: MessageView) -> None:
        self.message = message
        who = "yourself" if message.outgoing else message.sender
        text = message.body or (message.attachment.filename if message.attachment else "")
        snippet = " ".join(text.split())
        metrics = self.label.fontMetrics()
        line = f"Replying to {who}: {snippet}"
        self.label.setText(metrics.elidedText(line, Qt.TextElideMode.ElideRight, 520))
        self.label.setAccessibleName(line)
        self.show()

    def cancel(self) -> None:
        if self.message is not None:
            self.message = None
            self.hide()
            self.cancelled.emit()

    def take(self) -> int | None:
        """The message being replied to, if any; the bar closes."""
        message = self.message
        self.message = None
        self.hide()
        return message.message_id if message is not None else None
