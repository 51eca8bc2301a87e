"""Issue #18, item 6, in the desktop app (offscreen, the real main window, a real relay).

Alice verified Bob; Bob reinstalls and writes to her. In the group they share the
banner names Bob and offers his safety number, the composer shows why nothing can be
sent, and a send that gets through anyway comes back as a sentence. Accepting the
new safety number from the banner's dialog clears all of it, and Bob (on his new
install) reads what Alice then sends to the group.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from app.services.views import ConversationView
from app.ui.bridge import ClientBridge
from app.ui.main_window import MainWindow
from app.ui.safety import SafetyNumberDialog
from tests.services.helpers import Person, wait_for
from tests.support.components import RelayProcess


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    cast = {name: Person(tmp_path, name, relay) for name in ("alice", "bob", "carol")}
    yield cast
    for person in cast.values():
        person.stop()


def _conversation(person: Person, title: str) -> ConversationView:
    return next(c for c in person.client.conversations().result(20) if c.title == title)


def _bodies(person: Person, title: str) -> list[str]:
    views = [c for c in person.client.conversations().result(20) if c.title == title]
    if not views:
        return []
    _view, messages = person.client.open_conversation(views[0].conversation_id).result(20)
    return [m.body for m in messages if not m.system]


def _window_bodies(window: MainWindow) -> list[str]:
    model = window.messages
    return [model.message_at(row).body for row in range(model.rowCount())]  # type: ignore[union-attr]


def test_group_banner_names_the_member_and_accepting_unblocks(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess, people: dict[str, Person]
) -> None:
    alice, carol = people["alice"], people["carol"]
    alice.client.start_direct("bob").result(20)
    group = alice.client.create_group("Trip", ["bob", "carol"]).result(20)
    alice.client.send_text(group.conversation_id, "who brings the map?").result(20)
    wait_for(lambda: _bodies(carol, "Trip") == ["who brings the map?"], what="carol reads")
    alice.client.set_verified("bob", True).result(20)

    bob = people["bob"] = people["bob"].reinstall(tmp_path, relay)
    bob_chat = bob.client.start_direct("alice").result(20)
    bob.client.send_text(bob_chat.conversation_id, "new laptop").result(20)
    wait_for(lambda: _conversation(alice, "bob").unaccepted == ("bob",), what="bob's new key")

    window = MainWindow(ClientBridge(alice.client))
    qtbot.addWidget(window)
    window.show()

    # The direct chat: blocked, with its own banner.
    window.open_conversation(_conversation(alice, "bob").conversation_id)
    qtbot.waitUntil(lambda: window.chat_title.text() == "bob", timeout=15_000)
    assert window.banner.isVisible()
    assert window.banner.primary.text() == "Review safety number"
    assert not window.banner.dismiss.isVisible()

    # The group: the banner names Bob, the composer shows the block sentence.
    window.open_conversation(group.conversation_id)
    qtbot.waitUntil(lambda: window.chat_title.text() == "Trip", timeout=15_000)
    banner = window.banner.text.text()
    assert window.banner.isVisible()
    assert "bob's safety number has changed since you verified it" in banner
    assert "Nothing is sent to this group" in banner
    assert window.banner.primary.text() == "Review bob's safety number"
    assert not window.banner.dismiss.isVisible()
    sentence = window.composer.placeholderText()
    assert sentence.startswith("bob's safety number has changed")
    assert "until you accept the new safety number" in sentence
    assert window.composer.isReadOnly()
    assert not window.send_button.isEnabled()
    assert not window.attach_button.isEnabled()
    assert window.attach_button.toolTip() == sentence
    qtbot.keyClicks(window.composer, "is that really you?")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    assert window.composer.toPlainText() == ""
    # A send that reaches the services anyway is refused, as a sentence.
    window.bridge.send_text(group.conversation_id, "is that really you?")
    qtbot.waitUntil(
        lambda: "Nothing is sent to this group" in getattr(window, "last_error", ""),
        timeout=15_000,
    )
    assert "is that really you?" not in _window_bodies(window)

    # Accept from the banner: its safety-number dialog, "Accept new safety number".
    with qtbot.waitSignal(window.bridge.safety_number_ready, timeout=15_000):
        qtbot.mouseClick(window.banner.primary, Qt.MouseButton.LeftButton)
    dialog = window.safety_dialog
    assert isinstance(dialog, SafetyNumberDialog)
    assert dialog.view.peer == "bob" and dialog.view.unaccepted
    assert dialog.accept_button.isVisible() and dialog.changed_label.isVisible()
    qtbot.mouseClick(dialog.accept_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.banner.isVisible(), timeout=15_000)
    assert not window.composer.isReadOnly()
    assert window.composer.placeholderText() == "Message"
    assert window.send_button.isEnabled()
    assert window.attach_button.toolTip() == "Attach a file"
    assert _conversation(alice, "Trip").unaccepted == ()

    qtbot.keyClicks(window.composer, "welcome back, bob")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "welcome back, bob" in _window_bodies(window), timeout=15_000)
    for member in (bob, carol):
        wait_for(
            lambda member=member: "welcome back, bob" in _bodies(member, "Trip"),
            what=f"{member.name} reads the group after acceptance",
        )
    window.close()
