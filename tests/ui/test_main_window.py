"""The desktop app driven as a person would, offscreen, against a real relay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from app.services.views import MessageStatus
from app.ui.application import Launcher
from app.ui.dialogs import OnboardingDialog, UnlockDialog
from app.ui.main_window import MainWindow
from app.ui.safety import SafetyNumberDialog
from tests.services.helpers import FAST_KDF, Person, make_profile, wait_for
from tests.support.components import RelayProcess

PASSPHRASE = "alice's long passphrase"


@pytest.fixture
def bob(tmp_path: Path, relay: RelayProcess) -> Iterator[Person]:
    person = Person(tmp_path, "bob", relay)
    yield person
    person.stop()


def _onboard(qtbot: QtBot, tmp_path: Path, relay: RelayProcess) -> Launcher:
    make_profile(tmp_path, "alice", relay)
    launcher = Launcher(tmp_path / "profiles" / "alice", kdf=FAST_KDF)
    launcher.start()
    dialog = launcher.dialog
    assert isinstance(dialog, OnboardingDialog)
    qtbot.addWidget(dialog)
    qtbot.mouseClick(dialog.create_button, Qt.MouseButton.LeftButton)
    qtbot.keyClicks(dialog.username_edit, "alice")
    dialog.passphrase_choice.setChecked(True)
    qtbot.keyClicks(dialog.passphrase_edit, PASSPHRASE)
    qtbot.keyClicks(dialog.passphrase_repeat, PASSPHRASE)
    with qtbot.waitSignal(launcher.ready, timeout=20_000):
        qtbot.mouseClick(dialog.submit_button, Qt.MouseButton.LeftButton)
    assert launcher.window is not None
    qtbot.addWidget(launcher.window)
    return launcher


def _bodies(window: MainWindow) -> list[str]:
    model = window.messages
    return [model.message_at(row).body for row in range(model.rowCount())]  # type: ignore[union-attr]


def test_onboarding_validates_before_anything_is_created(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess
) -> None:
    make_profile(tmp_path, "carol", relay)
    launcher = Launcher(tmp_path / "profiles" / "carol", kdf=FAST_KDF)
    launcher.start()
    dialog = launcher.dialog
    assert isinstance(dialog, OnboardingDialog)
    qtbot.addWidget(dialog)
    dialog.pages.setCurrentIndex(1)
    dialog.passphrase_choice.setChecked(True)
    qtbot.keyClicks(dialog.username_edit, "carol")
    qtbot.keyClicks(dialog.passphrase_edit, "short")
    qtbot.mouseClick(dialog.submit_button, Qt.MouseButton.LeftButton)
    assert "at least 8" in dialog.error_label.text()
    assert not (tmp_path / "profiles" / "carol" / "store.key").exists()


def test_chat_verify_search_restart_and_offline_queue(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess, bob: Person
) -> None:
    launcher = _onboard(qtbot, tmp_path, relay)
    window = launcher.window
    assert window is not None
    qtbot.waitUntil(lambda: window.connection_label.text() == "Connected", timeout=15_000)

    # New chat with bob, type a message, press Enter.
    window.bridge.start_direct("bob")
    qtbot.waitUntil(lambda: window.chat_title.text() == "bob", timeout=15_000)
    qtbot.keyClicks(window.composer, "hello from the desktop")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: _bodies(window) == ["hello from the desktop"], timeout=10_000)
    assert window.composer.toPlainText() == ""
    wait_for(
        lambda: any(c.title == "alice" for c in bob.client.conversations().result()),
        what="bob receives",
    )
    conversation = next(c for c in bob.client.conversations().result() if c.title == "alice")
    bob.client.send_text(conversation.conversation_id, "hi desktop, bob here").result(20)
    qtbot.waitUntil(lambda: "hi desktop, bob here" in _bodies(window), timeout=15_000)
    first = window.messages.message_at(0)
    qtbot.waitUntil(
        lambda: (
            window.messages.message_at(0).status  # type: ignore[union-attr]
            in (MessageStatus.DELIVERED, MessageStatus.READ)
        ),
        timeout=15_000,
    )
    assert first is not None

    # Verify bob's safety number.
    window.show_details()
    qtbot.waitUntil(
        lambda: isinstance(getattr(window, "safety_dialog", None), SafetyNumberDialog),
        timeout=10_000,
    )
    dialog = window.safety_dialog
    assert len(dialog.group_labels) == 12
    assert dialog.group_labels[0].text() == bob.client.safety_number("alice").result().groups[0]
    qtbot.mouseClick(dialog.verify_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.chat_subtitle.text() == "✔ Verified", timeout=10_000)

    # Search and jump.
    qtbot.keyClicks(window.search_edit, "desktop")
    qtbot.waitUntil(lambda: window.search_results.rowCount() == 2, timeout=10_000)
    window.search_view.clicked.emit(window.search_results.index(1))
    qtbot.waitUntil(lambda: window.chat_title.text() == "bob", timeout=10_000)
    window.search_edit.clear()

    # Relay down: the window says so, the message waits; relay up: it goes out.
    relay.stop()
    qtbot.waitUntil(lambda: window.connection_label.text() == "Connecting…", timeout=20_000)
    qtbot.keyClicks(window.composer, "sent while offline")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "sent while offline" in _bodies(window), timeout=10_000)
    offline = window.messages.message_at(window.messages.rowCount() - 1)
    assert offline is not None
    assert offline.status == MessageStatus.SENDING
    relay.start()
    qtbot.waitUntil(lambda: window.connection_label.text() == "Connected", timeout=30_000)
    wait_for(
        lambda: (
            "sent while offline"
            in [
                m.body
                for m in bob.client.open_conversation(conversation.conversation_id).result()[1]
            ]
        ),
        timeout=30,
        what="queued message delivered after reconnect",
    )

    # Restart: unlock with the passphrase, history is still there.
    launcher.shutdown()
    window.close()
    again = Launcher(tmp_path / "profiles" / "alice")
    again.start()
    unlock = again.dialog
    assert isinstance(unlock, UnlockDialog)
    qtbot.addWidget(unlock)
    qtbot.keyClicks(unlock.passphrase_edit, "wrong passphrase")
    qtbot.mouseClick(unlock.unlock_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "not correct" in unlock.error_label.text(), timeout=10_000)
    unlock.passphrase_edit.clear()
    qtbot.keyClicks(unlock.passphrase_edit, PASSPHRASE)
    with qtbot.waitSignal(again.ready, timeout=20_000):
        qtbot.mouseClick(unlock.unlock_button, Qt.MouseButton.LeftButton)
    restarted = again.window
    assert restarted is not None
    qtbot.addWidget(restarted)
    qtbot.waitUntil(lambda: restarted.conversations.rowCount() == 1, timeout=10_000)
    restarted.open_conversation(restarted.conversations.conversation_at(0).conversation_id)  # type: ignore[union-attr]
    qtbot.waitUntil(lambda: "hi desktop, bob here" in _bodies(restarted), timeout=10_000)
    again.shutdown()


def test_identity_change_shows_a_banner(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess, bob: Person
) -> None:
    from app.protocol.device_list import sign_device_list
    from app.protocol.identity import DeviceIdentity, LocalPrekeys

    launcher = _onboard(qtbot, tmp_path, relay)
    window = launcher.window
    assert window is not None
    window.bridge.start_direct("bob")
    qtbot.waitUntil(lambda: window.chat_title.text() == "bob", timeout=15_000)
    # Bob sets up afresh: a new identity, which publishes a device list of its own
    # past the relay's version (docs/protocol.md §13).
    bob_relay = bob.profile.relay(token=bob.client.messenger.relay_token)
    added = bob_relay.add_device("new laptop")
    fresh = bob.profile.relay(token=added["token"])
    reinstalled = DeviceIdentity.generate()
    fresh.upload_keys(LocalPrekeys.generate(batch=2).upload_json(reinstalled))
    device_id = int(added["device_id"])
    fresh.publish_device_list(
        sign_device_list(reinstalled, 2, [(device_id, reinstalled.public)], int(time.time() * 1000))
    )
    bob_relay.remove_device(1)
    window.bridge.start_direct("bob")
    qtbot.waitUntil(window.banner.isVisible, timeout=15_000)
    assert "safety number with bob has changed" in window.banner.text.text()
    launcher.shutdown()


def test_app_lock_needs_the_passphrase(qtbot: QtBot, tmp_path: Path, relay: RelayProcess) -> None:
    launcher = _onboard(qtbot, tmp_path, relay)
    window = launcher.window
    assert window is not None
    main = window.centralWidget()
    window.lock()
    assert window.locked
    assert window.centralWidget() is not main
    screen = window.lock_screen
    qtbot.keyClicks(screen.passphrase, "not it at all")
    qtbot.mouseClick(screen.unlock_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "not correct" in screen.error.text(), timeout=10_000)
    assert window.locked
    screen.passphrase.clear()
    qtbot.keyClicks(screen.passphrase, PASSPHRASE)
    qtbot.mouseClick(screen.unlock_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.locked, timeout=10_000)
    assert window.centralWidget() is main
    launcher.shutdown()
