"""Settings → Backups with the split vault, used as a person would: the three
vaults' status, and moving a password from the single vault at the owner's word."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QInputDialog
from pytestqt.qtbot import QtBot

from app.backup import service
from app.config import SERVER_CONFIG_NAME
from app.protocol import vault_split as split_vault
from app.protocol.vault import NOT_FOUND, OK
from app.services.account import Profile, create_account
from app.store import Store
from app.ui.application import Launcher
from app.ui.backup_wizards import BackupsTab, SetupWizard
from app.ui.dialogs import UnlockDialog
from tests.backup.conftest import populate
from tests.backup.test_split_vault_backups import PASSWORD, Stack, split_stack
from tests.services.helpers import FAST_KDF
from tests.store.conftest import protector
from tests.support.components import RelayProcess, VaultProcess


@pytest.fixture
def stack(
    tmp_path: Path,
    vault_factory: Callable[..., VaultProcess],
    relay_factory: Callable[..., RelayProcess],
) -> Stack:
    return split_stack(tmp_path, vault_factory, relay_factory)


def _type_into_the_password_prompt(text: str) -> None:
    """What the person does when the prompt opens: types and presses OK."""

    def answer() -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QInputDialog):
            QTimer.singleShot(50, answer)
            return
        dialog.setTextValue(text)
        dialog.accept()

    QTimer.singleShot(50, answer)


def test_the_tab_shows_the_three_vaults_and_moves_a_password_over(
    qtbot: QtBot,
    stack: Stack,
    tmp_path: Path,
) -> None:
    before, after, domains = stack
    profile = tmp_path / "alice"
    store = Store.create(profile, protector())
    try:
        populate(store, profile, messages=5)
        service.set_up_with_password(
            store, service.VaultAccess(before, profile), PASSWORD, tmp_path / "cloud"
        )
        tab = BackupsTab(store, profile, service.VaultAccess(after, profile))
        qtbot.addWidget(tab)
        tab.show()
        assert tab.move_button.isVisible()
        qtbot.waitUntil(lambda: tab.domains.text().count("answering") == 3, timeout=20_000)
        _type_into_the_password_prompt(PASSWORD)
        qtbot.mouseClick(tab.move_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(
            lambda: "now split between three vaults" in tab.message.text(), timeout=30_000
        )
        assert not tab.move_button.isVisible()
        assert store.settings.get(service.VAULT_SETTING) == "split"
        domains[2].kill()
        tab.refresh()
        qtbot.waitUntil(lambda: "not answering" in tab.domains.text(), timeout=20_000)
        assert tab.domains.text().count(": answering") == 2
        assert "Two answer, which is enough: restores keep working." in tab.domains.text()
    finally:
        store.close()


def test_the_setup_wizard_says_what_the_split_means(
    qtbot: QtBot,
    stack: Stack,
    tmp_path: Path,
) -> None:
    _before, after, _domains = stack
    profile = tmp_path / "bob"
    store = Store.create(profile, protector())
    try:
        wizard = SetupWizard(store, profile, service.VaultAccess(after, profile))
        qtbot.addWidget(wizard)
        wizard.show()
        note = wizard.method_page.password_note.text()
        assert "three independent vaults" in note
        assert "no single one can read it or test your password" in note
        assert "After 10 wrong attempts" in note
        # Closed, and its events handled, before the test lets go of it: a wizard
        # freed by the garbage collector while still shown takes the process down.
        wizard.close()
        qtbot.wait(50)
    finally:
        store.close()


def test_at_unlock_a_domain_that_missed_the_registration_gets_its_share_back(
    qtbot: QtBot, stack: Stack, tmp_path: Path
) -> None:
    """The whole journey in the real application: backups set up while vault 3
    was down; at the next unlock the app re-shares to it, without the password,
    and says so."""
    _before, after, domains = stack
    path = tmp_path / "profiles" / "dana"
    path.mkdir(parents=True)
    after.save(path / SERVER_CONFIG_NAME)
    profile = Profile.load(path)
    messenger = create_account(profile, "dana", "laptop", "dana's passphrase", kdf=FAST_KDF)
    access = service.VaultAccess(after, path)
    domains[2].kill()
    try:
        populate(messenger.store, path, messages=5)
        service.set_up_with_password(messenger.store, access, PASSWORD, tmp_path / "cloud")
        state = messenger.store.backup_state.get()
    finally:
        messenger.store.close()
    assert state.vault_record_id and state.backup_key
    record_id = bytes.fromhex(state.vault_record_id)
    domains[2].start()
    held = access._split_call(lambda keys: split_vault.check(record_id, state.backup_key, keys))
    assert held == {1: OK, 2: OK, 3: NOT_FOUND}

    launcher = Launcher(path)
    launcher.start()
    unlock = launcher.dialog
    assert isinstance(unlock, UnlockDialog)
    qtbot.addWidget(unlock)
    qtbot.keyClicks(unlock.passphrase_edit, "dana's passphrase")
    with qtbot.waitSignal(launcher.ready, timeout=30_000):
        qtbot.mouseClick(unlock.unlock_button, Qt.MouseButton.LeftButton)
    window = launcher.window
    assert window is not None
    qtbot.addWidget(window)
    try:
        qtbot.waitUntil(
            lambda: "Vault 3 had lost its part" in window.statusBar().currentMessage(),
            timeout=30_000,
        )
    finally:
        launcher.shutdown()
    held = access._split_call(lambda keys: split_vault.check(record_id, state.backup_key, keys))
    assert held == {1: OK, 2: OK, 3: OK}
    # Vault 3's new share is a real one: it recovers together with either other.
    for down in (1, 2):
        domains[down - 1].kill()
        assert access.retrieve(record_id, PASSWORD) == state.backup_key
        domains[down - 1].start()
