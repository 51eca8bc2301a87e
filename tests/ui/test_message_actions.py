"""Reply, React and the read ticks in the desktop chat, offscreen, against a real
relay (issue #24)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QStyleOptionViewItem
from pytestqt.qtbot import QtBot

from app.services.views import MessageStatus, MessageView
from app.ui.bridge import ClientBridge
from app.ui.delegates import STATUS_MARKS
from app.ui.main_window import MainWindow
from app.ui.message_actions import MessageMenu
from tests.services.helpers import Person, wait_for
from tests.support.components import RelayProcess
from tests.ui.test_accessibility import unnamed_controls


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    cast = {name: Person(tmp_path, name, relay) for name in ("alice", "bob")}
    yield cast
    for person in cast.values():
        person.stop()


def _rows(window: MainWindow) -> list[MessageView]:
    model = window.messages
    return [m for m in (model.message_at(r) for r in range(model.rowCount())) if m is not None]


def _row_of(window: MainWindow, body: str) -> int:
    return next(r for r, m in enumerate(_rows(window)) if m.body == body)


def _bob_sees(bob: Person, body: str) -> MessageView | None:
    chats = [c for c in bob.client.conversations().result() if c.title == "alice"]
    if not chats:
        return None
    _view, messages = bob.client.open_conversation(chats[0].conversation_id).result()
    return next((m for m in messages if m.body == body), None)


def _option(window: MainWindow, row: int) -> QStyleOptionViewItem:
    option = QStyleOptionViewItem()
    window.message_view.initViewItemOption(option)
    option.rect = window.message_view.visualRect(window.messages.index(row))
    return option


def _right_click(qtbot: QtBot, window: MainWindow, row: int) -> MessageMenu:
    rect = window.message_view.visualRect(window.messages.index(row))
    layout = window.message_delegate.layout(_option(window, row), window.messages.index(row))
    assert layout is not None
    point = layout.bubble.center().toPoint()
    assert rect.contains(point)
    window.message_menu = None
    window.message_view.customContextMenuRequested.emit(point)
    qtbot.waitUntil(lambda: window.message_menu is not None, timeout=5_000)
    menu = window.message_menu
    assert menu is not None
    return menu


def test_reply_react_and_read_ticks(qtbot: QtBot, people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "lunch at noon?").result(20)
    wait_for(lambda: _bob_sees(bob, "lunch at noon?"), what="bob receives")
    window = MainWindow(ClientBridge(alice.client))
    qtbot.addWidget(window)
    window.resize(900, 700)
    window.show()
    window.open_conversation(chat.conversation_id)
    qtbot.waitUntil(lambda: [m.body for m in _rows(window)] == ["lunch at noon?"], timeout=15_000)

    # Delivered, then read: the mark changes shape, and says so to a screen reader.
    qtbot.waitUntil(lambda: _rows(window)[0].status == MessageStatus.DELIVERED, timeout=15_000)
    delivered = window.message_delegate.footer(_rows(window)[0])
    assert delivered.endswith(STATUS_MARKS[MessageStatus.DELIVERED])
    index = window.messages.index(0)
    assert index.data(Qt.ItemDataRole.AccessibleTextRole).endswith(", delivered")
    bob_chat = next(c for c in bob.client.conversations().result() if c.title == "alice")
    # Read receipts go only to a chat bob accepted (a first message is a request).
    bob.client.accept_request(bob_chat.conversation_id).result(20)
    bob.client.mark_read(bob_chat.conversation_id).result(20)
    qtbot.waitUntil(lambda: _rows(window)[0].status == MessageStatus.READ, timeout=15_000)
    read = window.message_delegate.footer(_rows(window)[0])
    assert read.endswith(STATUS_MARKS[MessageStatus.READ]) and read != delivered
    assert window.messages.index(0).data(Qt.ItemDataRole.AccessibleTextRole).endswith(", read")

    # Bob answers; alice replies to his message through the right-click menu.
    bob.client.send_text(bob_chat.conversation_id, "where?").result(20)
    qtbot.waitUntil(lambda: "where?" in [m.body for m in _rows(window)], timeout=15_000)
    menu = _right_click(qtbot, window, _row_of(window, "where?"))
    assert [a.text() for a in menu.actions()][:2] == ["Reply", "React"]
    reply = menu.action_named("Reply")
    assert reply is not None
    reply.trigger()
    menu.close()
    assert window.reply_bar.isVisible()
    assert window.reply_bar.label.text() == "Replying to bob: where?"
    assert unnamed_controls(window) == []
    # × cancels; Reply again, then send.
    qtbot.mouseClick(window.reply_bar.cancel_button, Qt.MouseButton.LeftButton)
    assert not window.reply_bar.isVisible()
    window.start_reply(_rows(window)[_row_of(window, "where?")])
    qtbot.keyClicks(window.composer, "the usual place")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "the usual place" in [m.body for m in _rows(window)], timeout=10_000)
    assert not window.reply_bar.isVisible()
    sent = _rows(window)[_row_of(window, "the usual place")]
    assert sent.quote is not None and (sent.quote.author, sent.quote.snippet) == ("bob", "where?")
    wait_for(lambda: _bob_sees(bob, "the usual place"), what="bob receives the reply")
    at_bob = _bob_sees(bob, "the usual place")
    assert at_bob is not None and at_bob.quote is not None and at_bob.quote.snippet == "where?"

    # The quote makes the bubble taller and is where a click goes to the original.
    row = _row_of(window, "the usual place")
    layout = window.message_delegate.layout(_option(window, row), window.messages.index(row))
    assert layout is not None and layout.quote is not None
    plain_row = _row_of(window, "lunch at noon?")
    plain = window.message_delegate.layout(
        _option(window, plain_row), window.messages.index(plain_row)
    )
    assert plain is not None and plain.quote is None
    assert layout.bubble.height() > plain.bubble.height()
    with qtbot.waitSignal(window.message_view.quote_clicked, timeout=5_000) as clicked:
        qtbot.mouseClick(
            window.message_view.viewport(), Qt.MouseButton.LeftButton, pos=layout.quote.center()
        )
    assert clicked.args == [row]
    with qtbot.assertNotEmitted(window.message_view.quote_clicked):
        qtbot.mouseClick(
            window.message_view.viewport(),
            Qt.MouseButton.LeftButton,
            pos=QPoint(layout.text.left() + 2, layout.text.center().y()),
        )

    # React with 👍 from the menu: the pill appears under bob's bubble, and bob sees it.
    target = _row_of(window, "where?")
    menu = _right_click(qtbot, window, target)
    thumbs = menu.action_named("👍  Thumbs up")
    assert thumbs is not None and not thumbs.isChecked()
    thumbs.trigger()
    menu.close()
    qtbot.waitUntil(lambda: _rows(window)[target].reactions == (("👍", 1),), timeout=10_000)
    reacted = window.message_delegate.layout(_option(window, target), window.messages.index(target))
    assert reacted is not None and reacted.reactions is not None
    assert "reactions 👍 1" in window.messages.index(target).data(
        Qt.ItemDataRole.AccessibleTextRole
    )
    wait_for(
        lambda: getattr(_bob_sees(bob, "where?"), "reactions", None) == (("👍", 1),),
        what="bob sees alice's reaction",
    )
    # The menu shows it chosen; choosing it again takes it away.
    menu = _right_click(qtbot, window, target)
    again = menu.action_named("👍  Thumbs up")
    assert again is not None and again.isChecked()
    again.trigger()
    menu.close()
    qtbot.waitUntil(lambda: _rows(window)[target].reactions == (), timeout=10_000)
    # Bob reacts to alice's reply: it arrives in the open chat without a reload.
    assert at_bob is not None
    bob.client.react(at_bob.message_id, "😂").result(20)
    qtbot.waitUntil(
        lambda: _rows(window)[_row_of(window, "the usual place")].reactions == (("😂", 1),),
        timeout=15_000,
    )
    window.grab()  # paints every part once: quote, pill, read mark
    window.close()
