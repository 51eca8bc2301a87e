"""What can be done to a message in the chat (issue #24): the right-click menu
(Reply, React, Edit, Delete for me, Delete for everyone), the "Replying to …" and
"Editing…" bars over the composer, the in-window confirmation of a delete for
everyone, the "… is typing" line, and the message list that tells a click on a
reply's quote from a click on the rest of the bubble."""

from __future__ import annotations

import time

from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QFocusEvent, QKeyEvent, QMouseEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListView,
    QMenu,
    QPushButton,
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
    with the row instead of the usual `clicked`, and one on an attachment's
    thumbnail or file chip `attachment_clicked` (only there: a click elsewhere on
    the row opens nothing)."""

    quote_clicked = Signal(int)  # row
    attachment_clicked = Signal(int)  # row

    def keyPressEvent(self, event: QKeyEvent) -> None:
        """The Menu key or Shift+F10 opens the current message's menu (the newest
        when none is current; arrow keys move between messages), through the same
        `customContextMenuRequested` a right-click emits. Accepted here, so Qt
        does not also turn the Menu key into a context-menu event."""
        shift_f10 = (
            event.key() == Qt.Key.Key_F10 and event.modifiers() == Qt.KeyboardModifier.ShiftModifier
        )
        if (event.key() == Qt.Key.Key_Menu and not event.modifiers()) or shift_f10:
            point = self.current_bubble_point()
            if point is not None:
                self.customContextMenuRequested.emit(point)
            event.accept()
            return
        super().keyPressEvent(event)

    def focusInEvent(self, event: QFocusEvent) -> None:
        # Qt makes the first (oldest loaded) row current on keyboard focus; a chat
        # is read from the bottom, so the keyboard starts at the newest message.
        # Not on a click, which makes the clicked row current right after.
        had_current = self.currentIndex().isValid()
        super().focusInEvent(event)
        model = self.model()
        keyboard = event.reason() != Qt.FocusReason.MouseFocusReason
        if keyboard and not had_current and model is not None and model.rowCount():
            self.setCurrentIndex(model.index(model.rowCount() - 1, 0))

    def current_bubble_point(self) -> QPoint | None:
        """The centre of the current message's bubble, in viewport coordinates,
        scrolled into view; the newest message becomes current if none is."""
        model = self.model()
        if model is None or model.rowCount() == 0:
            return None
        index = self.currentIndex()
        if not index.isValid():
            index = model.index(model.rowCount() - 1, 0)
            self.setCurrentIndex(index)
        self.scrollTo(index)
        option = QStyleOptionViewItem()
        self.initViewItemOption(option)
        option.rect = self.visualRect(index)
        delegate = self.itemDelegate()
        if isinstance(delegate, MessageDelegate):
            layout = delegate.layout(option, index)
            if layout is not None:
                return layout.bubble.center().toPoint()
        return option.rect.center()

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
                if delegate.attachment_at(option, index, position.x(), position.y()):
                    self.attachment_clicked.emit(index.row())
                    event.accept()
                    return
        super().mouseReleaseEvent(event)


class MessageMenu(QMenu):
    """Right-click on a message: Reply, and React with one of REACTIONS (the one
    already chosen is checked; choosing it again takes it away)."""

    reply_requested = Signal(object)  # MessageView
    react_requested = Signal(int, str)  # message id, emoji
    save_requested = Signal(object)  # MessageView with an attachment
    open_requested = Signal(object)  # MessageView with an attachment
    edit_requested = Signal(object)  # MessageView
    delete_for_me_requested = Signal(int)  # message id
    delete_for_everyone_requested = Signal(object)  # MessageView

    def __init__(
        self, message: MessageView, parent: QWidget | None = None, *, now_ms: int | None = None
    ) -> None:
        super().__init__(parent)
        self.setAccessibleName("Message actions")
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        self.reply_action = QAction("Reply", self)
        self.reply_action.triggered.connect(lambda: self.reply_requested.emit(message))
        self.addAction(self.reply_action)
        # A deleted message has nothing left to answer, react to or change.
        self.reply_action.setEnabled(not message.deleted)
        changeable = message.changeable(now)
        self.edit_action: QAction | None = None
        if changeable and message.editable_kind:
            self.edit_action = QAction("Edit", self)
            self.edit_action.triggered.connect(lambda: self.edit_requested.emit(message))
            self.addAction(self.edit_action)
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
        self.react_menu.setEnabled(not message.deleted)
        self.addSeparator()
        self.delete_for_me_action = QAction("Delete for me", self)
        self.delete_for_me_action.triggered.connect(
            lambda: self.delete_for_me_requested.emit(message.message_id)
        )
        self.addAction(self.delete_for_me_action)
        self.delete_for_everyone_action: QAction | None = None
        if changeable:
            self.delete_for_everyone_action = QAction("Delete for everyone", self)
            self.delete_for_everyone_action.triggered.connect(
                lambda: self.delete_for_everyone_requested.emit(message)
            )
            self.addAction(self.delete_for_everyone_action)
        self._add_attachment_actions(message)

    def _add_attachment_actions(self, message: MessageView) -> None:
        """Attachments (issue #24): "Save as…" and "Open", once the file is here.
        Open shows images in the app; other files would need a plaintext copy on
        disk for another program, which only an explicit Save as… makes."""
        self.save_action: QAction | None = None
        self.open_action: QAction | None = None
        attachment = message.attachment
        if attachment is None or message.deleted:
            return
        self.addSeparator()
        self.save_action = QAction("Save as…", self)
        self.save_action.setEnabled(attachment.ready)
        self.save_action.triggered.connect(lambda: self.save_requested.emit(message))
        self.addAction(self.save_action)
        self.open_action = QAction("Open", self)
        self.open_action.setEnabled(attachment.ready and attachment.mime.startswith("image/"))
        self.open_action.triggered.connect(lambda: self.open_requested.emit(message))
        self.addAction(self.open_action)

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


class EditBar(QWidget):
    """ "Editing…" over the composer while one of the user's messages is edited;
    × (or Escape in the composer) gives the draft back."""

    cancelled = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message: MessageView | None = None
        self.draft = ""
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 8, 0)
        self.label = QLabel("Editing…")
        self.label.setStyleSheet("color: palette(placeholder-text);")
        self.label.setAccessibleName("Editing a message")
        self.cancel_button = QToolButton()
        self.cancel_button.setText("×")
        self.cancel_button.setToolTip("Cancel editing")
        self.cancel_button.setAccessibleName("Cancel editing")
        self.cancel_button.clicked.connect(self.cancel)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.cancel_button)
        self.hide()

    def edit(self, message: MessageView, draft: str) -> None:
        """Starts editing `message`; `draft` is what the composer held, given back
        on cancel."""
        if self.message is None:
            self.draft = draft
        self.message = message
        self.show()

    def cancel(self) -> None:
        if self.message is not None:
            self.message = None
            self.hide()
            self.cancelled.emit()

    def take(self) -> int | None:
        """The message being edited, if any; the bar closes."""
        message = self.message
        self.message = None
        self.draft = ""
        self.hide()
        return message.message_id if message is not None else None


class DeleteConfirmBar(QWidget):
    """The in-window question before a delete for everyone: it cannot be undone,
    so it is asked, but without a modal dialog that would block the window."""

    confirmed = Signal(int)  # message id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message_id: int | None = None
        self.setAccessibleName("Confirm delete for everyone")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 8, 0)
        self.label = QLabel(
            "Delete this message for everyone? It is deleted on your devices and on the "
            "recipients' (where their app supports it)."
        )
        self.label.setWordWrap(True)
        self.delete_button = QPushButton("Delete for everyone")
        self.delete_button.setAccessibleName("Delete for everyone")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAccessibleName("Cancel delete")
        self.delete_button.clicked.connect(self._confirm)
        self.cancel_button.clicked.connect(self.cancel)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.delete_button)
        layout.addWidget(self.cancel_button)
        self.hide()

    def ask(self, message: MessageView) -> None:
        self.message_id = message.message_id
        self.show()
        self.cancel_button.setFocus()  # the safe choice is the default one

    def cancel(self) -> None:
        self.message_id = None
        self.hide()

    def _confirm(self) -> None:
        if self.message_id is not None:
            self.confirmed.emit(self.message_id)
        self.cancel()


TYPING_SHOWN_MS = 5000


class TypingLine(QLabel):
    """ "Alice is typing…" under the messages: each typer shows for TYPING_SHOWN_MS
    after their last indicator, or until they stop or their message arrives."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setStyleSheet("color: palette(placeholder-text); padding: 0 14px;")
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setAccessibleName("Typing")
        self._typers: dict[str, QTimer] = {}
        self.hide()

    def typing(self, sender: str, started: bool) -> None:
        timer = self._typers.pop(sender, None)
        if timer is not None:
            timer.stop()
            timer.deleteLater()
        if started:
            timer = QTimer(self)
            timer.setSingleShot(True)
            timer.timeout.connect(lambda: self.typing(sender, False))
            timer.start(TYPING_SHOWN_MS)
            self._typers[sender] = timer
        self._refresh()

    def reset(self) -> None:
        for timer in self._typers.values():
            timer.stop()
            timer.deleteLater()
        self._typers.clear()
        self._refresh()

    def typers(self) -> list[str]:
        return sorted(self._typers)

    def _refresh(self) -> None:
        names = self.typers()
        if not names:
            self.setText("")
            self.hide()
            return
        if len(names) == 1:
            text = f"{names[0]} is typing…"
        elif len(names) == 2:
            text = f"{names[0]} and {names[1]} are typing…"
        else:
            text = f"{', '.join(names[:-1])} and {names[-1]} are typing…"
        self.setText(text)
        self.setAccessibleName(text)
        self.show()
