"""The main window."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QMainWindow, QStatusBar, QVBoxLayout, QWidget

from app import __version__
from app.net import RelayClient
from app.ui.workers import run_in_pool


class MainWindow(QMainWindow):
    connection_state_changed = Signal(str)

    def __init__(self, relay: RelayClient | None) -> None:
        super().__init__()
        self.setWindowTitle("Cipherline")
        self.resize(1000, 680)
        self._relay = relay
        central = QWidget()
        layout = QVBoxLayout(central)
        self.welcome = QLabel(f"Cipherline {__version__}")
        self.welcome.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.welcome)
        self.setCentralWidget(central)
        self.connection_label = QLabel("Connecting…")
        status = QStatusBar()
        status.addPermanentWidget(self.connection_label)
        self.setStatusBar(status)

    def check_connection(self) -> None:
        if self._relay is None:
            self.connection_label.setText("No relay configured")
            return
        relay = self._relay
        run_in_pool(relay.health, self._on_connected, self._on_connection_failed)

    def _on_connected(self, _health: object) -> None:
        self._set_connection_state("Connected")

    def _on_connection_failed(self, _error: BaseException) -> None:
        self._set_connection_state("Connecting…")

    def _set_connection_state(self, text: str) -> None:
        self.connection_label.setText(text)
        self.connection_state_changed.emit(text)
