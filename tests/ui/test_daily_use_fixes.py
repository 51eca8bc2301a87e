"""Issue #24, the "Broken" items, in the desktop app (offscreen, the real main
window, a real relay): disappearing messages leave the open chat when they expire
and show the time they have left, choosing the timer already set changes nothing,
the attach button works after the safety-number dialog is closed with Escape, and
the open chat's unread badge clears when the window is focused again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QFileDialog, QWidget
from pytestqt.qtbot import QtBot

from app.services.views import ConversationView, MessageStatus, MessageView
from app.ui.bridge import ClientBridge
from app.ui.main_window import MainWindow
from app.ui.safety import SafetyNumberDialog
from tests.services.helpers import Person, wait_for
from tests.support.components import RelayProcess


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    cast = {name: Person(tmp_path, name, relay) for name in ("alice", "bob")}
    yield cast
    for person in cast.values():
        person.stop()


def _conversation(person: Person, title: str) -> ConversationView:
    return next(c for c in person.client.conversations().result(20) if c.title == title)


def _rows(window: MainWindow) -> list[MessageView]:
    model = window.messages
    return [model.message_at(row) for row in range(model.rowCount())]  # type: ignore[misc]


def _bodies(window: MainWindow) -> list[str]:
    return [view.body for view in _rows(window) if not view.system]


def _notices(window: MainWindow) -> list[str]:
    return [view.body for view in _rows(window) if view.system]


def _window(qtbot: QtBot, person: Person, peer: str) -> MainWindow:
    window = MainWindow(ClientBridge(person.client))
    qtbot.addWidget(window)
    window.show()
    window.open_conversation(_conversation(person, peer).conversation_id)
    qtbot.waitUntil(lambda: window.chat_title.text() == peer, timeout=15_000)
    return window


def _chatting(people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hello bob").result(20)
    wait_for(lambda: any(c.title == "alice" for c in bob.client.conversations().result(20)))


def test_disappearing_messages_leave_both_open_chats_and_show_their_time(
    qtbot: QtBot, people: dict[str, Person]
) -> None:
    _chatting(people)
    alice_window = _window(qtbot, people["alice"], "bob")
    bob_window = _window(qtbot, people["bob"], "alice")
    qtbot.waitUntil(lambda: "hello bob" in _bodies(bob_window), timeout=15_000)

    # A short timer (the menu's shortest is 30 s), set through the services.
    chat = alice_window.messages.conversation_id
    assert chat is not None
    people["alice"].client.set_timer(chat, 3).result(20)
    qtbot.waitUntil(lambda: len(_notices(bob_window)) == 1, timeout=15_000)

    qtbot.keyClicks(alice_window.composer, "this vanishes")
    qtbot.keyClick(alice_window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "this vanishes" in _bodies(alice_window), timeout=10_000)
    timed = next(view for view in _rows(alice_window) if view.body == "this vanishes")
    assert timed.expires_at_ms is not None
    assert "⏱" in alice_window.message_delegate.footer(timed)
    untimed = next(view for view in _rows(alice_window) if view.body == "hello bob")
    assert "⏱" not in alice_window.message_delegate.footer(untimed)
    qtbot.waitUntil(lambda: "this vanishes" in _bodies(bob_window), timeout=15_000)
    received = next(view for view in _rows(bob_window) if view.body == "this vanishes")
    assert "⏱" in bob_window.message_delegate.footer(received)

    # Both open chats drop it when it expires, without switching chats.
    qtbot.waitUntil(lambda: "this vanishes" not in _bodies(alice_window), timeout=15_000)
    qtbot.waitUntil(lambda: "this vanishes" not in _bodies(bob_window), timeout=15_000)
    assert "hello bob" in _bodies(alice_window)


def test_choosing_the_timer_already_set_posts_nothing(
    qtbot: QtBot, people: dict[str, Person]
) -> None:
    _chatting(people)
    alice_window = _window(qtbot, people["alice"], "bob")
    bob_window = _window(qtbot, people["bob"], "alice")

    thirty = 1  # "30 seconds" in the menu
    alice_window.timer_combo.setCurrentIndex(thirty)
    alice_window.timer_combo.activated.emit(thirty)
    qtbot.waitUntil(lambda: len(_notices(bob_window)) == 1, timeout=15_000)
    qtbot.waitUntil(lambda: len(_notices(alice_window)) == 1, timeout=15_000)
    qtbot.waitUntil(lambda: bob_window.timer_combo.currentIndex() == thirty, timeout=15_000)

    # The same choice again, on either side: no notice, no message.
    alice_window.timer_combo.activated.emit(thirty)
    bob_window.timer_combo.activated.emit(thirty)
    # A message sent after it arrives after anything the choice would have sent.
    qtbot.keyClicks(alice_window.composer, "still thirty")
    qtbot.keyClick(alice_window.composer, Qt.Key.Key_Return)
    qtbot.keyClicks(bob_window.composer, "yes thirty")
    qtbot.keyClick(bob_window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "still thirty" in _bodies(bob_window), timeout=15_000)
    qtbot.waitUntil(lambda: "yes thirty" in _bodies(alice_window), timeout=15_000)
    assert len(_notices(alice_window)) == 1
    assert len(_notices(bob_window)) == 1


def test_attach_works_after_closing_the_safety_number_dialog_with_escape(
    qtbot: QtBot, tmp_path: Path, people: dict[str, Person]
) -> None:
    # The report: three clicks on attach in a row did nothing after Escape closed
    # the safety-number dialog. So three rounds of Details → Escape → attach, each
    # of which must open a new picker, without blocking the window (open(), not
    # exec(): the window still takes events while it is up).
    _chatting(people)
    window = _window(qtbot, people["alice"], "bob")
    window.activateWindow()
    photo = tmp_path / "photo.bin"
    photo.write_bytes(b"\x89not really a png" * 100)

    pickers: list[QFileDialog] = []
    for round_number in range(3):
        with qtbot.waitSignal(window.bridge.safety_number_ready, timeout=15_000):
            qtbot.mouseClick(window.details_button, Qt.MouseButton.LeftButton)
        safety = window.safety_dialog
        assert isinstance(safety, SafetyNumberDialog)
        qtbot.waitExposed(safety)
        QTest.keyClick(safety, Qt.Key.Key_Escape)
        qtbot.waitUntil(lambda safety=safety: not safety.isVisible(), timeout=5_000)
        assert window.attach_button.isEnabled() and window.attach_button.isVisible()

        qtbot.mouseClick(window.attach_button, Qt.MouseButton.LeftButton)
        picker = window.file_dialog
        assert isinstance(picker, QFileDialog), f"round {round_number + 1}: no picker"
        assert picker not in pickers, f"round {round_number + 1}: the click opened nothing"
        assert picker.isVisible() and picker.fileMode() == QFileDialog.FileMode.ExistingFiles
        pickers.append(picker)
        if round_number < 2:
            QTest.keyClick(picker, Qt.Key.Key_Escape)
            qtbot.waitUntil(lambda picker=picker: not picker.isVisible(), timeout=5_000)

    # The third picker chooses: the file stages over the composer, Send sends it
    # (the rest of the attachment flow is tests/ui/test_attachments.py).
    pickers[-1].filesSelected.emit([str(photo)])
    pickers[-1].close()
    qtbot.waitUntil(lambda: window.staging_bar.ready, timeout=10_000)
    qtbot.mouseClick(window.staging_bar.send_button, Qt.MouseButton.LeftButton)

    def attached() -> bool:
        return any(
            view.attachment is not None and view.attachment.filename == "photo.bin"
            for view in _rows(window)
        )

    qtbot.waitUntil(attached, timeout=15_000)
    bob = people["bob"]
    wait_for(
        lambda: any(
            m.attachment is not None and m.attachment.filename == "photo.bin"
            for m in bob.client.open_conversation(
                _conversation(bob, "alice").conversation_id
            ).result(20)[1]
        ),
        what="bob receives the attachment",
    )


def test_open_chat_badge_clears_when_the_window_is_focused_again(
    qtbot: QtBot, people: dict[str, Person]
) -> None:
    _chatting(people)
    window = _window(qtbot, people["alice"], "bob")
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5_000)

    # Another window takes the focus; bob writes into the open chat meanwhile.
    elsewhere = QWidget()
    qtbot.addWidget(elsewhere)
    elsewhere.show()
    elsewhere.activateWindow()
    qtbot.waitUntil(lambda: not window.isActiveWindow(), timeout=5_000)
    bob = people["bob"]
    bob_chat = _conversation(bob, "alice").conversation_id
    bob.client.send_text(bob_chat, "are you there?").result(20)
    qtbot.waitUntil(lambda: "are you there?" in _bodies(window), timeout=15_000)

    def badge() -> int:
        row = window.conversations.row_of(window.messages.conversation_id or -1)
        view = window.conversations.conversation_at(row)
        return view.unread if view is not None else -1

    qtbot.waitUntil(lambda: badge() == 1, timeout=15_000)

    # Focused again: the badge clears and bob sees it read.
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5_000)
    qtbot.waitUntil(lambda: badge() == 0, timeout=15_000)
    wait_for(
        lambda: any(
            m.body == "are you there?" and m.status == MessageStatus.READ
            for m in bob.client.open_conversation(bob_chat).result(20)[1]
        ),
        what="bob sees it read",
    )
