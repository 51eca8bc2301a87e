"""Issue #24, chrome and wording, in the real main window against a real relay:
errors stay until dismissed, Quit (Ctrl+Q) ends the app, your own name shows over
the chat list, the chat list never scrolls sideways, avatar colours survive a
restart, the Settings dialog shows all its tabs, the safety-number dialog asks
for a comparison (not a scan) and shows the verified state, and what the app
says to people starts with a capital letter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QApplication, QLabel, QSplitter
from pytestqt.qtbot import QtBot

from app.services.views import SafetyNumberView
from app.ui.bridge import ClientBridge
from app.ui.main_window import MainWindow
from app.ui.safety import SafetyNumberDialog
from app.ui.settings import SettingsDialog
from app.ui.widgets import sentence
from tests.services.helpers import Person
from tests.support.components import RelayProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def alice(tmp_path: Path, relay: RelayProcess) -> Iterator[Person]:
    person = Person(tmp_path, "alice", relay)
    yield person
    person.stop()


@pytest.fixture
def window(qtbot: QtBot, alice: Person) -> MainWindow:
    shown = MainWindow(ClientBridge(alice.client))
    qtbot.addWidget(shown)
    shown.resize(1000, 700)
    shown.show()
    qtbot.waitExposed(shown)
    return shown


def test_an_error_stays_until_dismissed_or_replaced(qtbot: QtBot, window: MainWindow) -> None:
    # A real failure through the bridge: a chat with someone who does not exist.
    window.bridge.start_direct("nobody-by-that-name")
    qtbot.waitUntil(window.error_bar.isVisible, timeout=15_000)
    assert (
        window.error_bar.text.text() == "There is no Cipherline user called “nobody-by-that-name”."
    )
    # Not a timed status-bar message: nothing is set to clear it by itself.
    assert window.statusBar().currentMessage() == ""
    qtbot.wait(300)
    assert window.error_bar.isVisible()
    window.show_error("the file was not sent: disk full")
    assert window.error_bar.text.text() == "The file was not sent: disk full."
    qtbot.mouseClick(window.error_bar.close_button, Qt.MouseButton.LeftButton)
    assert not window.error_bar.isVisible()


def test_quit_is_in_the_file_menu_and_on_ctrl_q(
    qtbot: QtBot, window: MainWindow, monkeypatch: pytest.MonkeyPatch
) -> None:
    quits: list[bool] = []
    monkeypatch.setattr(QApplication, "quit", staticmethod(lambda: quits.append(True)))
    action = window.quit_action
    assert QKeySequence("Ctrl+Q") in action.shortcuts()
    file_menu = window.menuBar().actions()[0].menu()
    assert action in file_menu.actions()  # type: ignore[union-attr]
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5_000)
    qtbot.keyClick(window, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
    assert quits == [True]


def test_the_lock_screen_keeps_the_menu_from_opening_chats_or_settings(
    qtbot: QtBot, window: MainWindow
) -> None:
    assert window.bridge.lock_available()
    window.lock()
    assert window.locked
    assert all(not action.isEnabled() for action in window.unlocked_actions)
    assert window.quit_action.isEnabled()
    # Settings (the last one) opens without blocking, so it can be tried for real;
    # the chat dialogs are modal and are covered by being disabled.
    window.unlocked_actions[-1].trigger()
    assert getattr(window, "settings_dialog", None) is None
    window.lock_screen.passphrase.setText("alice passphrase")
    window.lock_screen.unlock_button.click()
    qtbot.waitUntil(lambda: not window.locked, timeout=15_000)
    assert all(action.isEnabled() for action in window.unlocked_actions)


def test_own_name_over_the_chat_list(window: MainWindow, alice: Person) -> None:
    assert window.me_label.text() == "alice"
    assert window.me_label.isVisible()
    assert window.me_device.text() == alice.client.messenger.device_name


def test_the_chat_list_never_scrolls_sideways(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess, alice: Person, window: MainWindow
) -> None:
    # The longest username there can be, and a group title longer still.
    peer = Person(tmp_path, "a-very-long-username-to-elide-32", relay)
    try:
        alice.client.start_direct(peer.name).result(20)
        alice.client.create_group("A group whose title is far too long " * 3, [peer.name]).result(
            20
        )
    finally:
        peer.stop()
    qtbot.waitUntil(lambda: window.conversations.rowCount() == 2, timeout=15_000)
    splitter = window.findChild(QSplitter)
    assert splitter is not None
    # Wide first, then narrowed, as a person dragging the divider does.
    splitter.setSizes([600, 400])
    qtbot.wait(50)
    splitter.setSizes([240, 760])
    qtbot.wait(50)
    bar = window.conversation_view.horizontalScrollBar()
    assert not bar.isVisible()
    assert bar.maximum() == 0
    for row in range(2):
        rect = window.conversation_view.visualRect(window.conversations.index(row))
        assert rect.width() == window.conversation_view.viewport().width()
    # Nor the messages (a restored window showed a 14 px sideways bar there).
    window.conversation_view.setCurrentIndex(window.conversations.index(0))
    qtbot.wait(50)
    assert not window.message_view.horizontalScrollBar().isVisible()


def test_avatar_colours_are_the_same_on_every_launch() -> None:
    """Two interpreters with different string-hash salts pick the same colours."""
    script = (
        "from app.ui.delegates import avatar_color, sender_color;"
        "print(avatar_color('alice').name(), sender_color('bob', dark=False).name())"
    )
    colours = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        colours.add(result.stdout.strip())
    assert len(colours) == 1, colours


def test_settings_shows_every_tab_without_scroll_arrows(qtbot: QtBot) -> None:
    dialog = SettingsDialog("alice", "laptop", previews=False, lock_minutes=0, lock_available=True)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    # Even at the smallest size the dialog allows.
    dialog.resize(dialog.minimumSize().expandedTo(dialog.minimumSizeHint()))
    qtbot.wait(50)
    bar = dialog.tabs.tabBar()
    assert dialog.tabs.count() >= 6
    for index in range(dialog.tabs.count()):
        assert bar.rect().contains(bar.tabRect(index)), dialog.tabs.tabText(index)
    assert not dialog.tabs.usesScrollButtons()


def _safety_view(*, verified: bool = False) -> SafetyNumberView:
    return SafetyNumberView("bob", "0123456789" * 6, b"\x00" * 65, verified)


def test_safety_number_dialog_asks_for_a_comparison_and_shows_verification(
    qtbot: QtBot,
) -> None:
    dialog = SafetyNumberDialog(_safety_view())
    qtbot.addWidget(dialog)
    dialog.show()
    words = " ".join(label.text() for label in dialog.findChildren(QLabel)).lower()
    # A desktop has no camera to scan with: no QR, no "scan".
    assert "scan" not in words
    assert "read them aloud" in words and "side by side" in words
    assert not any(
        label.pixmap() is not None and not label.pixmap().isNull()
        for label in dialog.findChildren(QLabel)
    )
    assert [label.text() for label in dialog.group_labels][:2] == ["01234", "56789"]
    assert dialog.status_label.text().startswith("Not verified")

    with qtbot.waitSignal(dialog.verified_toggled) as marked:
        qtbot.mouseClick(dialog.verify_button, Qt.MouseButton.LeftButton)
    assert marked.args == ["bob", True]
    assert dialog.isVisible()
    assert dialog.status_label.text().startswith("✔ Verified")
    assert dialog.verify_button.text() == "Clear verification"

    with qtbot.waitSignal(dialog.verified_toggled) as cleared:
        qtbot.mouseClick(dialog.verify_button, Qt.MouseButton.LeftButton)
    assert cleared.args == ["bob", False]
    assert dialog.status_label.text().startswith("Not verified")
    assert dialog.verify_button.text() == "Mark as verified"
    qtbot.mouseClick(dialog.close_button, Qt.MouseButton.LeftButton)
    assert not dialog.isVisible()


def test_a_verified_contact_opens_as_verified(qtbot: QtBot) -> None:
    dialog = SafetyNumberDialog(_safety_view(verified=True))
    qtbot.addWidget(dialog)
    assert dialog.status_label.text().startswith("✔ Verified")
    assert dialog.verify_button.text() == "Clear verification"


def test_service_errors_read_as_sentences() -> None:
    assert sentence("there is no Cipherline user called “x”") == (
        "There is no Cipherline user called “x”."
    )
    assert sentence("Already a sentence.") == "Already a sentence."
    assert sentence("what now?") == "What now?"
    assert sentence("  ") == ""


# Lowercase on purpose: data (names, paths), units and codes, not sentences.
_NOT_SENTENCES = re.compile(r"^(alice|laptop|bob|\d|/|~|[a-z]+://)")


def _lowercase_starts(texts: list[str]) -> list[str]:
    problems = []
    for text in texts:
        plain = re.sub(r"<[^>]+>", "", text).strip()
        first = next((c for c in plain if c.isalpha()), "")
        if first and first.islower() and not _NOT_SENTENCES.match(plain):
            problems.append(plain)
    return problems


def test_what_the_windows_say_starts_with_a_capital(qtbot: QtBot, window: MainWindow) -> None:
    from PySide6.QtWidgets import QAbstractButton, QLineEdit, QWidget, QWizard

    from app.ui.backup_wizards import RestoreWizard, SetupWizard

    store = window.bridge.client.messenger.store
    profile = window.bridge.client.messenger.profile
    tops: list[QWidget] = [
        window,
        SetupWizard(store, profile, None),
        RestoreWizard(profile.parent / "new", None, None),
    ]
    window.show_settings()
    tops.append(window.settings_dialog)
    texts: list[str] = []
    for top in tops:
        for widget in [top, *top.findChildren(QWidget)]:
            if isinstance(widget, QLabel | QAbstractButton):
                texts.append(widget.text())
            if isinstance(widget, QLineEdit):
                texts.append(widget.placeholderText())
            texts.extend((widget.toolTip(), widget.accessibleName(), widget.windowTitle()))
        if isinstance(top, QWizard):
            for page_id in top.pageIds():
                page = top.page(page_id)
                texts.extend((page.title(), page.subTitle()))
    texts.extend(window.timer_combo.itemText(i) for i in range(window.timer_combo.count()))
    assert _lowercase_starts(texts) == []
    for top in tops[1:]:
        top.close()
