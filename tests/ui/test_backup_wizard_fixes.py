"""Issue #24, backups in the desktop app (offscreen, real store, real backups):
the done pages say "Done — N MiB in M s" and offer only Finish, sizes use binary
units, "Set up again…" starts from the earlier folder, a folder that already
holds backups says what becomes of them, the strength meter names its level,
the restore asks for the local passphrase twice, and Return in the folder box
lists that folder instead of moving on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWizard
from pytestqt.qtbot import QtBot

from app.backup import engine, service
from app.backup.keys import format_key
from app.store import Store
from app.ui.backup_wizards import (
    BackupsTab,
    RestoreWizard,
    SetupWizard,
    describe_done,
    describe_progress,
    existing_backups_note,
)
from tests.backup.conftest import populate
from tests.store.conftest import protector

DONE = re.compile(r"^Done — \d[\d,.]* (bytes|KiB|MiB|GiB) in \d+(\.\d)? s\.$")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    profile = tmp_path / "profiles" / "alice"
    opened = Store.create(profile, protector())
    populate(opened, profile, messages=10, attachment_bytes=50_000)
    yield opened, profile
    opened.close()


def _next(qtbot: QtBot, wizard: QWizard) -> None:
    button = wizard.button(QWizard.WizardButton.NextButton)
    assert button.isEnabled(), wizard.currentPage().title()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _only_finish(wizard: QWizard) -> None:
    for which in (QWizard.WizardButton.BackButton, QWizard.WizardButton.CancelButton):
        button = wizard.button(which)
        assert not (button.isVisible() and button.isEnabled()), button.text()
    finish = wizard.button(QWizard.WizardButton.FinishButton)
    assert finish.isVisible() and finish.isEnabled()


def _set_up_with_key(qtbot: QtBot, store: Store, profile: Path, folder: Path) -> SetupWizard:
    wizard = SetupWizard(store, profile, None, home=folder.parent / "empty-home")
    qtbot.addWidget(wizard)
    wizard.show()
    _next(qtbot, wizard)  # method: key
    _next(qtbot, wizard)  # the key shown
    qtbot.keyClicks(wizard.confirm_page.edit, format_key(wizard.choices.key))
    _next(qtbot, wizard)
    wizard.folder_page.folder.set_path(folder)
    _next(qtbot, wizard)
    qtbot.waitUntil(lambda: wizard.run_page.done, timeout=30_000)
    return wizard


def test_done_pages_say_done_and_offer_only_finish(
    qtbot: QtBot, tmp_path: Path, store: tuple[Store, Path]
) -> None:
    opened, profile = store
    folder = tmp_path / "Dropbox"
    wizard = _set_up_with_key(qtbot, opened, profile, folder)
    panel = wizard.run_page.panel
    assert DONE.match(panel.detail.text()), panel.detail.text()
    assert "left" not in panel.detail.text()
    assert not panel.cancel_button.isVisible()
    assert panel.bar.value() == panel.bar.maximum()
    assert re.search(r"\d KiB", wizard.run_page.status.text()), wizard.run_page.status.text()
    _only_finish(wizard)
    key = wizard.choices.key
    wizard.close()

    restore = RestoreWizard(tmp_path / "profiles" / "restored", None, protector)
    qtbot.addWidget(restore)
    restore.show()
    restore.choose_page.folder.set_path(folder)
    assert "KiB" in restore.choose_page.backups.topLevelItem(0).text(1)  # type: ignore[union-attr]
    _next(qtbot, restore)
    qtbot.keyClicks(restore.secret_page.key_edit, format_key(key))
    _next(qtbot, restore)
    qtbot.waitUntil(lambda: restore.run_page.done, timeout=30_000)
    panel = restore.run_page.panel
    assert DONE.match(panel.detail.text()), panel.detail.text()
    assert not panel.cancel_button.isVisible()
    _only_finish(restore)


def test_progress_while_running_names_binary_units() -> None:
    line = describe_progress(3 * 2**20, 8 * 2**20, 2.0)
    assert line == "3.0 MiB of 8.0 MiB · 1.5 MiB/s · about 3 s left"
    # At the end there is no time left to announce.
    assert "left" not in describe_progress(8 * 2**20, 8 * 2**20, 4.0)
    assert describe_done(5 * 2**20, 0.34) == "Done — 5.0 MiB in 0.3 s."
    assert describe_done(2**30, 125) == "Done — 1.0 GiB in 2 min 5 s."


def test_set_up_again_starts_from_the_earlier_folder_and_says_what_happens_to_its_backups(
    qtbot: QtBot, tmp_path: Path, store: tuple[Store, Path]
) -> None:
    opened, profile = store
    folder = tmp_path / "Nextcloud" / "Cipherline"
    first = _set_up_with_key(qtbot, opened, profile, folder)
    first.close()
    with opened.transaction():
        opened.backup_state.update(schedule="daily", keep=3)

    tab = BackupsTab(opened, profile, None)
    qtbot.addWidget(tab)
    assert tab.setup_button.text() == "Set up again…"
    assert re.search(r"\(\d[\d.,]* KiB\)", tab.status.text()), tab.status.text()
    tab.open_setup()
    again = tab.wizard
    assert again is not None
    qtbot.addWidget(again)
    page = again.folder_page
    assert page.folder.path_text() == str(folder)
    assert page.schedule.currentText() == "Daily"
    assert page.keep.value() == 3
    _next(qtbot, again)  # a new key: the one the old backup was made with is not it
    _next(qtbot, again)
    qtbot.keyClicks(again.confirm_page.edit, format_key(again.choices.key))
    _next(qtbot, again)
    assert again.currentPage() is page
    assert page.existing.text() == (
        "This folder already holds a backup made with a 64-digit key: it still opens "
        "only with that earlier key, and is deleted as new backups take its place "
        "(Cipherline keeps the newest 3)."
    )
    page.folder.set_path(tmp_path / "elsewhere")
    assert page.existing.text() == ""
    again.close()


def test_the_existing_backups_sentence_names_each_method(tmp_path: Path) -> None:
    def info(method: str) -> engine.BackupInfo:
        return engine.BackupInfo(tmp_path / "x", 1, 1, method, False, b"")

    assert existing_backups_note([], 2) == ""
    passwords = existing_backups_note([info("password"), info("password")], 2)
    assert passwords.startswith("This folder already holds 2 backups made with a password:")
    assert "only with the password they were made with" in passwords
    mixed = existing_backups_note([info("password"), info("64-digit key")], 5)
    assert "only with the key or password they were made with" in mixed
    assert mixed.endswith("(Cipherline keeps the newest 5).")


def test_the_strength_meter_names_its_level(qtbot: QtBot, store: tuple[Store, Path]) -> None:
    opened, profile = store
    wizard = SetupWizard(opened, profile, None)
    qtbot.addWidget(wizard)
    meter = wizard.password_page.meter
    assert meter.text() == "Too short"
    # A gauge, not a box with text in it.
    assert not meter.bar.isTextVisible()
    assert meter.bar.maximumHeight() <= 12
    weak_style = meter.label.styleSheet()
    wizard.password_page.password.setText("gravel orchid mitten quantum zebra")
    assert meter.text() == "Strong enough"
    assert meter.value() == 4
    assert meter.label.styleSheet() != weak_style


def test_the_restore_asks_for_the_local_passphrase_twice(
    qtbot: QtBot, tmp_path: Path, store: tuple[Store, Path]
) -> None:
    opened, profile = store
    folder = tmp_path / "cloud"
    key = service.set_up_with_key(opened, folder)
    service.back_up_now(opened, profile)
    target = tmp_path / "profiles" / "restored"
    # No keyring on this computer: the restored profile needs a passphrase.
    restore = RestoreWizard(target, None, None, passphrase_protector=protector)
    qtbot.addWidget(restore)
    restore.show()
    restore.choose_page.folder.set_path(folder)
    _next(qtbot, restore)
    page = restore.secret_page
    next_button = restore.button(QWizard.WizardButton.NextButton)
    assert page.passphrase_repeat.isVisible()
    qtbot.keyClicks(page.key_edit, format_key(key))
    qtbot.keyClicks(page.passphrase_edit, "a local passphrase")
    assert not next_button.isEnabled()
    qtbot.keyClicks(page.passphrase_repeat, "a local passphrasf")
    assert page.passphrase_problem.text() == "The two passphrases differ."
    assert not next_button.isEnabled()
    page.passphrase_repeat.setText("a local passphrase")
    assert page.passphrase_problem.text() == ""
    assert next_button.isEnabled()
    _next(qtbot, restore)
    qtbot.waitUntil(lambda: restore.run_page.done, timeout=30_000)
    Store.open(target, protector("a local passphrase")).close()


def test_return_in_the_folder_box_lists_that_folder_and_stays(
    qtbot: QtBot, tmp_path: Path, store: tuple[Store, Path]
) -> None:
    opened, profile = store
    folder = tmp_path / "typed by hand"
    service.set_up_with_key(opened, folder)
    service.back_up_now(opened, profile)
    restore = RestoreWizard(tmp_path / "profiles" / "new", None, protector, home=tmp_path)
    qtbot.addWidget(restore)
    restore.show()
    qtbot.waitExposed(restore)
    page = restore.choose_page
    combo = page.folder.combo
    combo.setFocus()
    combo.clearEditText()
    qtbot.keyClicks(combo, str(folder))
    qtbot.keyClick(combo, Qt.Key.Key_Return)
    assert restore.currentPage() is page
    assert page.backups.topLevelItemCount() == 1
    # The typed path is not added to the list of cloud folders either.
    assert all(combo.itemText(i) != str(folder) for i in range(combo.count()))
