"""Message polish in the desktop chat (issue #24), offscreen, against a real relay:
a reply quoting a message deleted for everyone says so, one's own deleted bubble
is neutral, Escape cancels an edit or a reply, and the keyboard opens the
message menu (Menu key, Shift+F10)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from app.services.views import DELETED_TEXT, MessageView
from app.ui.bridge import ClientBridge
from app.ui.delegates import ACCENT
from app.ui.main_window import MainWindow
from tests.services.helpers import Person, wait_for
from tests.support.components import RelayProcess
from tests.ui.test_message_actions import _option, _row_of, _rows


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    cast = {name: Person(tmp_path, name, relay) for name in ("alice", "bob")}
    yield cast
    for person in cast.values():
        person.stop()


def _window(qtbot: QtBot, alice: Person, conversation_id: int, bodies: list[str]) -> MainWindow:
    window = MainWindow(ClientBridge(alice.client))
    qtbot.addWidget(window)
    window.resize(900, 700)
    window.show()
    window.open_conversation(conversation_id)
    qtbot.waitUntil(lambda: [m.body for m in _rows(window)] == bodies, timeout=15_000)
    return window


def _bob_chat(bob: Person) -> list[MessageView]:
    chats = [c for c in bob.client.conversations().result() if c.title == "alice"]
    if not chats:
        return []
    return [m for m in bob.client.open_conversation(chats[0].conversation_id).result()[1]]


def _fill(window: MainWindow, row: int) -> QColor:
    """The colour just inside the left edge of a row's bubble, as painted."""
    window.message_view.viewport().repaint()
    layout = window.message_delegate.layout(_option(window, row), window.messages.index(row))
    assert layout is not None
    point = layout.bubble.center().toPoint()
    point.setX(int(layout.bubble.left()) + 5)
    return window.message_view.viewport().grab().toImage().pixelColor(point)


def test_deleting_a_quoted_message_and_its_bubble(qtbot: QtBot, people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "the code is 4711").result(20)
    wait_for(lambda: _bob_chat(bob), what="bob receives")
    window = _window(qtbot, alice, chat.conversation_id, ["the code is 4711"])

    # Bob's answer quotes it; then alice deletes it for everyone.
    bob_chat = next(c for c in bob.client.conversations().result() if c.title == "alice")
    original = _bob_chat(bob)[0]
    bob.client.send_text(bob_chat.conversation_id, "noted", original.message_id).result(20)
    qtbot.waitUntil(lambda: "noted" in [m.body for m in _rows(window)], timeout=15_000)
    reply = _rows(window)[_row_of(window, "noted")]
    assert reply.quote is not None and reply.quote.snippet == "the code is 4711"
    assert _fill(window, _row_of(window, "the code is 4711")) == ACCENT

    window.confirm_delete_for_everyone(_rows(window)[_row_of(window, "the code is 4711")])
    qtbot.mouseClick(window.delete_bar.delete_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: DELETED_TEXT in [m.body for m in _rows(window)], timeout=10_000)

    # The reply on screen no longer quotes the deleted words, and says why.
    reply = _rows(window)[_row_of(window, "noted")]
    assert reply.quote is not None and reply.quote.snippet == DELETED_TEXT
    sentence = window.messages.index(_row_of(window, "noted")).data(
        Qt.ItemDataRole.AccessibleTextRole
    )
    assert f"replying to alice: {DELETED_TEXT}" in sentence and "4711" not in sentence
    # So does the reply loaded afresh, here and at bob's.
    _view, reloaded = alice.client.open_conversation(chat.conversation_id).result(20)
    quote = next(m for m in reloaded if m.body == "noted").quote
    assert quote is not None and quote.snippet == DELETED_TEXT
    wait_for(
        lambda: any(
            m.body == "noted" and m.quote is not None and m.quote.snippet == DELETED_TEXT
            for m in _bob_chat(bob)
        ),
        what="bob's reply stops quoting it",
    )

    # The deleted bubble of her own is neutral, not the accent blue.
    deleted_fill = _fill(window, _row_of(window, DELETED_TEXT))
    assert deleted_fill != ACCENT
    assert deleted_fill == _fill(window, _row_of(window, "noted"))


def test_escape_cancels_an_edit_or_a_reply(qtbot: QtBot, people: dict[str, Person]) -> None:
    alice = people["alice"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "meet at 5").result(20)
    window = _window(qtbot, alice, chat.conversation_id, ["meet at 5"])
    message = _rows(window)[0]

    window.composer.setPlainText("a draft")
    window.start_edit(message)
    assert window.edit_bar.isVisible() and window.composer.toPlainText() == "meet at 5"
    QTest.keyClick(window.composer, Qt.Key.Key_Escape)
    assert not window.edit_bar.isVisible() and window.edit_bar.message is None
    assert window.composer.toPlainText() == "a draft"

    window.start_reply(message)
    assert window.reply_bar.isVisible()
    QTest.keyClick(window.composer, Qt.Key.Key_Escape)
    assert not window.reply_bar.isVisible() and window.reply_bar.message is None
    assert window.composer.toPlainText() == "a draft"  # the text stays
    # Nothing to cancel: Escape changes nothing, and Return still sends a plain message.
    QTest.keyClick(window.composer, Qt.Key.Key_Escape)
    QTest.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "a draft" in [m.body for m in _rows(window)], timeout=10_000)
    sent = _rows(window)[_row_of(window, "a draft")]
    assert sent.quote is None and not sent.edited
    assert [m.body for m in _rows(window)] == ["meet at 5", "a draft"]


def test_the_keyboard_opens_the_message_menu(qtbot: QtBot, people: dict[str, Person]) -> None:
    alice = people["alice"]
    chat = alice.client.start_direct("bob").result(20)
    for text in ("first", "second"):
        alice.client.send_text(chat.conversation_id, text).result(20)
    window = _window(qtbot, alice, chat.conversation_id, ["first", "second"])
    view = window.message_view
    view.setFocus()

    # The Menu key with no current message: the newest one's menu.
    QTest.keyClick(view, Qt.Key.Key_Menu)
    qtbot.waitUntil(lambda: window.message_menu is not None, timeout=5_000)
    menu = window.message_menu
    assert menu is not None and menu.isVisible()
    assert view.currentIndex().row() == _row_of(window, "second")
    reply = menu.action_named("Reply")
    assert reply is not None
    reply.trigger()
    menu.close()
    assert window.reply_bar.message is not None and window.reply_bar.message.body == "second"
    window.reply_bar.cancel()

    # Up moves to the older message; Shift+F10 opens its menu.
    window.message_menu = None
    view.setFocus()
    QTest.keyClick(view, Qt.Key.Key_Up)
    assert view.currentIndex().row() == _row_of(window, "first")
    QTest.keyClick(view, Qt.Key.Key_F10, Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: window.message_menu is not None, timeout=5_000)
    menu = window.message_menu
    assert menu is not None
    edit = menu.action_named("Edit")
    assert edit is not None
    edit.trigger()
    menu.close()
    assert window.edit_bar.message is not None and window.edit_bar.message.body == "first"
    # Plain F10 is not the menu key.
    window.message_menu = None
    view.setFocus()
    QTest.keyClick(view, Qt.Key.Key_F10)
    assert window.message_menu is None
