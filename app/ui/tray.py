"""Tray icon, desktop notifications and the app lock."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon

from app.services.events import IncomingMessage
from app.ui.bridge import ClientBridge
from app.ui.main_window import MainWindow


class TrayController(QObject):
    """Shows a notification per incoming message — with its text only when the user
    allowed previews — and locks the window after the chosen idle time."""

    def __init__(self, window: MainWindow, bridge: ClientBridge, icon: QIcon) -> None:
        super().__init__(window)
        self.window = window
        self.show_previews = False
        self.notifications: list[tuple[str, str]] = []
        self.tray = QSystemTrayIcon(icon, window)
        menu = QMenu()
        open_action = QAction("Open Cipherline", menu)
        open_action.triggered.connect(self._raise)
        about_action = QAction("About Cipherline", menu)
        about_action.triggered.connect(self._about)
        quit_action = QAction("Quit", menu)
        quit_action.triggered.connect(QApplication.quit)
        menu.addAction(open_action)
        menu.addAction(about_action)
        menu.addAction(quit_action)
        self.tray.setContextMenu(menu)
        self.tray.setToolTip("Cipherline")
        self.tray.activated.connect(lambda _reason: self._raise())
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.tray.show()
        bridge.incoming_message.connect(self._notify)
        self.lock_after_ms = 0
        self._idle = QTimer(self)
        self._idle.setSingleShot(True)
        self._idle.timeout.connect(self.window.lock)
        QApplication.instance().installEventFilter(self)  # type: ignore[union-attr]

    def set_lock_after(self, minutes: int) -> None:
        self.lock_after_ms = minutes * 60_000
        self._restart_idle()

    def _restart_idle(self) -> None:
        if self.lock_after_ms:
            self._idle.start(self.lock_after_ms)
        else:
            self._idle.stop()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() in (
            QEvent.Type.KeyPress,
            QEvent.Type.MouseButtonPress,
            QEvent.Type.MouseMove,
        ):
            self._restart_idle()
        return False

    def _about(self) -> None:
        from PySide6.QtWidgets import QMessageBox

        from app.ui.settings import about_text

        QMessageBox.about(self.window, "About Cipherline", about_text())

    def _raise(self) -> None:
        self.window.showNormal()
        self.window.raise_()
        self.window.activateWindow()

    def _notify(self, message: IncomingMessage) -> None:
        if self.window.isActiveWindow():
            return
        title = message.conversation_title
        body = f"{message.sender}: {message.body}" if self.show_previews else "New message"
        self.notifications.append((title, body))
        if self.tray.isVisible():
            self.tray.showMessage(title, body, QSystemTrayIcon.MessageIcon.Information, 5000)
