"""The main window opens offscreen and reports the relay's state."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from app.net import RelayClient
from app.ui.main_window import MainWindow
from tests.support.components import RelayProcess


def test_main_window_opens_and_connects(qtbot: QtBot, relay: RelayProcess) -> None:
    window = MainWindow(RelayClient(relay.url, relay.ca_file))
    qtbot.addWidget(window)
    window.show()
    assert window.windowTitle() == "Cipherline"
    window.check_connection()
    qtbot.waitUntil(lambda: window.connection_label.text() == "Connected", timeout=10_000)


def test_main_window_says_connecting_when_relay_is_down(qtbot: QtBot, relay: RelayProcess) -> None:
    relay.stop()
    window = MainWindow(RelayClient(relay.url, relay.ca_file, timeout=1))
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.connection_state_changed, timeout=10_000) as state:
        window.check_connection()
    assert state.args == ["Connecting…"]
    assert window.connection_label.text() == "Connecting…"
