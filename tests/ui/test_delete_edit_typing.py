"""Edit, Delete for me, Delete for everyone and the "… is typing" line in the
desktop chat, offscreen, against a real relay (issue #24)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from app.services.events import TypingChanged
from app.services.views import DELETED_TEXT, MessageView
from app.ui import message_actions
from app.ui.bridge import ClientBridge
from app.ui.main_window import MainWindow
from app.ui.message_actions import TypingLine
from tests.services.helpers import Person, wait_for
from tests.support.components import RelayProcess
from tests.ui.test_accessibility import unnamed_controls
from tests.ui.test_message_actions import _right_click, _row_of, _rows


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    cast = {name: Person(tmp_path, name, relay) for name in ("alice", "bob")}
    yield cast
    for person in cast.values():
        person.stop()


def _bob_chat(bob: Person) -> list[MessageView]:
    chats = [c for c in bob.client.conversations().result() if c.title == "alice"]
    if not chats:
        return []
    _view, messages = bob.client.open_conversation(chats[0].conversation_id).result()
    return [m for m in messages if not m.system]


def _texts(menu: message_actions.MessageMenu) -> list[str]:
    return [a.text() for a in menu.actions() if a.text()]


def _typing_from(person: Person, who: str) -> list[bool]:
    return [
        e.started for e in list(person.events) if isinstance(e, TypingChanged) and e.sender == who
    ]


def test_edit_and_delete_from_the_menu(qtbot: QtBot, people: dict[str, Person]) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    for text in ("see you at 5", "wrong chat, sorry"):
        alice.client.send_text(chat.conversation_id, text).result(20)
    wait_for(lambda: len(_bob_chat(bob)) == 2, what="bob receives")
    bob_chat = next(c for c in bob.client.conversations().result() if c.title == "alice")
    bob.client.send_text(bob_chat.conversation_id, "ok").result(20)
    window = MainWindow(ClientBridge(alice.client))
    qtbot.addWidget(window)
    window.resize(900, 700)
    window.show()
    window.open_conversation(chat.conversation_id)
    qtbot.waitUntil(lambda: "ok" in [m.body for m in _rows(window)], timeout=15_000)

    # Someone else's message: only Delete for me of the three.
    theirs = _right_click(qtbot, window, _row_of(window, "ok"))
    assert "Delete for me" in _texts(theirs)
    assert "Edit" not in _texts(theirs) and "Delete for everyone" not in _texts(theirs)
    theirs.close()
    mine = _right_click(qtbot, window, _row_of(window, "see you at 5"))
    assert _texts(mine) == ["Reply", "Edit", "React", "Delete for me", "Delete for everyone"]

    # Edit: the composer holds the text under "Editing…"; × gives the draft back.
    window.composer.setPlainText("a draft")
    edit = mine.action_named("Edit")
    assert edit is not None
    edit.trigger()
    mine.close()
    assert window.edit_bar.isVisible() and window.edit_bar.label.text() == "Editing…"
    assert window.composer.toPlainText() == "see you at 5"
    assert unnamed_controls(window) == []
    qtbot.mouseClick(window.edit_bar.cancel_button, Qt.MouseButton.LeftButton)
    assert not window.edit_bar.isVisible() and window.composer.toPlainText() == "a draft"
    window.composer.clear()
    window.start_edit(_rows(window)[_row_of(window, "see you at 5")])
    window.composer.setPlainText("see you at 6")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "see you at 6" in [m.body for m in _rows(window)], timeout=10_000)
    edited = _rows(window)[_row_of(window, "see you at 6")]
    assert edited.edited and "see you at 5" not in [m.body for m in _rows(window)]
    assert window.message_delegate.footer(edited).startswith("edited")
    index = window.messages.index(_row_of(window, "see you at 6"))
    assert ", edited," in index.data(Qt.ItemDataRole.AccessibleTextRole)
    assert not window.edit_bar.isVisible()
    wait_for(
        lambda: any(m.body == "see you at 6" and m.edited for m in _bob_chat(bob)),
        what="bob sees the edit",
    )

    # Delete for everyone asks first, in the window, without a modal dialog.
    menu = _right_click(qtbot, window, _row_of(window, "wrong chat, sorry"))
    delete = menu.action_named("Delete for everyone")
    assert delete is not None
    delete.trigger()
    menu.close()
    assert window.delete_bar.isVisible()
    assert unnamed_controls(window) == []
    assert QtBot is not None and window.isEnabled()  # nothing modal took over
    qtbot.mouseClick(window.delete_bar.delete_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: DELETED_TEXT in [m.body for m in _rows(window)], timeout=10_000)
    assert not window.delete_bar.isVisible()
    assert "wrong chat, sorry" not in [m.body for m in _rows(window)]
    wait_for(
        lambda: [m.body for m in _bob_chat(bob)] == ["see you at 6", DELETED_TEXT, "ok"],
        what="bob sees it deleted",
    )
    # A deleted message offers neither Edit nor Delete for everyone again.
    gone = _right_click(qtbot, window, _row_of(window, DELETED_TEXT))
    assert _texts(gone) == ["Reply", "React", "Delete for me"]
    assert not gone.reply_action.isEnabled()
    gone.close()

    # Delete for me: gone here at once, still there for bob.
    menu = _right_click(qtbot, window, _row_of(window, "ok"))
    for_me = menu.action_named("Delete for me")
    assert for_me is not None
    for_me.trigger()
    menu.close()
    qtbot.waitUntil(lambda: "ok" not in [m.body for m in _rows(window)], timeout=10_000)
    assert "ok" in [m.body for m in _bob_chat(bob)]
    window.close()


def test_the_typing_line_shows_and_expires(
    qtbot: QtBot, people: dict[str, Person], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(message_actions, "TYPING_SHOWN_MS", 1500)
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hi").result(20)
    wait_for(lambda: _bob_chat(bob), what="bob receives")
    bob_chat = next(c for c in bob.client.conversations().result() if c.title == "alice")
    bob.client.accept_request(bob_chat.conversation_id).result(20)
    window = MainWindow(ClientBridge(alice.client))
    qtbot.addWidget(window)
    window.show()
    window.open_conversation(chat.conversation_id)
    qtbot.waitUntil(lambda: [m.body for m in _rows(window)] == ["hi"], timeout=15_000)
    wait_for(
        lambda: not bob.client.core(lambda: bob.client.messenger.store.outbox.pending(5)).result(),
        what="bob's outbox empties",
    )

    assert not window.typing_line.isVisible()
    bob.client.send_typing(bob_chat.conversation_id, True).result(20)
    qtbot.waitUntil(window.typing_line.isVisible, timeout=10_000)
    assert window.typing_line.text() == "bob is typing…"
    assert window.typing_line.accessibleName() == "bob is typing…"
    # Nothing more comes: it goes by itself.
    qtbot.waitUntil(lambda: not window.typing_line.isVisible(), timeout=5_000)
    # A "stopped" ends it at once, and so does bob's message.
    bob.client.send_typing(bob_chat.conversation_id, True).result(20)
    qtbot.waitUntil(window.typing_line.isVisible, timeout=10_000)
    bob.client.send_typing(bob_chat.conversation_id, False).result(20)
    qtbot.waitUntil(lambda: not window.typing_line.isVisible(), timeout=1_200)
    bob.client.send_typing(bob_chat.conversation_id, True).result(20)
    qtbot.waitUntil(window.typing_line.isVisible, timeout=10_000)
    bob.client.send_text(bob_chat.conversation_id, "here").result(20)
    qtbot.waitUntil(lambda: "here" in [m.body for m in _rows(window)], timeout=10_000)
    assert not window.typing_line.isVisible()

    # Alice typing sends one; clearing the composer sends "stopped".
    qtbot.keyClicks(window.composer, "h")
    wait_for(lambda: _typing_from(bob, "alice") == [True], what="bob sees alice typing")
    window.composer.clear()
    wait_for(lambda: _typing_from(bob, "alice") == [True, False], what="bob sees her stop")

    # Settings → Privacy: off, none is sent and none is shown.
    window.show_settings()
    settings = window.settings_dialog
    assert settings.typing_box.isChecked()
    settings.typing_box.setChecked(False)
    settings.close()
    wait_for(lambda: alice.client.typing_indicators().result() is False, what="stored")
    qtbot.keyClicks(window.composer, "more")
    bob.client.send_typing(bob_chat.conversation_id, True).result(20)
    bob.client.send_text(bob_chat.conversation_id, "marker").result(20)
    qtbot.waitUntil(lambda: "marker" in [m.body for m in _rows(window)], timeout=10_000)
    assert not window.typing_line.isVisible()
    assert _typing_from(bob, "alice") == [True, False]
    window.close()


def test_the_typing_line_names_everyone_typing(qtbot: QtBot) -> None:
    line = TypingLine()
    qtbot.addWidget(line)
    line.typing("bob", True)
    line.typing("alice", True)
    assert line.text() == "alice and bob are typing…"
    line.typing("carol", True)
    assert line.text() == "alice, bob and carol are typing…"
    line.typing("bob", False)
    assert line.text() == "alice and carol are typing…"
    line.reset()
    assert line.text() == "" and line.typers() == []
