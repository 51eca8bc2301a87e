"""Settings → Backups → "Change password…" (issue #24): one non-blocking dialog with
the current password, the new one with the wizard's strength meter, and a repeat
field; against a real relay and a vault node on SoftHSM2."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from app.backup import service
from app.protocol.vault import WrongPassword
from app.ui.backup_password import DIFFERENT, SAME_AS_OLD, ChangePasswordDialog
from app.ui.backup_wizards import BackupsTab, vault_access_for
from tests.services.helpers import Person
from tests.ui.test_accessibility import unnamed_controls
from tests.ui.test_backup_wizards import STRONG_PASSWORD, alice, vault_relay  # noqa: F401

NEW_PASSWORD = "lantern walrus sepia fjord kestrel"


def test_change_password_dialog_checks_strength_and_repeat_then_changes_it(
    qtbot: QtBot,
    tmp_path: Path,
    alice: Person,  # noqa: F811
) -> None:
    profile = alice.profile.path
    access = vault_access_for(profile)
    assert access is not None
    store = alice.client.messenger.store
    alice.client.core(
        lambda: service.set_up_with_password(store, access, STRONG_PASSWORD, tmp_path / "cloud")
    ).result(60)
    tab = BackupsTab(store, profile, access)
    qtbot.addWidget(tab)
    tab.show()
    assert tab.password_button.isVisible()
    qtbot.mouseClick(tab.password_button, Qt.MouseButton.LeftButton)
    # open(), not exec(): the click returns with the dialog up.
    dialog = tab.password_dialog
    assert isinstance(dialog, ChangePasswordDialog) and dialog.isVisible()
    assert QApplication.activeModalWidget() in (None, dialog)
    assert unnamed_controls(dialog) == []
    change = dialog.change_button
    assert not change.isEnabled() and dialog.error.text() == ""

    qtbot.keyClicks(dialog.current, "not my password")
    qtbot.keyClicks(dialog.new, "short")
    assert dialog.meter.text() == "Too short"
    assert "at least 12 characters" in dialog.error.text()
    dialog.new.setText("correct horse battery")
    assert dialog.meter.text() == "Almost strong enough"
    assert dialog.error.text().startswith("This password could be guessed in about ")
    assert not change.isEnabled()
    dialog.new.setText(NEW_PASSWORD)
    assert dialog.meter.text() == "Strong enough" and dialog.error.text() == ""
    qtbot.keyClicks(dialog.repeat, NEW_PASSWORD[:-1])
    assert dialog.error.text() == DIFFERENT and not change.isEnabled()
    qtbot.keyClicks(dialog.repeat, NEW_PASSWORD[-1])
    assert dialog.error.text() == "" and change.isEnabled()

    # A wrong current password: the vault counts it, the dialog says so and stays.
    qtbot.mouseClick(change, Qt.MouseButton.LeftButton)
    assert not change.isEnabled()
    qtbot.waitUntil(lambda: "attempts left" in dialog.error.text(), timeout=30_000)
    assert "9 attempts left" in dialog.error.text()
    assert dialog.isVisible() and change.isEnabled()
    assert dialog.new.text() == NEW_PASSWORD, "nothing typed is lost"

    dialog.current.setText(NEW_PASSWORD)
    assert dialog.error.text() == SAME_AS_OLD and not change.isEnabled()
    dialog.current.setText(STRONG_PASSWORD)
    # Return submits once; a second Return while the vault works neither repeats
    # the change nor closes the dialog under it.
    qtbot.keyClick(dialog.repeat, Qt.Key.Key_Return)
    qtbot.keyClick(dialog.repeat, Qt.Key.Key_Return)
    assert dialog.isVisible() and dialog.busy
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=30_000)
    assert tab.message.text() == "Password changed. Existing backups use it too."
    # The vault now hands the same key out for the new password only.
    record = store.backup_state.get().vault_record_id
    assert record
    assert len(access.retrieve(bytes.fromhex(record), NEW_PASSWORD)) == 32
    with pytest.raises(WrongPassword):
        access.retrieve(bytes.fromhex(record), STRONG_PASSWORD)
