"""Issue #24, chrome: every control a person can reach in the main window, the
Settings dialog, the safety-number dialog and both backup wizards has a name a
screen reader can say, and glyph-only buttons also explain themselves in a tooltip.

The walk asks Qt's accessibility layer for each control's name, so a label that
Qt links to its field (a form row) counts, and a glyph such as "✎" does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtGui import QAccessible
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractScrollArea,
    QAbstractSlider,
    QAbstractSpinBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QTabBar,
    QTextEdit,
    QToolButton,
    QWidget,
    QWizard,
)
from pytestqt.qtbot import QtBot

from app.backup import service
from app.store import Store
from app.ui.backup_wizards import RestoreWizard, SetupWizard
from app.ui.bridge import ClientBridge
from app.ui.main_window import MainWindow
from app.ui.safety import SafetyNumberDialog
from tests.backup.conftest import populate
from tests.services.helpers import Person, wait_for
from tests.store.conftest import protector
from tests.support.components import RelayProcess

INTERACTIVE = (
    QAbstractButton,
    QLineEdit,
    QComboBox,
    QAbstractItemView,
    QTextEdit,
    QPlainTextEdit,
    QAbstractSpinBox,
    QAbstractSlider,
)
# Parts of a composite control (a combo's line edit, a list's scrollbars, a line
# edit's clear button): the control they belong to carries the name.
COMPOSITES = (QComboBox, QAbstractSpinBox, QAbstractScrollArea, QLineEdit, QTabBar)


def _exposed_name(widget: QWidget) -> str:
    interface = QAccessible.queryAccessibleInterface(widget)
    return interface.text(QAccessible.Text.Name) if interface is not None else ""


def _inside_composite(widget: QWidget, top: QWidget) -> bool:
    parent = widget.parentWidget()
    while parent is not None and parent is not top:
        if isinstance(parent, COMPOSITES):
            return True
        parent = parent.parentWidget()
    return False


def _says_something(text: str) -> bool:
    return any(character.isalpha() for character in text)


def unnamed_controls(top: QWidget) -> list[str]:
    """Every control visible within `top` that a screen reader could not name."""
    problems = []
    for widget in top.findChildren(QWidget):
        if not isinstance(widget, INTERACTIVE) or not widget.isVisibleTo(top):
            continue
        if _inside_composite(widget, top):
            continue
        what = f"{type(widget).__name__} {widget.objectName() or ''}".strip()
        if isinstance(widget, QComboBox) and not widget.accessibleName():
            # Qt offers a combo's current value as its name: "Off" names nothing.
            problems.append(f"{what} showing {widget.currentText()!r} has no accessible name")
            continue
        name = _exposed_name(widget)
        if not _says_something(name):
            problems.append(f"{what} has no accessible name (Qt exposes {name!r})")
            continue
        if (
            isinstance(widget, QAbstractButton)
            and not _says_something(widget.text())
            and not widget.toolTip()
        ):
            problems.append(f"{what} {widget.text()!r} is glyph-only and has no tooltip")
    return problems


def test_the_walk_finds_unnamed_controls(qtbot: QtBot) -> None:
    """The check itself can fail: glyph buttons, bare fields and combos are caught."""
    top = QWidget()
    qtbot.addWidget(top)
    row = QHBoxLayout(top)
    glyph = QToolButton()
    glyph.setText("✎")
    bare = QLineEdit()
    combo = QComboBox()
    combo.addItem("Off")
    named_glyph = QToolButton()
    named_glyph.setText("⚙")
    named_glyph.setAccessibleName("Settings")
    form = QFormLayout()
    labelled = QLineEdit()
    form.addRow("Password", labelled)
    for widget in (glyph, bare, combo, named_glyph):
        row.addWidget(widget)
    row.addLayout(form)
    problems = unnamed_controls(top)
    assert len(problems) == 4, problems
    assert any("'✎'" in problem for problem in problems)
    assert any("QComboBox" in problem for problem in problems)
    assert any("'⚙' is glyph-only and has no tooltip" in problem for problem in problems)
    assert not any("Password" in problem for problem in problems)


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    cast = {name: Person(tmp_path, name, relay) for name in ("alice", "bob")}
    yield cast
    for person in cast.values():
        person.stop()


def test_main_window_settings_and_safety_number_name_every_control(
    qtbot: QtBot, people: dict[str, Person]
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hello bob").result(20)
    wait_for(lambda: any(c.title == "alice" for c in bob.client.conversations().result(20)))
    window = MainWindow(ClientBridge(alice.client))
    qtbot.addWidget(window)
    window.show()
    window.open_conversation(chat.conversation_id)
    qtbot.waitUntil(lambda: window.chat_title.text() == "bob", timeout=15_000)
    window.show_error("something to dismiss")  # the error bar's close button too
    # The bars over the composer and the typing line (issue #24) show only at times.
    for bar in (window.edit_bar, window.delete_bar, window.reply_bar):
        bar.show()
    window.typing_line.typing("bob", True)
    assert unnamed_controls(window) == []
    # The glyph buttons say what they do to everyone, not only to screen readers.
    for button, name in (
        (window.new_chat_button, "New chat"),
        (window.new_group_button, "New group"),
        (window.settings_button, "Settings"),
        (window.attach_button, "Attach a file"),
    ):
        assert button.accessibleName() == name
        assert button.toolTip() == name

    window.show_settings()
    settings = window.settings_dialog
    qtbot.waitExposed(settings)
    for index in range(settings.tabs.count()):
        settings.tabs.setCurrentIndex(index)
        assert unnamed_controls(settings) == [], settings.tabs.tabText(index)
    settings.close()

    with qtbot.waitSignal(window.bridge.safety_number_ready, timeout=15_000):
        window.show_details()
    dialog = window.safety_dialog
    assert isinstance(dialog, SafetyNumberDialog)
    assert unnamed_controls(dialog) == []
    window.close()


def test_contact_pickers_and_the_request_bar_name_every_control(
    qtbot: QtBot, people: dict[str, Person]
) -> None:
    """Issue #24's dialogs: the new-chat picker, the new-group member picker, the
    group members dialog, the request bar and the chat menu."""
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hello bob").result(20)
    wait_for(lambda: any(c.title == "alice" for c in bob.client.conversations().result(20)))
    window = MainWindow(ClientBridge(bob.client))
    qtbot.addWidget(window)
    window.show()
    request = next(c for c in bob.client.conversations().result(20) if c.title == "alice")
    window.open_conversation(request.conversation_id)
    qtbot.waitUntil(window.request_bar.isVisible, timeout=15_000)
    assert unnamed_controls(window) == []
    assert window.chat_menu_button.toolTip() == "Chat menu"

    window.ask_new_chat()
    picker = window.new_chat_dialog
    qtbot.waitExposed(picker)
    picker.search_edit.setText("someone")  # the "new chat with" row and the hint
    assert unnamed_controls(picker) == []
    picker.reject()

    window.ask_new_group()
    group_dialog = window.new_group_dialog
    qtbot.waitExposed(group_dialog)
    assert unnamed_controls(group_dialog) == []
    group_dialog.reject()

    group = bob.client.create_group("Walks", ["alice"]).result(20)
    window.open_conversation(group.conversation_id)
    qtbot.waitUntil(lambda: window.chat_title.text() == "Walks", timeout=15_000)
    window.show_details()
    members = window.members_dialog
    qtbot.waitExposed(members)
    assert unnamed_controls(members) == []
    members.close()
    window.close()


def test_both_backup_wizards_name_every_control(qtbot: QtBot, tmp_path: Path) -> None:
    profile = tmp_path / "profiles" / "alice"
    store = Store.create(profile, protector())
    populate(store, profile, messages=3, attachment_bytes=100)
    service.set_up_with_key(store, tmp_path / "cloud")
    service.back_up_now(store, profile)
    setup = SetupWizard(store, profile, None, home=tmp_path / "home")
    # No keyring: the restore asks for a local passphrase (and its repeat) as well.
    restore = RestoreWizard(tmp_path / "profiles" / "new", None, None, home=tmp_path / "home")
    for wizard in (setup, restore):
        qtbot.addWidget(wizard)
        wizard.show()
        qtbot.waitExposed(wizard)
        assert unnamed_controls(wizard) == [], wizard.windowTitle()
        for page_id in wizard.pageIds():
            page = wizard.page(page_id)
            assert unnamed_controls(page) == [], f"{wizard.windowTitle()}: {page.title()}"
        assert wizard.button(QWizard.WizardButton.CancelButton).text()
        wizard.close()
    store.close()


def test_the_change_password_dialog_names_every_control(qtbot: QtBot) -> None:
    from app.ui.backup_password import ChangePasswordDialog

    dialog = ChangePasswordDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    dialog.repeat.setText("something else")  # the error line shows too
    assert dialog.error.text()
    assert unnamed_controls(dialog) == []
    assert dialog.meter.bar.accessibleName() == "Password strength"
    names = {field.accessibleName() for field in (dialog.current, dialog.new, dialog.repeat)}
    assert len(names) == 3, "each password field says which one it is"
