"""Both backup wizards, end to end, against a real relay and a vault node on SoftHSM2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWizard
from pytestqt.qtbot import QtBot

from app.backup import engine
from app.backup.keys import format_key
from app.config import SERVER_CONFIG_NAME, ServerConfig, VaultNodeKey
from app.services.account import Profile
from app.ui.application import Launcher
from app.ui.backup_wizards import RestoreWizard, SetupWizard, vault_access_for
from app.ui.dialogs import OnboardingDialog
from tests.backup.conftest import populate
from tests.services.helpers import FAST_KDF, Person
from tests.store.conftest import protector
from tests.support.components import RelayProcess, VaultProcess

# Five random words: well over the password policy's bar (app/backup/password_policy.py).
STRONG_PASSWORD = "gravel orchid mitten quantum zebra"


@pytest.fixture
def vault_relay(
    relay_factory: object, vault_node: VaultProcess
) -> tuple[RelayProcess, VaultProcess]:
    relay = relay_factory(extra_args=["--vault", vault_node.url])  # type: ignore[operator]
    return relay, vault_node


def _config(relay: RelayProcess, vault_node: VaultProcess) -> ServerConfig:
    return ServerConfig(
        relay.url, relay.ca_file.read_text(), (VaultNodeKey(**vault_node.public_keys()),)
    )


@pytest.fixture
def alice(tmp_path: Path, vault_relay: tuple[RelayProcess, VaultProcess]) -> Iterator[Person]:
    relay, vault_node = vault_relay
    person = Person(tmp_path, "alice", relay)
    _config(relay, vault_node).save(person.profile.path / SERVER_CONFIG_NAME)
    store = person.client.messenger.store
    person.client.core(lambda: populate(store, person.profile.path, messages=30)).result()
    yield person
    person.stop()


def _next(qtbot: QtBot, wizard: QWizard) -> None:
    button = wizard.button(QWizard.WizardButton.NextButton)
    assert button.isEnabled(), wizard.currentPage().title()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _finish(qtbot: QtBot, wizard: QWizard) -> None:
    qtbot.mouseClick(wizard.button(QWizard.WizardButton.FinishButton), Qt.MouseButton.LeftButton)


def test_key_wizard_then_restore_from_the_first_run_screen(
    qtbot: QtBot, tmp_path: Path, alice: Person, vault_relay: tuple[RelayProcess, VaultProcess]
) -> None:
    home = tmp_path / "home"
    (home / "Dropbox").mkdir(parents=True)
    profile = alice.profile.path
    wizard = SetupWizard(
        alice.client.messenger.store, profile, vault_access_for(profile), home=home
    )
    qtbot.addWidget(wizard)
    wizard.show()
    from PySide6.QtWidgets import QLabel

    notes = " ".join(label.text() for label in wizard.method_page.findChildren(QLabel))
    assert "After 10 wrong attempts the vault erases the key for good" in notes
    _next(qtbot, wizard)
    key = wizard.choices.key
    assert len(key) == 32
    shown = wizard.show_key_page.key_label.text()
    assert shown.replace("\n", " ") == format_key(key)
    _next(qtbot, wizard)
    qtbot.keyClicks(wizard.confirm_page.edit, format_key(bytes(32)))
    assert not wizard.button(QWizard.WizardButton.NextButton).isEnabled()
    wizard.confirm_page.edit.clear()
    qtbot.keyClicks(wizard.confirm_page.edit, format_key(key).upper().replace(" ", "-"))
    _next(qtbot, wizard)
    assert wizard.folder_page.folder.path_text() == str(home / "Dropbox")
    _next(qtbot, wizard)
    qtbot.waitUntil(lambda: wizard.run_page.done, timeout=30_000)
    assert "Backed up" in wizard.run_page.status.text()
    _finish(qtbot, wizard)
    assert len(engine.list_backups(home / "Dropbox")) == 1

    # A new machine: an empty profile with only the server config.
    relay, vault_node = vault_relay
    new_profile = tmp_path / "profiles" / "alice-new"
    new_profile.mkdir(parents=True)
    _config(relay, vault_node).save(new_profile / SERVER_CONFIG_NAME)
    launcher = Launcher(new_profile, kdf=FAST_KDF)
    launcher.start()
    assert isinstance(launcher.dialog, OnboardingDialog)
    qtbot.addWidget(launcher.dialog)
    assert launcher.dialog.restore_button.isVisibleTo(launcher.dialog)
    qtbot.mouseClick(launcher.dialog.restore_button, Qt.MouseButton.LeftButton)
    restore = launcher.restore_wizard
    qtbot.addWidget(restore)
    restore.choose_page.folder.set_path(home / "Dropbox")
    assert restore.choose_page.backups.topLevelItemCount() == 1
    assert restore.choose_page.backups.topLevelItem(0).text(2) == "64-digit key"  # type: ignore[union-attr]
    _next(qtbot, restore)
    page = restore.secret_page
    if restore.protector_factory is None:
        qtbot.keyClicks(page.passphrase_edit, "new machine passphrase")
        qtbot.keyClicks(page.passphrase_repeat, "new machine passphrase")
    qtbot.keyClicks(page.key_edit, "1234 not hex")
    _next(qtbot, restore)
    assert "That key is not valid" in page.error.text()
    page.key_edit.setText(format_key(bytes(32)))
    _next(qtbot, restore)
    assert "does not open this backup" in page.error.text()
    assert not (new_profile / "store.key").exists()
    page.key_edit.setText(format_key(key))
    with qtbot.waitSignal(launcher.ready, timeout=30_000):
        _next(qtbot, restore)
        qtbot.waitUntil(lambda: restore.run_page.done, timeout=30_000)
        assert "Restored 30 messages" in restore.run_page.status.text()
        _finish(qtbot, restore)
    window = launcher.window
    assert window is not None
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.conversations.rowCount() == 1, timeout=10_000)
    launcher.shutdown()


def test_password_wizard_and_restore_with_attempts_left(
    qtbot: QtBot, tmp_path: Path, alice: Person, vault_relay: tuple[RelayProcess, VaultProcess]
) -> None:
    home = tmp_path / "home"
    profile = alice.profile.path
    access = vault_access_for(profile)
    wizard = SetupWizard(alice.client.messenger.store, profile, access, home=home)
    qtbot.addWidget(wizard)
    wizard.show()
    wizard.method_page.password_radio.setChecked(True)
    _next(qtbot, wizard)
    page = wizard.password_page
    next_button = wizard.button(QWizard.WizardButton.NextButton)
    qtbot.keyClicks(page.password, "short")
    assert page.meter.text() == "Too short"
    assert "at least 12 characters" in page.error.text()
    assert not next_button.isEnabled()
    # Long and typed twice, but weak against offline guessing: the page says so, live.
    page.password.clear()
    qtbot.keyClicks(page.password, "correct horse battery")
    qtbot.keyClicks(page.confirm, "correct horse battery")
    assert page.error.text().startswith("This password could be guessed in about ")
    assert "by someone holding the vault's data" in page.error.text()
    assert page.meter.value() == 3
    assert page.meter.text() == "Almost strong enough"
    assert not next_button.isEnabled()
    page.password.setText(STRONG_PASSWORD)
    assert page.meter.value() == 4
    assert page.meter.text() == "Strong enough"
    assert page.error.text() == "The two passwords differ."
    assert not next_button.isEnabled()
    page.confirm.clear()
    qtbot.keyClicks(page.confirm, STRONG_PASSWORD)
    assert page.error.text() == ""
    assert next_button.isEnabled()
    _next(qtbot, wizard)
    wizard.folder_page.folder.set_path(tmp_path / "Nextcloud")
    _next(qtbot, wizard)
    qtbot.waitUntil(lambda: wizard.run_page.done, timeout=30_000)
    _finish(qtbot, wizard)

    relay, vault_node = vault_relay
    new_profile = tmp_path / "profiles" / "restored"
    new_profile.mkdir(parents=True)
    _config(relay, vault_node).save(new_profile / SERVER_CONFIG_NAME)
    restore = RestoreWizard(new_profile, vault_access_for(new_profile), protector, home=home)
    qtbot.addWidget(restore)
    restore.show()
    restore.choose_page.folder.set_path(tmp_path / "Nextcloud")
    _next(qtbot, restore)
    secret = restore.secret_page
    assert not secret.key_edit.isVisible() and secret.password_edit.isVisible()
    qtbot.keyClicks(secret.password_edit, "not my password")
    _next(qtbot, restore)
    qtbot.waitUntil(lambda: "attempts left" in secret.error.text(), timeout=20_000)
    assert "9 attempts left" in secret.error.text()
    secret.password_edit.setText(STRONG_PASSWORD)
    _next(qtbot, restore)
    qtbot.waitUntil(lambda: restore.run_page.done, timeout=30_000)
    assert "Restored 30 messages" in restore.run_page.status.text()
    restored = Profile.load(new_profile)
    assert (restored.path / "store.key").exists()


def test_scheduler_backs_up_when_due_and_stops_quietly_once_closed(
    qtbot: QtBot, tmp_path: Path
) -> None:
    from app.backup import service
    from app.store import Store
    from app.ui.backup_wizards import BackupScheduler

    profile = tmp_path / "profiles" / "sched"
    store = Store.create(profile, protector())
    populate(store, profile, messages=5, attachment_bytes=1000)
    service.set_up_with_key(store, tmp_path / "cloud", schedule="daily")
    scheduler = BackupScheduler(store, profile)
    with qtbot.waitSignal(scheduler.finished, timeout=20_000) as blocker:
        scheduler.check()
    assert isinstance(blocker.args[0], engine.BackupInfo)
    assert not service.is_due(store)
    store.close()
    scheduler.check()  # the profile closed under it: no exception, it just stops
    assert scheduler.stopped
    assert not scheduler.timer.isActive()
