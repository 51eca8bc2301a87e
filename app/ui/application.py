"""Start the Qt application for one profile."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtWidgets import QApplication

from app.config import SERVER_CONFIG_NAME, ServerConfig, write_ca_file
from app.net import RelayClient
from app.ui.main_window import MainWindow


def run_gui(profile: Path) -> int:
    application = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(application, QApplication)
    application.setApplicationName("Cipherline")
    application.setDesktopFileName("cipherline")
    relay: RelayClient | None = None
    config_path = profile / SERVER_CONFIG_NAME
    if config_path.exists():
        config = ServerConfig.load(config_path)
        relay = RelayClient(config.relay_url, write_ca_file(profile, config))
    window = MainWindow(relay)
    window.show()
    window.check_connection()
    return application.exec()
