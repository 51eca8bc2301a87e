"""The main window: conversations on the left, the open chat on the right."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QModelIndex, QPoint, QStandardPaths, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence, QMouseEvent, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QDialog,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QStatusBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import __version__
from app.services.events import HistoryProgress
from app.services.views import (
    ConversationKind,
    ConversationView,
    MessageStatus,
    MessageView,
    SafetyNumberView,
    SearchResultView,
)
from app.ui.attachments import FileDropFilter, ImageViewer, StagedFile, StagingBar, start_folder
from app.ui.bridge import ClientBridge
from app.ui.delegates import ConversationDelegate, MessageDelegate
from app.ui.dialogs import GroupMembersDialog, NewChatDialog, NewGroupDialog
from app.ui.message_actions import (
    DeleteConfirmBar,
    EditBar,
    MessageListView,
    MessageMenu,
    ReplyBar,
    TypingLine,
)
from app.ui.models import ConversationListModel, MessageListModel, SearchResultModel
from app.ui.requests import ChatMenuButton, RequestBar
from app.ui.safety import SafetyNumberDialog
from app.ui.settings import SettingsDialog
from app.ui.widgets import Banner, Composer, ErrorBar, LockScreen

# While the user types, a typing indicator goes out at most this often (Signal
# repeats its own every few seconds; receivers show one for TYPING_SHOWN_MS).
TYPING_REPEAT_SECONDS = 3.0

TIMER_CHOICES = [
    ("Off", 0),
    ("30 seconds", 30),
    ("5 minutes", 300),
    ("1 hour", 3600),
    ("1 day", 86400),
    ("1 week", 604800),
]


class HistoryBanner(QFrame):
    """A slim strip over the chat list while this device receives its history
    from another of the account's devices (issue #19), then a line saying it
    arrived, which goes by itself after `ARRIVED_MS` or at a click."""

    ARRIVED_MS = 8000
    HIDDEN, WAITING, RECEIVING, ARRIVED = range(4)

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("historyBanner")
        self.setStyleSheet(
            "#historyBanner { background: #e7f0fb; border: 1px solid #b9d0ee;"
            " border-radius: 4px; }"
            "#historyBanner QLabel { color: #17324f; }"
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 5, 8, 6)
        layout.setSpacing(4)
        self.text = QLabel()
        self.text.setWordWrap(True)
        layout.addWidget(self.text)
        self.bar = QProgressBar()
        self.bar.setTextVisible(False)
        self.bar.setMaximumHeight(4)
        self.bar.setAccessibleName("Message history received")
        layout.addWidget(self.bar)
        self.state = self.HIDDEN
        self._fade = QTimer(self)
        self._fade.setSingleShot(True)
        self._fade.timeout.connect(self.dismiss)
        self.hide()

    def waiting(self) -> None:
        """History is on its way but no count has come yet."""
        self._fade.stop()
        self.state = self.WAITING
        self.text.setText("Receiving your message history from your other computer…")
        self.bar.setRange(0, 0)
        self.bar.show()
        self.setToolTip("It keeps arriving while Cipherline is open on both computers.")
        self.show()

    def receiving(self, done: int, total: int) -> None:
        self._fade.stop()
        self.state = self.RECEIVING
        percent = min(100, done * 100 // total) if total > 0 else 0
        self.text.setText(f"Receiving your message history from your other computer… {percent}%")
        self.bar.setRange(0, 100)
        self.bar.setValue(percent)
        self.bar.show()
        self.setToolTip(
            f"{done:,} of {total:,} messages so far. It keeps arriving while Cipherline is "
            "open on both computers."
        )
        self.show()

    def arrived(self, count: int) -> None:
        self.state = self.ARRIVED
        self.text.setText(f"Your message history arrived: {count:,} messages.")
        self.bar.hide()
        self.setToolTip("Click to hide")
        self.show()
        self._fade.start(self.ARRIVED_MS)

    def dismiss(self) -> None:
        self._fade.stop()
        self.state = self.HIDDEN
        self.hide()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        # Only the "arrived" line goes at a click: a transfer still running
        # would come back with its next chunk anyway.
        if self.state == self.ARRIVED:
            self.dismiss()
        super().mousePressEvent(event)


class MainWindow(QMainWindow):
    connection_state_changed = Signal(str)
    # Another device removed this one: the window shows why and the launcher
    # closes the profile (app/ui/application.py).
    device_unlinked = Signal(str)

    def __init__(self, bridge: ClientBridge, *, profile_name: str = "") -> None:
        super().__init__()
        self.bridge = bridge
        self.setWindowTitle("Cipherline" + (f" — {profile_name}" if profile_name else ""))
        self.resize(1100, 720)
        self._current: ConversationView | None = None
        self._pending_jump: int | None = None
        # The contact whose safety number the banner's action opens, when it is
        # about an identity change that blocks sending.
        self._banner_peer: str | None = None
        self.last_error = ""
        self.safety_dialog: SafetyNumberDialog | None = None

        self.conversations = ConversationListModel()
        self.messages = MessageListModel()
        self.search_results = SearchResultModel()

        splitter = QSplitter()
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(self._build_sidebar())
        splitter.addWidget(self._build_chat_area())
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([320, 780])
        central = QWidget()
        central_layout = QVBoxLayout(central)
        central_layout.setContentsMargins(0, 0, 0, 0)
        central_layout.setSpacing(0)
        self.error_bar = ErrorBar()
        central_layout.addWidget(self.error_bar)
        central_layout.addWidget(splitter, 1)
        self.setCentralWidget(central)
        self._build_menus()

        self.connection_label = QLabel("Connecting…")
        status = QStatusBar()
        status.addPermanentWidget(self.connection_label)
        self.setStatusBar(status)

        self.lock_screen = LockScreen()
        self.lock_screen.unlock_requested.connect(self._try_unlock)
        self.locked = False
        self.unlinked = False
        self._unlocked_widget: QWidget | None = None
        # The tray controller (app.ui.tray) attaches itself here; it imports this module.
        self.tray: Any = None

        self._wire_bridge()
        self.bridge.refresh_conversations()

    # ---- layout -------------------------------------------------------------
    def _build_menus(self) -> None:
        """File and Help menus. Quit (Ctrl+Q) ends the whole app, not just this
        window, whatever dialogs are open."""
        file_menu = self.menuBar().addMenu("&File")
        new_chat = QAction("New chat…", self)
        new_chat.setShortcut(QKeySequence.StandardKey.New)
        new_chat.triggered.connect(self.ask_new_chat)
        new_group = QAction("New group…", self)
        new_group.triggered.connect(self.ask_new_group)
        settings = QAction("Settings…", self)
        settings.setShortcut(QKeySequence.StandardKey.Preferences)
        settings.setMenuRole(QAction.MenuRole.PreferencesRole)
        settings.triggered.connect(self.show_settings)
        self.quit_action = QAction("Quit", self)
        # The platform's Quit keys; where it has none (Windows-style schemes, some
        # minimal desktops) Ctrl+Q, which is what people try.
        self.quit_action.setShortcuts(
            QKeySequence.keyBindings(QKeySequence.StandardKey.Quit) or [QKeySequence("Ctrl+Q")]
        )
        # From the Settings dialog or a wizard too, as in other desktop apps.
        self.quit_action.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
        self.quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        self.quit_action.triggered.connect(self.quit_app)
        # What the lock screen must not let through: the menu outlives the widgets
        # that lock() takes away.
        self.unlocked_actions = [new_chat, new_group, settings]
        for action in self.unlocked_actions:
            file_menu.addAction(action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        help_menu = self.menuBar().addMenu("&Help")
        about = QAction("About Cipherline", self)
        about.setMenuRole(QAction.MenuRole.AboutRole)
        about.triggered.connect(self.show_about)
        help_menu.addAction(about)

    def quit_app(self) -> None:
        """Ends the application, not only this window: the launcher's aboutToQuit
        handler then stops the client and the backup scheduler."""
        QApplication.quit()

    def show_about(self) -> None:
        from app.ui.settings import about_text

        QMessageBox.about(self, "About Cipherline", about_text())

    def _build_sidebar(self) -> QWidget:
        sidebar = QWidget()
        layout = QVBoxLayout(sidebar)
        layout.setContentsMargins(6, 6, 0, 6)
        # Who is signed in, where Signal shows it: over the chat list, not only in
        # the title bar (which many desktops hide or truncate).
        messenger = self.bridge.client.messenger
        self.me_label = QLabel(messenger.username)
        self.me_label.setStyleSheet("font-weight: bold; font-size: 15px;")
        self.me_label.setAccessibleName(f"Signed in as {messenger.username}")
        self.me_device = QLabel(messenger.device_name)
        self.me_device.setStyleSheet("color: palette(placeholder-text);")
        me = QVBoxLayout()
        me.setContentsMargins(4, 0, 4, 4)
        me.setSpacing(0)
        me.addWidget(self.me_label)
        me.addWidget(self.me_device)
        layout.addLayout(me)
        top = QHBoxLayout()
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search")
        self.search_edit.setAccessibleName("Search messages")
        self.search_edit.setClearButtonEnabled(True)
        self.new_chat_button = self._tool_button("✎", "New chat")
        self.new_group_button = self._tool_button("+#", "New group")
        self.settings_button = self._tool_button("⚙", "Settings")
        top.addWidget(self.search_edit, 1)
        top.addWidget(self.new_chat_button)
        top.addWidget(self.new_group_button)
        top.addWidget(self.settings_button)
        layout.addLayout(top)
        self.history_banner = HistoryBanner()
        layout.addWidget(self.history_banner)
        self.sidebar_stack = QStackedWidget()
        self.conversation_view = QListView()
        self.conversation_view.setAccessibleName("Chats")
        self.conversation_view.setModel(self.conversations)
        self.conversation_view.setItemDelegate(ConversationDelegate())
        self.conversation_view.setUniformItemSizes(True)
        self.conversation_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.search_view = QListView()
        self.search_view.setAccessibleName("Search results")
        self.search_view.setModel(self.search_results)
        self.search_view.setWordWrap(True)
        self.search_view.setSpacing(4)
        # Rows elide or wrap to the list's width; sideways scrolling helps no one.
        for view in (self.conversation_view, self.search_view):
            view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            view.setTextElideMode(Qt.TextElideMode.ElideRight)
            view.setResizeMode(QListView.ResizeMode.Adjust)
        self.sidebar_stack.addWidget(self.conversation_view)
        self.sidebar_stack.addWidget(self.search_view)
        layout.addWidget(self.sidebar_stack)

        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(200)
        self._search_timer.timeout.connect(self._run_search)
        self.search_edit.textChanged.connect(lambda _text: self._search_timer.start())
        self.conversation_view.clicked.connect(self._conversation_clicked)
        self.search_view.clicked.connect(self._search_result_clicked)
        self.new_chat_button.clicked.connect(self.ask_new_chat)
        self.new_group_button.clicked.connect(self.ask_new_group)
        self.settings_button.clicked.connect(self.show_settings)
        return sidebar

    def _tool_button(self, glyph: str, name: str) -> QToolButton:
        """A glyph-only button: the glyph says nothing to a screen reader, the
        name does, and the tooltip says it to everyone else."""
        button = QToolButton()
        button.setText(glyph)
        button.setToolTip(name)
        button.setAccessibleName(name)
        return button

    def _build_chat_area(self) -> QWidget:
        self.chat_stack = QStackedWidget()
        empty = QLabel(
            f"Cipherline {__version__}\n\nSelect a chat, or start a new one with ✎ (Ctrl+N)."
        )
        empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        empty.setStyleSheet("color: palette(placeholder-text);")
        self.empty_label = empty
        self.chat_stack.addWidget(empty)

        chat = QWidget()
        layout = QVBoxLayout(chat)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        header = QWidget()
        header_layout = QHBoxLayout(header)
        header_layout.setContentsMargins(12, 8, 12, 8)
        titles = QVBoxLayout()
        self.chat_title = QLabel()
        self.chat_title.setStyleSheet("font-weight: bold; font-size: 15px;")
        self.chat_subtitle = QLabel()
        self.chat_subtitle.setStyleSheet("color: palette(placeholder-text);")
        titles.addWidget(self.chat_title)
        titles.addWidget(self.chat_subtitle)
        header_layout.addLayout(titles, 1)
        self.timer_combo = QComboBox()
        self.timer_combo.setToolTip("Disappearing messages")
        self.timer_combo.setAccessibleName("Disappearing messages")
        for label, _seconds in TIMER_CHOICES:
            self.timer_combo.addItem(f"Disappearing: {label}")
        header_layout.addWidget(self.timer_combo)
        self.details_button = QPushButton("Details")
        self.details_button.setToolTip("Safety number, or the group's members")
        header_layout.addWidget(self.details_button)
        self.chat_menu_button = ChatMenuButton()
        header_layout.addWidget(self.chat_menu_button)
        layout.addWidget(header)

        self.banner = Banner()
        layout.addWidget(self.banner)

        self.message_view = MessageListView()
        self.message_view.setAccessibleName("Messages")
        self.message_view.setModel(self.messages)
        self.message_delegate = MessageDelegate(
            self.messages, own_name=self.bridge.client.messenger.username
        )
        self.message_view.setItemDelegate(self.message_delegate)
        self.message_view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.message_view.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.message_view.setResizeMode(QListView.ResizeMode.Adjust)
        # Bubbles wrap to the width; a row hinting a few pixels wider (while the
        # vertical scrollbar appears) must not bring a sideways scrollbar.
        self.message_view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.message_view.setFrameShape(QListView.Shape.NoFrame)
        layout.addWidget(self.message_view, 1)
        self.typing_line = TypingLine()
        layout.addWidget(self.typing_line)
        self.delete_bar = DeleteConfirmBar()
        layout.addWidget(self.delete_bar)
        self.reply_bar = ReplyBar()
        layout.addWidget(self.reply_bar)
        # Picked, dropped or pasted files wait here, with a caption, until Send.
        self.staging_bar = StagingBar()
        layout.addWidget(self.staging_bar)
        self.chat_page = chat
        self.drop_filter = FileDropFilter(chat)
        # The folders the last file dialogs were in (memory only, never saved).
        self._attach_folder: Path | None = None
        self._save_folder: Path | None = None
        self.file_dialog: QFileDialog | None = None
        self.image_viewer: ImageViewer | None = None
        self.edit_bar = EditBar()
        layout.addWidget(self.edit_bar)
        self.message_menu: MessageMenu | None = None

        composer_row = QHBoxLayout()
        composer_row.setContentsMargins(8, 8, 8, 8)
        self.attach_button = self._tool_button("+", "Attach a file")
        self.composer = Composer()
        self.send_button = QPushButton("Send")
        composer_row.addWidget(self.attach_button)
        composer_row.addWidget(self.composer, 1)
        composer_row.addWidget(self.send_button)
        layout.addLayout(composer_row)
        # In the composer's place while the chat is a request or the peer blocked.
        self.request_bar = RequestBar()
        layout.addWidget(self.request_bar)
        self.request_bar.accept_clicked.connect(self._accept_request)
        self.request_bar.block_clicked.connect(self._block_request)
        self.request_bar.delete_clicked.connect(self._delete_chat)
        self.request_bar.unblock_clicked.connect(lambda: self._set_peer_blocked(False))
        self.chat_menu_button.block_toggled.connect(self._set_peer_blocked)
        self.chat_menu_button.delete_requested.connect(self._delete_chat)
        self.chat_stack.addWidget(chat)

        self.composer.send_requested.connect(self._send_text)
        self.composer.files_attached.connect(self.stage_files)
        self.composer.image_pasted.connect(self.staging_bar.stage_image)
        self.drop_filter.files_dropped.connect(self.stage_files)
        self.staging_bar.send_requested.connect(self._send_staged)
        self.staging_bar.cancelled.connect(self.composer.setFocus)
        self.message_view.attachment_clicked.connect(self._attachment_clicked)
        self.message_delegate.thumbnails.ready.connect(
            lambda _id: self.message_view.viewport().update()
        )
        self.send_button.clicked.connect(self.composer.submit)
        self.attach_button.clicked.connect(self._choose_files)
        self.details_button.clicked.connect(self.show_details)
        self.timer_combo.activated.connect(self._timer_chosen)
        self.banner.primary_clicked.connect(self._banner_action)
        self.banner.dismissed.connect(self._dismiss_banner)
        self.message_view.verticalScrollBar().valueChanged.connect(self._scrolled)
        self.message_view.clicked.connect(self._message_clicked)
        self.message_view.quote_clicked.connect(self._quote_clicked)
        self.message_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.message_view.customContextMenuRequested.connect(self._message_context_menu)
        self.reply_bar.cancelled.connect(self.composer.setFocus)
        self.edit_bar.cancelled.connect(self._edit_cancelled)
        self.composer.escape_pressed.connect(self._composer_escape)
        self.delete_bar.confirmed.connect(self.bridge.delete_for_everyone)
        self.composer.textChanged.connect(self._composer_changed)
        # Whether typing indicators go out and are shown (Settings → Privacy); the
        # stored choice arrives from the store.
        self.typing_indicators = True
        self._typing_sent_to: int | None = None
        self._typing_sent_at = 0.0
        self.messages.older_requested.connect(self.bridge.load_older)
        # Disappearing messages show their time left; repaint it every second.
        self._countdown = QTimer(self)
        self._countdown.setInterval(1000)
        self._countdown.timeout.connect(self.messages.refresh_timed)
        self._countdown.start()
        return self.chat_stack

    def _wire_bridge(self) -> None:
        bridge = self.bridge
        bridge.conversations_changed.connect(self._conversations_changed)
        bridge.conversation_opened.connect(self._conversation_opened)
        bridge.older_loaded.connect(self._older_loaded)
        bridge.messages_changed.connect(self._messages_changed)
        bridge.messages_expired.connect(self.messages.remove_messages)
        bridge.typing_changed.connect(self._typing_changed)
        bridge.typing_setting_loaded.connect(self._typing_setting_loaded)
        bridge.load_typing_setting()
        bridge.search_finished.connect(self._search_finished)
        bridge.safety_number_ready.connect(self._safety_number_ready)
        bridge.connection_changed.connect(self._connection_changed)
        bridge.error.connect(self.show_error)
        bridge.device_unlinked.connect(self.show_unlinked)
        bridge.history_progress.connect(self._history_progressed)
        # History still arriving when the app last closed resumes by itself.
        bridge.history_state(self._history_state_loaded)

    # ---- bridge events ------------------------------------------------------
    def expect_history(self) -> None:
        """Just linked, with the other computer sending its history: the banner
        shows before the first chunk comes (the sender waits for our keys first)."""
        if self.history_banner.state == HistoryBanner.HIDDEN:
            self.history_banner.waiting()

    def _history_state_loaded(self, progress: HistoryProgress | None) -> None:
        banner = self.history_banner
        if progress is None or progress.finished:
            return  # nothing coming, or it all came in an earlier session
        if banner.state in (HistoryBanner.HIDDEN, HistoryBanner.WAITING):
            banner.receiving(progress.done_messages, progress.total_messages)

    def _history_progressed(self, progress: HistoryProgress) -> None:
        if progress.sending:
            return  # this device gives its history: the link dialog and Settings say so
        if not progress.finished:
            self.history_banner.receiving(progress.done_messages, progress.total_messages)
            return
        self.history_banner.arrived(progress.done_messages)
        # The chat list follows each chunk (ConversationsChanged); an open chat
        # is read again once, so its earlier messages show without a click.
        if self._current is not None and self.chat_stack.currentIndex() == 1:
            self.bridge.open_conversation(self._current.conversation_id)

    def _conversations_changed(self, rows: list[ConversationView]) -> None:
        selected = self._current.conversation_id if self._current else None
        self.conversations.set_conversations(rows)
        if selected is not None:
            row = self.conversations.row_of(selected)
            if row >= 0:
                self.conversation_view.setCurrentIndex(self.conversations.index(row))
                current = self.conversations.conversation_at(row)
                if current is not None:
                    self._current = current
                    self._update_header(current)
            else:
                # Deleted (or left): nothing to show in its place.
                self._current = None
                self.chat_stack.setCurrentIndex(0)

    def _conversation_opened(
        self, conversation: ConversationView, messages: list[MessageView], focus: int
    ) -> None:
        if self._current is None or self._current.conversation_id != conversation.conversation_id:
            self.reply_bar.take()  # a reply belongs to the chat it was started in
            self.staging_bar.cancel()  # and so do staged files
            if self.edit_bar.take() is not None:  # and so does an edit
                self.composer.clear()
            self.delete_bar.cancel()
            self._stop_typing()
            self.typing_line.reset()
        self._current = conversation
        self.chat_stack.setCurrentIndex(1)
        self.message_delegate.group = conversation.kind == ConversationKind.GROUP
        self.messages.show_conversation(conversation.conversation_id, messages)
        self._update_header(conversation)
        row = self.conversations.row_of(conversation.conversation_id)
        if row >= 0:
            self.conversation_view.setCurrentIndex(self.conversations.index(row))
        if focus >= 0:
            target = self.messages.row_of(focus)
            if target >= 0:
                self.message_view.scrollTo(
                    self.messages.index(target), QAbstractItemView.ScrollHint.PositionAtCenter
                )
        else:
            self.message_view.scrollToBottom()
        self.composer.setFocus()
        self.bridge.mark_read(conversation.conversation_id)

    def _older_loaded(self, conversation_id: int, older: list[MessageView]) -> None:
        bar = self.message_view.verticalScrollBar()
        distance_from_bottom = bar.maximum() - bar.value()
        self.messages.prepend_older(conversation_id, older)
        # Keep the message under the reader's eyes where it was.
        self.message_view.doItemsLayout()
        bar.setValue(bar.maximum() - distance_from_bottom)

    def _messages_changed(self, conversation_id: int, messages: list[MessageView]) -> None:
        if self._current is None or conversation_id != self._current.conversation_id:
            return
        bar = self.message_view.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 40
        self.messages.add_or_update(messages)
        for message in messages:
            if not message.outgoing and not message.system:
                self.typing_line.typing(message.sender, False)  # the message came
        if at_bottom or any(message.outgoing for message in messages):
            self.message_view.scrollToBottom()
        if self.isActiveWindow() and any(not message.outgoing for message in messages):
            self.bridge.mark_read(conversation_id)

    def changeEvent(self, event: QEvent) -> None:
        """Focused again: what arrived in the open chat meanwhile is read now (its
        badge clears and read receipts go out); until then it counts as unread."""
        super().changeEvent(event)
        if (
            event.type() == QEvent.Type.ActivationChange
            and self.isActiveWindow()
            and not self.locked
            and self._current is not None
            and self.chat_stack.currentIndex() == 1
        ):
            self.bridge.mark_read(self._current.conversation_id)

    def _search_finished(self, query: str, results: list[SearchResultView]) -> None:
        if query != self.search_edit.text().strip():
            return
        self.search_results.set_results(results)

    def _safety_number_ready(self, view: SafetyNumberView) -> None:
        if self.safety_dialog is not None:
            # One at a time: a second click on Details replaces the first dialog.
            self.safety_dialog.close()
        dialog = SafetyNumberDialog(view, self)
        dialog.verified_toggled.connect(self.bridge.set_verified)
        dialog.accept_requested.connect(self.bridge.accept_identity)
        self.safety_dialog = dialog
        dialog.show()

    def _connection_changed(self, connected: bool) -> None:
        if self.unlinked:
            return  # signed out for good; "Connecting…" would promise otherwise
        text = "Connected" if connected else "Connecting…"
        if self.connection_label.text() != text:
            self.connection_label.setText(text)
        self.connection_state_changed.emit(text)

    def show_error(self, text: str) -> None:
        """Shows `text` above the chats until it is dismissed or the next error
        replaces it; transient notes use `show_note`."""
        self.error_bar.show_error(text)
        self.last_error = text

    def show_note(self, text: str, timeout_ms: int = 5000) -> None:
        """A passing remark ("Saved") in the status bar, gone after `timeout_ms`."""
        self.statusBar().showMessage(text, timeout_ms)

    # ---- user actions -------------------------------------------------------
    def _update_header(self, conversation: ConversationView) -> None:
        self.chat_title.setText(conversation.title)
        if conversation.kind == ConversationKind.GROUP:
            self.chat_subtitle.setText(f"{len(conversation.members)} members")
        elif conversation.verified:
            self.chat_subtitle.setText("✔ Verified")
        else:
            self.chat_subtitle.setText("End-to-end encrypted")
        seconds = [value for _label, value in TIMER_CHOICES]
        index = (
            seconds.index(conversation.timer_seconds)
            if conversation.timer_seconds in seconds
            else 0
        )
        self.timer_combo.setCurrentIndex(index)
        # A verified contact's new identity blocks sending here (in a group, for every
        # member) until it is accepted; a never-verified contact's only warns.
        blocked = conversation.send_blocked
        self.composer.set_blocked(blocked)
        self.send_button.setEnabled(not blocked)
        self.attach_button.setEnabled(not blocked)
        # A greyed "+" alone reads as a button that does nothing (issue #24's
        # "attach does nothing" after the safety-number dialog): say why.
        self.attach_button.setToolTip(blocked or "Attach a file")
        self.drop_filter.enabled = not blocked
        self.chat_menu_button.show_for(conversation)
        gated = self.request_bar.show_for(conversation)
        for widget in (self.attach_button, self.composer, self.send_button):
            widget.setVisible(not gated)
        self._banner_peer = conversation.unaccepted[0] if conversation.unaccepted else None
        if self._banner_peer is not None:
            group = conversation.kind == ConversationKind.GROUP
            self.banner.show_message(
                f"{blocked} This can mean they reinstalled Cipherline, or that someone "
                "is intercepting your chats.",
                f"Review {self._banner_peer}'s safety number" if group else "Review safety number",
                dismissible=False,
            )
        elif conversation.identity_changed and conversation.peer:
            self.banner.show_message(
                f"Your safety number with {conversation.peer} has changed. This can mean "
                "they reinstalled Cipherline, or that someone is intercepting your chat. "
                "Verify it before you share anything sensitive.",
                "Verify",
            )
        else:
            self.banner.hide()

    def _conversation_clicked(self, index: QModelIndex) -> None:
        conversation = self.conversations.conversation_at(index.row())
        if conversation is not None:
            self.bridge.open_conversation(conversation.conversation_id)

    def open_conversation(self, conversation_id: int) -> None:
        self.bridge.open_conversation(conversation_id)

    def _search_result_clicked(self, index: QModelIndex) -> None:
        result = self.search_results.result_at(index.row())
        if result is not None:
            self.bridge.open_conversation(result.conversation_id, result.message_id)

    def _run_search(self) -> None:
        query = self.search_edit.text().strip()
        if not query:
            self.sidebar_stack.setCurrentIndex(0)
            self.search_results.set_results([])
            return
        self.sidebar_stack.setCurrentIndex(1)
        self.bridge.search(query)

    def _send_text(self, text: str) -> None:
        if self._current is None:
            return
        editing = self.edit_bar.take()
        if editing is not None:
            self.bridge.edit_text(editing, text)
            return
        self.bridge.send_text(self._current.conversation_id, text, self.reply_bar.take())

    # ---- edit, delete, typing (issue #24) -----------------------------------
    def start_edit(self, message: MessageView) -> None:
        """The menu's "Edit": the composer holds the message's text, "Editing…"
        shows over it, and Send replaces the text (× gives the draft back)."""
        self.reply_bar.take()
        self.edit_bar.edit(message, self.composer.toPlainText())
        self.composer.setPlainText(message.body)
        self.composer.moveCursor(QTextCursor.MoveOperation.End)
        self.composer.setFocus()

    def _edit_cancelled(self) -> None:
        self.composer.setPlainText(self.edit_bar.draft)
        self.edit_bar.draft = ""
        self.composer.setFocus()

    def _composer_escape(self) -> None:
        """Escape in the composer: an edit gives the draft back; else a reply is
        dropped (the text typed so far stays, as in Signal)."""
        if self.edit_bar.message is not None:
            self.edit_bar.cancel()
        elif self.reply_bar.message is not None:
            self.reply_bar.cancel()

    def confirm_delete_for_everyone(self, message: MessageView) -> None:
        self.delete_bar.ask(message)

    def _composer_changed(self) -> None:
        """Typing indicators: one when typing starts and again every
        TYPING_REPEAT_SECONDS while it goes on; "stopped" once the composer is
        empty (cleared, or its text sent). None while editing, nor at all when
        the user turned them off; the services also hold back those to requests
        and blocked people."""
        current = self._current
        if current is None or not self.typing_indicators or self.edit_bar.message is not None:
            return
        if current.request or current.blocked or self.composer.blocked:
            return
        if not self.composer.toPlainText().strip():
            self._stop_typing()
            return
        now = time.monotonic()
        if (
            self._typing_sent_to != current.conversation_id
            or now - self._typing_sent_at >= TYPING_REPEAT_SECONDS
        ):
            self._stop_typing()
            self.bridge.send_typing(current.conversation_id, True)
            self._typing_sent_to = current.conversation_id
            self._typing_sent_at = now

    def _stop_typing(self) -> None:
        if self._typing_sent_to is not None:
            self.bridge.send_typing(self._typing_sent_to, False)
        self._typing_sent_to = None
        self._typing_sent_at = 0.0

    def _typing_changed(self, conversation_id: int, sender: str, started: bool) -> None:
        if not self.typing_indicators:
            return
        if self._current is not None and conversation_id == self._current.conversation_id:
            self.typing_line.typing(sender, started)

    def _typing_setting_loaded(self, on: bool) -> None:
        self.typing_indicators = on
        if not on:
            self.typing_line.reset()

    def set_typing_indicators(self, on: bool) -> None:
        """Settings → Privacy: stored, and at once neither sent nor shown."""
        if not on:
            self._stop_typing()
        self._typing_setting_loaded(on)
        self.bridge.set_typing_indicators(on)

    def _message_context_menu(self, point: QPoint) -> None:
        """Right-click on a bubble, or the Menu key / Shift+F10 on the current
        message (MessageListView): Reply, React, Edit, Delete… (issue #24)."""
        index = self.message_view.indexAt(point)
        message = self.messages.message_at(index.row()) if index.isValid() else None
        if message is None or message.system or self._current is None:
            return
        menu = MessageMenu(message, self)
        menu.reply_requested.connect(self.start_reply)
        menu.react_requested.connect(self.bridge.react)
        menu.save_requested.connect(self.save_attachment_as)
        menu.open_requested.connect(self.open_attachment)
        menu.edit_requested.connect(self.start_edit)
        menu.delete_for_me_requested.connect(self.bridge.delete_for_me)
        menu.delete_for_everyone_requested.connect(self.confirm_delete_for_everyone)
        self.message_menu = menu  # kept so tests (and screen readers) can reach it
        menu.popup(self.message_view.viewport().mapToGlobal(point))

    def start_reply(self, message: MessageView) -> None:
        if self.edit_bar.take() is not None:
            self.composer.clear()
        self.reply_bar.reply_to(message)
        self.composer.setFocus()

    def _quote_clicked(self, row: int) -> None:
        """A reply's quote: scroll to the quoted message, loading it if needed."""
        message = self.messages.message_at(row)
        if message is None or message.quote is None or message.quote.message_id is None:
            self.show_note("The original message is not available")
            return
        target = self.messages.row_of(message.quote.message_id)
        if target >= 0:
            self.message_view.scrollTo(
                self.messages.index(target), QAbstractItemView.ScrollHint.PositionAtCenter
            )
        else:
            self.bridge.open_conversation(message.conversation_id, message.quote.message_id)

    # ---- attachments (issue #24) ---------------------------------------------
    def stage_files(self, paths: list[Path]) -> None:
        """Picked or dropped files go to the staging bar, not straight out."""
        if self._current is not None and paths and not self._current.send_blocked:
            self.staging_bar.stage_files(paths)

    def _send_staged(self, files: list[StagedFile], caption: str) -> None:
        if self._current is None:
            return
        for number, staged in enumerate(files):
            self.bridge.send_file(
                self._current.conversation_id,
                staged.path or Path(staged.name),
                # One caption for what was sent together: under the first file.
                caption=caption if number == 0 else "",
                thumbnail=staged.thumbnail,
                data=staged.data,
            )
        self.composer.setFocus()

    def _choose_files(self) -> None:
        """The file picker, without blocking the window (QFileDialog.open)."""
        folder = start_folder(
            self._attach_folder,
            QStandardPaths.StandardLocation.PicturesLocation,
            QStandardPaths.StandardLocation.DownloadLocation,
        )
        dialog = QFileDialog(self, "Attach files", str(folder))
        dialog.setFileMode(QFileDialog.FileMode.ExistingFiles)
        dialog.setAccessibleName("Attach files")

        def chosen(names: list[str]) -> None:
            if names:
                self._attach_folder = Path(names[0]).parent
                self.stage_files([Path(name) for name in names])

        dialog.filesSelected.connect(chosen)
        self.file_dialog = dialog
        dialog.open()

    def save_attachment_as(self, message: MessageView) -> None:
        attachment = message.attachment
        if attachment is None or not attachment.ready:
            return
        folder = start_folder(self._save_folder, QStandardPaths.StandardLocation.DownloadLocation)
        dialog = QFileDialog(self, "Save attachment", str(folder / attachment.filename))
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setAccessibleName("Save attachment")

        def chosen(name: str) -> None:
            if name:
                self._save_folder = Path(name).parent
                self.bridge.save_attachment(attachment.attachment_id, Path(name))

        dialog.fileSelected.connect(chosen)
        self.file_dialog = dialog
        dialog.open()

    def open_attachment(self, message: MessageView) -> None:
        """An image opens in the app, decrypted into memory only; any other file
        is saved where the user says (opening it elsewhere needs a plaintext copy)."""
        attachment = message.attachment
        if attachment is None or not attachment.ready:
            return
        if not attachment.mime.startswith("image/"):
            self.save_attachment_as(message)
            return
        if self.image_viewer is not None:
            self.image_viewer.close()
        viewer = ImageViewer(attachment.filename, self)
        self.image_viewer = viewer
        viewer.show()
        self.bridge.read_attachment(attachment.attachment_id, viewer.show_data)

    def _attachment_clicked(self, row: int) -> None:
        """A click on a thumbnail or file chip (and only there): open an image,
        "Save as…" any other file, fetch one left for a click."""
        message = self.messages.message_at(row)
        if message is None or message.attachment is None:
            return
        attachment = message.attachment
        if message.outgoing and message.status == MessageStatus.FAILED:
            self.bridge.retry(message.message_id)
        elif attachment.on_request:
            self.bridge.download_attachment(attachment.attachment_id)
        elif not attachment.ready:
            self.show_note("Still downloading")
        else:
            self.open_attachment(message)

    def _message_clicked(self, index: QModelIndex) -> None:
        message = self.messages.message_at(index.row())
        if message is None:
            return
        if message.outgoing and message.status == MessageStatus.FAILED:
            self.bridge.retry(message.message_id)

    def _scrolled(self, value: int) -> None:
        if value <= 20:
            self.messages.request_older()

    def _timer_chosen(self, index: int) -> None:
        seconds = TIMER_CHOICES[index][1]
        if self._current is not None and seconds != self._current.timer_seconds:
            self.bridge.set_timer(self._current.conversation_id, seconds)

    def _banner_action(self) -> None:
        if self._banner_peer is not None:
            self.bridge.request_safety_number(self._banner_peer)
        else:
            self.show_details()

    def _dismiss_banner(self) -> None:
        self.banner.hide()
        if self._current is not None and self._current.peer:
            self.bridge.acknowledge_identity(self._current.peer)

    def show_details(self) -> None:
        current = self._current
        if current is None:
            return
        if current.kind == ConversationKind.GROUP:
            dialog = GroupMembersDialog(current.title, list(current.members), self)
            self.bridge.contacts_listed.connect(dialog.set_contacts)
            self.bridge.list_contacts()
            conversation_id = current.conversation_id
            dialog.add_requested.connect(lambda name: self.bridge.add_member(conversation_id, name))
            dialog.remove_requested.connect(
                lambda name: self.bridge.remove_member(conversation_id, name)
            )
            self.members_dialog = dialog
            dialog.show()
        elif current.peer:
            self.bridge.request_safety_number(current.peer)

    # ---- settings and app lock -----------------------------------------------------
    def show_settings(self) -> None:
        tray = self.tray
        dialog = SettingsDialog(
            self.bridge.client.messenger.username,
            self.bridge.client.messenger.device_name,
            previews=bool(tray and tray.show_previews),
            typing_indicators=self.typing_indicators,
            lock_minutes=(tray.lock_after_ms // 60_000) if tray else 0,
            lock_available=self.bridge.lock_available(),
            backups=self._backups_tab(),
            parent=self,
        )
        if tray is not None:
            dialog.previews_changed.connect(lambda on: setattr(tray, "show_previews", on))
            dialog.lock_changed.connect(tray.set_lock_after)
        dialog.typing_indicators_changed.connect(self.set_typing_indicators)
        dialog.remove_device.connect(self.bridge.remove_device)
        dialog.link_requested.connect(lambda: self.link_device(dialog))
        self.bridge.devices_listed.connect(dialog.set_devices)
        self.bridge.list_devices()
        # A history transfer started from an earlier link dialog may still run.
        self.bridge.history_progress.connect(dialog.set_history_progress)
        self.bridge.history_state(dialog.set_history_progress, sending=True)
        dialog.unblock_requested.connect(lambda name: self.bridge.set_blocked(name, False))
        self.bridge.blocked_listed.connect(dialog.set_blocked)
        self.bridge.list_blocked()
        self.settings_dialog = dialog
        dialog.show()

    def link_device(self, parent: QWidget | None = None) -> None:
        """Settings → Devices → Link a new device (app/ui/linking.py); the list of
        devices is read again once one is linked."""
        from app.ui.linking import LinkExistingDeviceDialog

        dialog = LinkExistingDeviceDialog(self.bridge.client, parent or self)
        dialog.linked.connect(lambda _name: self.bridge.list_devices())
        self.bridge.history_progress.connect(dialog.show_history_progress)
        self.link_dialog = dialog
        dialog.show()

    def show_unlinked(self, reason: str) -> None:
        """This device was removed from the account: unlike the app lock, nothing
        opens it again (it is signed out of the relay), so the window says so,
        offers Quit, and the launcher closes the profile."""
        from app.ui.linking import UnlinkedScreen

        if self.unlinked:
            return
        self.unlinked = True
        self.locked = True  # keeps the idle lock and focus handling away
        for action in self.unlocked_actions:
            action.setEnabled(False)
        for dialog in self.findChildren(QDialog):
            dialog.close()
        taken = self.takeCentralWidget()
        if self._unlocked_widget is None:
            self._unlocked_widget = taken
        else:  # the app lock's screen was showing; kept so Qt does not delete it
            self.lock_screen = taken  # type: ignore[assignment]
        screen = UnlinkedScreen(reason)
        screen.quit_requested.connect(self.quit_app)
        self.setCentralWidget(screen)
        self.unlinked_screen = screen
        self.connection_label.setText("Signed out")
        self.device_unlinked.emit(reason)

    def _backups_tab(self) -> QWidget:
        from app.ui.backup_wizards import BackupsTab, vault_access_for

        messenger = self.bridge.client.messenger
        return BackupsTab(messenger.store, messenger.profile, vault_access_for(messenger.profile))

    def lock(self) -> None:
        if self.locked or not self.bridge.lock_available():
            return
        self.locked = True
        for action in self.unlocked_actions:
            action.setEnabled(False)
        self._unlocked_widget = self.takeCentralWidget()
        self.setCentralWidget(self.lock_screen)
        self.lock_screen = self.centralWidget()  # type: ignore[assignment]
        self.lock_screen.reset()

    def _try_unlock(self, passphrase: str) -> None:
        self.bridge.check_passphrase(passphrase, self._unlock_result)

    def _unlock_result(self, ok: bool) -> None:
        if not ok:
            self.lock_screen.show_error("That passphrase is not correct.")
            return
        self.locked = False
        for action in self.unlocked_actions:
            action.setEnabled(True)
        screen = self.takeCentralWidget()
        assert self._unlocked_widget is not None
        self.setCentralWidget(self._unlocked_widget)
        self.lock_screen = screen  # type: ignore[assignment]

    def ask_new_chat(self) -> None:
        """The contact picker; its list fills in when the contacts arrive."""
        dialog = NewChatDialog(self)
        dialog.chosen.connect(self.bridge.start_direct)
        self.bridge.contacts_listed.connect(dialog.set_contacts)
        self.bridge.list_contacts()
        self.new_chat_dialog = dialog
        dialog.open()

    def ask_new_group(self) -> None:
        dialog = NewGroupDialog(self)
        dialog.chosen.connect(self.bridge.create_group)
        self.bridge.contacts_listed.connect(dialog.set_contacts)
        self.bridge.list_contacts()
        self.new_group_dialog = dialog
        dialog.open()

    # ---- message requests and blocking ---------------------------------------
    def _accept_request(self) -> None:
        if self._current is not None:
            self.bridge.accept_request(self._current.conversation_id)

    def _block_request(self) -> None:
        if self._current is not None:
            self.bridge.block_request(self._current.conversation_id)

    def _delete_chat(self) -> None:
        if self._current is not None:
            self.bridge.delete_conversation(self._current.conversation_id)

    def _set_peer_blocked(self, blocked: bool) -> None:
        if self._current is not None and self._current.peer:
            self.bridge.set_blocked(self._current.peer, blocked)
