"""Issue #24: the contact picker, the new-group member picker and the message
request bar, driven offscreen against a real relay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from app.services.views import ConversationView, MessageStatus
from app.ui.bridge import ClientBridge
from app.ui.dialogs import NewChatDialog, NewGroupDialog
from app.ui.main_window import MainWindow
from tests.services.helpers import Person, on_core, wait_for
from tests.support.components import RelayProcess


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    cast = {name: Person(tmp_path, name, relay) for name in ("alice", "bob", "carol")}
    yield cast
    for person in cast.values():
        person.stop()


def _window(qtbot: QtBot, person: Person) -> MainWindow:
    window = MainWindow(ClientBridge(person.client))
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window


def _row(window: MainWindow, title: str) -> ConversationView | None:
    model = window.conversations
    for row in range(model.rowCount()):
        view = model.conversation_at(row)
        if view is not None and view.title == title:
            return view
    return None


def test_the_new_chat_picker_filters_contacts_as_you_type(qtbot: QtBot) -> None:
    dialog = NewChatDialog()
    qtbot.addWidget(dialog)
    dialog.set_contacts(["bob", "bobby", "carol"])
    assert dialog.visible_names() == ["bob", "bobby", "carol"]
    qtbot.keyClicks(dialog.search_edit, "bo")
    assert dialog.visible_names() == ["bob", "bobby"]
    # A possible username that is no contact is offered too, after the contacts.
    qtbot.keyClicks(dialog.search_edit, "bb")
    assert dialog.visible_names() == ["bobby", "bobb"]
    # No contact matches: the typed username is offered as a new chat.
    dialog.search_edit.setText("Dave")
    assert dialog.visible_names() == ["dave"]
    assert "New chat with" in dialog.contact_list.item(0).text()
    # Not a possible username: nothing to start, and the hint says why.
    dialog.search_edit.setText("no spaces")
    assert dialog.visible_names() == []
    assert not dialog.start_button.isEnabled()
    assert "no spaces" in dialog.hint.text()
    dialog.search_edit.setText("car")
    with qtbot.waitSignal(dialog.chosen) as chosen:
        qtbot.keyClick(dialog.search_edit, Qt.Key.Key_Return)
    assert chosen.args == ["carol"]


def test_the_picker_starts_a_chat_with_a_contact_or_a_new_username(
    qtbot: QtBot, people: dict[str, Person]
) -> None:
    alice = people["alice"]
    alice.client.start_direct("bob").result(20)  # bob is a contact, carol is not
    window = _window(qtbot, alice)
    window.ask_new_chat()
    dialog = window.new_chat_dialog
    qtbot.waitUntil(lambda: dialog.visible_names() == ["bob"], timeout=10_000)
    qtbot.keyClicks(dialog.search_edit, "carol")
    assert dialog.visible_names() == ["carol"]
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.chat_title.text() == "carol", timeout=15_000)
    assert alice.client.contacts().result(20) == ["bob", "carol"]
    # A name nobody has: the relay has no keys for it, and the window says so.
    window.ask_new_chat()
    window.new_chat_dialog.search_edit.setText("nobody-here")
    window.new_chat_dialog.accept()
    qtbot.waitUntil(lambda: "no Cipherline user" in window.last_error, timeout=15_000)
    window.close()


def test_the_new_group_dialog_picks_members_from_contacts(
    qtbot: QtBot, people: dict[str, Person]
) -> None:
    alice = people["alice"]
    for name in ("bob", "carol"):
        alice.client.start_direct(name).result(20)
    window = _window(qtbot, alice)
    window.ask_new_group()
    dialog = window.new_group_dialog
    assert isinstance(dialog, NewGroupDialog)
    qtbot.waitUntil(lambda: dialog.member_list.count() == 2, timeout=10_000)
    qtbot.keyClicks(dialog.title_edit, "Climbing")
    qtbot.mouseClick(dialog.create_button, Qt.MouseButton.LeftButton)
    assert "Tick at least one" in dialog.error_label.text()
    qtbot.keyClicks(dialog.filter_edit, "car")
    visible = [
        dialog.member_list.item(row).text()
        for row in range(dialog.member_list.count())
        if not dialog.member_list.item(row).isHidden()
    ]
    assert visible == ["carol"]
    dialog.member_list.item(1).setCheckState(Qt.CheckState.Checked)
    assert dialog.members() == ["carol"]
    qtbot.mouseClick(dialog.create_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.chat_title.text() == "Climbing", timeout=15_000)
    assert window._current is not None
    assert sorted(window._current.members) == ["alice", "carol"]
    window.close()


def test_the_request_bar_accepts_blocks_unblocks_and_deletes(
    qtbot: QtBot, people: dict[str, Person]
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    to_bob = alice.client.start_direct("bob").result(20)
    alice.client.send_text(to_bob.conversation_id, "hi bob, it's alice").result(20)
    carol_chat = carol.client.start_direct("bob").result(20)
    carol.client.send_text(carol_chat.conversation_id, "buy cheap watches").result(20)
    window = _window(qtbot, bob)
    qtbot.waitUntil(
        lambda: _row(window, "alice") is not None and _row(window, "carol") is not None,
        timeout=20_000,
    )
    request = _row(window, "alice")
    assert request is not None and request.request

    # A request: the bar instead of the composer; opening it sends no read receipt.
    window.open_conversation(request.conversation_id)
    qtbot.waitUntil(lambda: window.chat_title.text() == "alice", timeout=15_000)
    assert window.request_bar.isVisible()
    assert not window.composer.isVisible() and not window.send_button.isVisible()
    assert window.request_bar.accept_button.isVisible()

    def alice_status() -> MessageStatus:
        _view, messages = alice.client.open_conversation(to_bob.conversation_id).result(20)
        return messages[0].status

    qtbot.wait(1000)
    assert alice_status() != MessageStatus.READ
    qtbot.mouseClick(window.request_bar.accept_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.request_bar.isVisible(), timeout=15_000)
    assert window.composer.isVisible()
    wait_for(lambda: alice_status() == MessageStatus.READ, what="the read receipt on accepting")

    spam = _row(window, "carol")
    assert spam is not None and spam.request
    window.open_conversation(spam.conversation_id)
    qtbot.waitUntil(lambda: window.chat_title.text() == "carol", timeout=15_000)
    qtbot.mouseClick(window.request_bar.block_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(window.request_bar.unblock_button.isVisible, timeout=15_000)
    assert not window.request_bar.accept_button.isVisible()
    assert bob.client.blocked_contacts().result(20) == ["carol"]
    qtbot.mouseClick(window.request_bar.unblock_button, Qt.MouseButton.LeftButton)
    # Unblocked, still a request.
    qtbot.waitUntil(window.request_bar.accept_button.isVisible, timeout=15_000)
    assert bob.client.blocked_contacts().result(20) == []
    qtbot.mouseClick(window.request_bar.delete_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: _row(window, "carol") is None, timeout=15_000)
    assert window.chat_stack.currentIndex() == 0
    store = bob.client.messenger.store
    assert on_core(bob, lambda: store.conversations.by_peer("carol")) is None
    window.close()
