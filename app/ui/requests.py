"""The message-request bar: what stands in the composer's place in a chat that
is a request, or with someone blocked (docs/protocol.md, "Message requests and
blocking")."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QToolButton,
    QVBoxLayout,
)

from app.services.views import ConversationKind, ConversationView


class RequestBar(QFrame):
    """Accept / Block / Delete (Leave, for a group) for a request; Unblock / Delete
    for a blocked peer. Hidden otherwise. The buttons only signal: the window hands
    the action to the client, and the conversations event that follows redraws."""

    accept_clicked = Signal()
    block_clicked = Signal()
    delete_clicked = Signal()
    unblock_clicked = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAccessibleName("Message request")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.text)
        row = QHBoxLayout()
        row.addStretch(1)
        self.block_button = QPushButton("Block")
        self.delete_button = QPushButton("Delete")
        self.unblock_button = QPushButton("Unblock")
        self.accept_button = QPushButton("Accept")
        for button in (
            self.block_button,
            self.delete_button,
            self.unblock_button,
            self.accept_button,
        ):
            row.addWidget(button)
        row.addStretch(1)
        layout.addLayout(row)
        self.accept_button.clicked.connect(self.accept_clicked)
        self.block_button.clicked.connect(self.block_clicked)
        self.delete_button.clicked.connect(self.delete_clicked)
        self.unblock_button.clicked.connect(self.unblock_clicked)
        self.hide()

    def show_for(self, conversation: ConversationView) -> bool:
        """Shows the bar if `conversation` needs it; True when it does (the
        composer is then hidden)."""
        group = conversation.kind == ConversationKind.GROUP
        who = conversation.peer or conversation.title
        if conversation.blocked:
            self.text.setText(
                f"You blocked {who}. Nothing they send reaches you and you cannot write "
                "to them until you unblock them."
            )
            self._buttons(unblock=True, delete="Delete")
        elif conversation.request and group:
            self.text.setText(
                "Someone who is not in your contacts added you to this group. Its members "
                "will not know you have read their messages until you accept. Block "
                "blocks the person who added you and leaves the group."
            )
            self._buttons(accept=True, block=True, delete="Leave")
        elif conversation.request:
            self.text.setText(
                f"{who} is not in your contacts and wants to message you. They will not "
                "know you have read their messages until you accept. Block drops "
                "anything they send from now on."
            )
            self._buttons(accept=True, block=True, delete="Delete")
        else:
            self.hide()
            return False
        self.show()
        return True

    def _buttons(
        self, *, accept: bool = False, block: bool = False, unblock: bool = False, delete: str
    ) -> None:
        self.accept_button.setVisible(accept)
        self.block_button.setVisible(block)
        self.unblock_button.setVisible(unblock)
        self.delete_button.setText(delete)
        self.accept_button.setDefault(accept)


class ChatMenuButton(QToolButton):
    """The chat header's "⋯" menu: block or unblock the peer, delete the chat."""

    block_toggled = Signal(bool)  # True: block
    delete_requested = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setText("⋯")
        self.setToolTip("Chat menu")
        self.setAccessibleName("Chat menu")
        self.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.chat_menu = QMenu(self)
        self.block_action = self.chat_menu.addAction("Block")
        self.delete_action = self.chat_menu.addAction("Delete chat")
        self.setMenu(self.chat_menu)
        self._blocked = False
        self.block_action.triggered.connect(lambda: self.block_toggled.emit(not self._blocked))
        self.delete_action.triggered.connect(self.delete_requested)

    def show_for(self, conversation: ConversationView) -> None:
        """Blocking is offered for a direct chat only (a group's "Block" is in its
        request bar, and a group is left from its members dialog)."""
        self._blocked = conversation.blocked
        direct = conversation.kind == ConversationKind.DIRECT
        self.block_action.setVisible(direct)
        who = conversation.peer or conversation.title
        self.block_action.setText(f"Unblock {who}" if conversation.blocked else f"Block {who}")
        self.delete_action.setText("Leave and delete group" if not direct else "Delete chat")
