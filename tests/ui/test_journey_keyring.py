"""The system keyring for real, and the way back in when its entry is gone.

Every test here runs against a real Secret Service (gnome-keyring-daemon on a
private D-Bus session bus, the `secret_service` fixture) through the same
`keyring` library the app uses; the entry is deleted in that service with
secretstorage, as a keyring reset would. The journeys drive the real application
object inside `exec()` (the `Journey` stepper of test_journey_restore.py), so a
quit on the way ends the run and the test says at which step.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import keyring
import pytest
import secretstorage
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from app.backup import service
from app.backup.keys import format_key
from app.config import SERVER_CONFIG_NAME, ServerConfig, VaultNodeKey, account_name
from app.services.account import Profile, create_account
from app.services.client import Client
from app.store import KeyringProtector, PassphraseProtector, Store
from app.store.keyfile import KEYRING_SERVICE, RECOVERY_FILE_NAME, keyring_problem
from app.ui.application import Launcher, configure_application, launch
from app.ui.backup_wizards import vault_access_for
from app.ui.dialogs import KeyringLostDialog, OnboardingDialog, UnlockDialog
from app.ui.main_window import MainWindow
from tests.services.helpers import FAST_KDF, Person, make_profile, wait_for
from tests.support.components import RelayProcess, VaultProcess
from tests.support.secret_service import SecretService, redetect_keyring
from tests.ui.test_journey_restore import Journey, Wait

HISTORY = ["the first words, kept by the keyring", "and a reply that must survive its loss"]
# Five random words: well over the backup password policy's bar.
STRONG_PASSWORD = "gravel orchid mitten quantum zebra"


@pytest.fixture
def bob(tmp_path: Path, relay: RelayProcess) -> Iterator[Person]:
    person = Person(tmp_path, "bob", relay)
    yield person
    person.stop()


# ---- helpers --------------------------------------------------------------------------


def _bodies(window: MainWindow) -> list[str]:
    model = window.messages
    return [model.message_at(row).body for row in range(model.rowCount())]  # type: ignore[union-attr]


def _keyring_entries(profile: Path, *, delete: bool = False) -> int:
    """How many entries the real Secret Service holds for this profile, read past
    `keyring`; with `delete`, removes them, as a keyring reset would."""
    with closing(secretstorage.dbus_init()) as connection:
        collection = secretstorage.get_default_collection(connection)
        items = list(
            collection.search_items({"service": KEYRING_SERVICE, "username": str(profile)})
        )
        if delete:
            for item in items:
                item.delete()
        return len(items)


def _delete_keyring_entry(profile: Path) -> None:
    assert _keyring_entries(profile, delete=True) == 1, "the profile's key was not in the keyring"
    assert _keyring_entries(profile) == 0
    assert keyring.get_password(KEYRING_SERVICE, str(profile)) is None


def _fingerprint(profile: Path) -> dict[str, str]:
    return {
        str(path.relative_to(profile)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(profile.rglob("*"))
        if path.is_file()
    }


def _drive(qapp: QApplication, launcher: Launcher, script: Iterator[Wait]) -> Journey:
    """Runs `script` inside the application's event loop; returns the finished journey
    (its `done` is False when the application quit before the script ended)."""
    journey = Journey(qapp, script)
    journey.start()
    try:
        qapp.exec()
    finally:
        journey.timer.stop()
        qapp.aboutToQuit.disconnect(launcher.shutdown)
        launcher.shutdown()
        for widget in (launcher.window, launcher.dialog):
            if widget is not None:
                widget.close()
    if journey.error is not None:
        raise journey.error
    return journey


def _opens_straight_to_history(
    qapp: QApplication, profile: Path, history: list[str], kdf: object = None
) -> None:
    """A relaunch that unlocks from the keyring alone: no dialog ever shows."""
    launcher = launch(qapp, profile, kdf=kdf)
    dialogs: list[object] = []

    def opened() -> bool:
        if launcher.dialog is not None:
            dialogs.append(launcher.dialog)
        return launcher.window is not None and launcher.window.isVisible()

    def script() -> Iterator[Wait]:
        yield Wait("the main window, unlocked by the keyring", opened, 30)
        window = launcher.window
        assert window is not None
        yield Wait("the chat in the list", lambda: window.conversations.rowCount() == 1)
        first = window.conversations.conversation_at(0)
        assert first is not None
        window.open_conversation(first.conversation_id)
        yield Wait("the history", lambda: _bodies(window) == history)

    journey = _drive(qapp, launcher, script())
    assert journey.done, f"the application quit at: {journey.step}"
    assert dialogs == [], f"a relaunch with the keyring entry showed {dialogs}"


def _chat(alice: Client, bob: Person) -> None:
    chat = alice.start_direct("bob").result(20)
    alice.send_text(chat.conversation_id, HISTORY[0]).result(20)
    wait_for(lambda: bob.client.conversations().result(), what="bob hears from alice")
    to_alice = bob.client.conversations().result()[0]
    bob.client.send_text(to_alice.conversation_id, HISTORY[1]).result(20)
    wait_for(
        lambda: (
            HISTORY[1]
            in [m.body for m in alice.open_conversation(chat.conversation_id).result()[1]]
        ),
        what="alice hears back",
    )


def _keyring_alice(
    tmp_path: Path, relay: RelayProcess, bob: Person, config: ServerConfig | None = None
) -> tuple[Profile, Client]:
    """alice on a profile protected by the real keyring, with a chat with bob."""
    profile = make_profile(tmp_path, "alice", relay)
    if config is not None:
        config.save(profile.path / SERVER_CONFIG_NAME)
        profile = Profile.load(profile.path)
    messenger = create_account(profile, "alice", "laptop", None)
    assert Store.key_method(profile.path) == "keyring"
    client = Client(messenger, profile.relay(timeout=3), tick_seconds=0.2)
    client.start()
    _chat(client, bob)
    return profile, client


def _recovery_journey(
    qapp: QApplication,
    profile: Path,
    *,
    field: str,
    wrong: str,
    wrong_error: str,
    right: str,
    wrong_seconds: float = 30,
    new_passphrase: str | None = None,
) -> dict[str, object]:
    """Relaunch with the keyring entry gone: the screen says so, refuses `wrong`,
    takes `right` (and `new_passphrase` when no keyring can take the key back) and
    opens the main window with the history."""
    launcher = launch(qapp, profile, kdf=FAST_KDF)
    seen: dict[str, object] = {}

    def script() -> Iterator[Wait]:
        yield Wait(
            "the keyring-lost screen", lambda: isinstance(launcher.dialog, KeyringLostDialog)
        )
        dialog = launcher.dialog
        assert isinstance(dialog, KeyringLostDialog)
        yield Wait("the keyring-lost screen to show", dialog.isVisible)
        seen["title"] = dialog.title.text()
        seen["reason"] = dialog.reason_label.text()
        seen["way_in"] = dialog.way_in.text()
        seen["key_visible"] = dialog.key_edit.isVisible()
        seen["password_visible"] = dialog.password_edit.isVisible()
        seen["passphrase_visible"] = dialog.passphrase_edit.isVisible()
        if new_passphrase is not None:
            QTest.keyClicks(dialog.passphrase_edit, new_passphrase)
            QTest.keyClicks(dialog.passphrase_repeat, new_passphrase)
        edit = getattr(dialog, field)
        QTest.keyClicks(edit, wrong)
        QTest.mouseClick(dialog.unlock_button, Qt.MouseButton.LeftButton)
        yield Wait(
            "the wrong secret refused",
            lambda: wrong_error in dialog.error_label.text(),
            wrong_seconds,
        )
        seen["wrong_error"] = dialog.error_label.text()
        seen["files_after_wrong"] = _fingerprint(profile)
        edit.clear()
        QTest.keyClicks(edit, right)
        QTest.keyClick(edit, Qt.Key.Key_Return)
        yield Wait("the main window after recovery", lambda: launcher.window is not None, 60)
        window = launcher.window
        assert window is not None
        yield Wait("the main window to show", window.isVisible)
        yield Wait("the chat in the list", lambda: window.conversations.rowCount() == 1)
        first = window.conversations.conversation_at(0)
        assert first is not None
        window.open_conversation(first.conversation_id)
        yield Wait("the history intact", lambda: _bodies(window) == HISTORY)
        seen["dialog_after"] = launcher.dialog

    journey = _drive(qapp, launcher, script())
    assert journey.done, f"the application quit at: {journey.step}"
    return seen


# ---- journeys -------------------------------------------------------------------------


def test_keyring_profile_reopens_from_the_keyring_and_the_backup_key_brings_it_back(
    qapp: QApplication,
    tmp_path: Path,
    relay: RelayProcess,
    bob: Person,
    secret_service: object,
) -> None:
    assert keyring_problem() is None, "the real Secret Service should be usable here"
    profile = make_profile(tmp_path, "alice", relay).path
    configure_application(qapp)
    folder = tmp_path / "home" / "Backups"

    # First run: "Alice" is shown to become "alice", the keyring protects the store.
    launcher = launch(qapp, profile)
    state: dict[str, object] = {}

    def create() -> Iterator[Wait]:
        yield Wait("the first-run screen", lambda: isinstance(launcher.dialog, OnboardingDialog))
        dialog = launcher.dialog
        assert isinstance(dialog, OnboardingDialog)
        yield Wait("the first-run screen to show", dialog.isVisible)
        QTest.mouseClick(dialog.create_button, Qt.MouseButton.LeftButton)
        assert dialog.keyring_choice.isEnabled() and dialog.keyring_choice.isChecked()
        assert not dialog.keyring_note.isVisibleTo(dialog)
        QTest.keyClicks(dialog.username_edit, "Alice")
        state["hint"] = dialog.username_hint.text()
        QTest.mouseClick(dialog.submit_button, Qt.MouseButton.LeftButton)
        yield Wait("the main window", lambda: launcher.window is not None, 60)
        window = launcher.window
        assert window is not None
        yield Wait("the relay", lambda: window.connection_label.text() == "Connected")
        window.bridge.start_direct("bob")
        yield Wait("the chat with bob", lambda: window.chat_title.text() == "bob")
        QTest.keyClicks(window.composer, HISTORY[0])
        QTest.keyClick(window.composer, Qt.Key.Key_Return)
        yield Wait("bob to hear", lambda: bool(bob.client.conversations().result()))
        to_alice = bob.client.conversations().result()[0]
        bob.client.send_text(to_alice.conversation_id, HISTORY[1]).result(20)
        yield Wait("the reply", lambda: _bodies(window) == HISTORY)
        client = launcher.client
        assert client is not None
        state["username"] = client.messenger.username
        store = client.messenger.store
        state["key"] = client.core(lambda: service.set_up_with_key(store, folder)).result(20)

    journey = _drive(qapp, launcher, create())
    assert journey.done, f"the application quit at: {journey.step}"
    assert state["hint"] == "Your username will be “alice”: usernames are lowercase."
    assert state["username"] == "alice"
    assert Store.key_method(profile) == "keyring"
    assert _keyring_entries(profile) == 1
    assert account_name(profile) == "alice"
    key = state["key"]
    assert isinstance(key, bytes)
    assert json.loads((profile / RECOVERY_FILE_NAME).read_text())["method"] == "key"

    # Restart: the keyring alone unlocks it, no passphrase asked.
    _opens_straight_to_history(qapp, profile, HISTORY)

    # The keyring is reset: the entry is gone from the Secret Service.
    _delete_keyring_entry(profile)
    recovery_before = (profile / RECOVERY_FILE_NAME).read_bytes()
    key_file_before = (profile / "store.key").read_bytes()
    seen = _recovery_journey(
        qapp,
        profile,
        field="key_edit",
        wrong=format_key(bytes(32)),
        wrong_error="does not open this profile",
        right=format_key(key).upper().replace(" ", "-"),
    )
    assert "alice" in str(seen["title"])
    assert "Cipherline’s key is no longer in your system keyring" in str(seen["reason"])
    assert "Nothing has been deleted" in str(seen["reason"])
    assert "backup key" in str(seen["way_in"])
    assert "puts its key back in the system keyring" in str(seen["way_in"])
    assert seen["key_visible"] is True
    assert seen["password_visible"] is False
    assert seen["passphrase_visible"] is False
    files = seen["files_after_wrong"]
    assert isinstance(files, dict)
    assert files["store.key"] == hashlib.sha256(key_file_before).hexdigest()
    assert seen["dialog_after"] is None

    # The key is back in the real keyring, under a fresh wrapping; the recovery
    # wrapping still opens the same store key.
    assert _keyring_entries(profile) == 1
    assert Store.key_method(profile) == "keyring"
    assert (profile / "store.key").read_bytes() != key_file_before
    assert (profile / RECOVERY_FILE_NAME).read_bytes() == recovery_before
    _opens_straight_to_history(qapp, profile, HISTORY)


@pytest.fixture
def vault_relay(
    relay_factory: Callable[..., RelayProcess], vault_node: VaultProcess
) -> tuple[RelayProcess, VaultProcess]:
    return relay_factory(extra_args=["--vault", vault_node.url]), vault_node


def test_backup_password_through_the_vault_brings_a_lost_keyring_entry_back(
    qapp: QApplication,
    tmp_path: Path,
    vault_relay: tuple[RelayProcess, VaultProcess],
    secret_service: object,
) -> None:
    relay, vault_node = vault_relay
    bob = Person(tmp_path, "bob", relay)
    try:
        config = ServerConfig(
            relay.url, relay.ca_file.read_text(), (VaultNodeKey(**vault_node.public_keys()),)
        )
        profile, alice = _keyring_alice(tmp_path, relay, bob, config)
        access = vault_access_for(profile.path)
        assert access is not None
        store = alice.messenger.store
        alice.core(
            lambda: service.set_up_with_password(
                store, access, STRONG_PASSWORD, tmp_path / "home" / "Nextcloud"
            )
        ).result(60)
        alice.stop()
    finally:
        bob.stop()
    recovery = json.loads((profile.path / RECOVERY_FILE_NAME).read_text())
    assert recovery["method"] == "password"
    assert STRONG_PASSWORD not in (profile.path / RECOVERY_FILE_NAME).read_text()

    _delete_keyring_entry(profile.path)
    configure_application(qapp)
    seen = _recovery_journey(
        qapp,
        profile.path,
        field="password_edit",
        wrong="not my password",
        wrong_error="attempts left",
        right=STRONG_PASSWORD,
        wrong_seconds=60,
    )
    assert "Cipherline’s key is no longer in your system keyring" in str(seen["reason"])
    assert "backup password" in str(seen["way_in"])
    assert seen["password_visible"] is True
    assert seen["key_visible"] is False
    assert seen["wrong_error"] == "That password is not correct. 9 attempts left."
    assert _keyring_entries(profile.path) == 1
    _opens_straight_to_history(qapp, profile.path, HISTORY)


def test_with_no_keyring_left_the_backup_key_opens_it_under_a_new_passphrase(
    qapp: QApplication,
    tmp_path: Path,
    relay: RelayProcess,
    bob: Person,
    secret_service: SecretService,
) -> None:
    profile, alice = _keyring_alice(tmp_path, relay, bob)
    store = alice.messenger.store
    key = alice.core(lambda: service.set_up_with_key(store, tmp_path / "backups")).result(20)
    alice.stop()
    # The desktop changes to one with no keyring at all: the Secret Service is gone.
    secret_service.stop()
    os.environ.pop("DBUS_SESSION_BUS_ADDRESS")
    redetect_keyring()
    assert keyring_problem() is not None

    configure_application(qapp)
    seen = _recovery_journey(
        qapp,
        profile.path,
        field="key_edit",
        wrong=format_key(bytes(32)),
        wrong_error="does not open this profile",
        right=format_key(key),
        new_passphrase="a new local passphrase",
    )
    assert "cannot reach your system keyring" in str(seen["reason"])
    assert "new passphrase" in str(seen["way_in"])
    assert seen["passphrase_visible"] is True
    assert Store.key_method(profile.path) == "passphrase"
    Store.open(profile.path, PassphraseProtector("a new local passphrase", FAST_KDF)).close()


def test_without_a_backup_the_screen_says_so_and_nothing_is_deleted(
    qapp: QApplication,
    tmp_path: Path,
    relay: RelayProcess,
    bob: Person,
    secret_service: object,
) -> None:
    profile, alice = _keyring_alice(tmp_path, relay, bob)
    alice.stop()
    assert not (profile.path / RECOVERY_FILE_NAME).exists()
    # Kept by the test only, to play "the old keyring comes back" at the end.
    old_entry = keyring.get_password(KEYRING_SERVICE, str(profile.path))
    assert old_entry is not None
    _delete_keyring_entry(profile.path)
    before = _fingerprint(profile.path)
    assert {"store.key", "store.db"} <= set(before)

    configure_application(qapp)
    launcher = launch(qapp, profile.path)
    seen: dict[str, object] = {}

    def script() -> Iterator[Wait]:
        yield Wait(
            "the keyring-lost screen", lambda: isinstance(launcher.dialog, KeyringLostDialog)
        )
        dialog = launcher.dialog
        assert isinstance(dialog, KeyringLostDialog)
        yield Wait("the keyring-lost screen to show", dialog.isVisible)
        seen["reason"] = dialog.reason_label.text()
        seen["way_in"] = dialog.way_in.text()
        seen["unlock_visible"] = dialog.unlock_button.isVisible()
        seen["fields_visible"] = [
            edit.isVisible()
            for edit in (dialog.key_edit, dialog.password_edit, dialog.passphrase_edit)
        ]
        QTest.mouseClick(dialog.retry_button, Qt.MouseButton.LeftButton)
        yield Wait(
            "Try again to find no key either",
            lambda: "Still no usable key" in dialog.error_label.text(),
        )
        seen["files"] = _fingerprint(profile.path)
        QTest.mouseClick(dialog.quit_button, Qt.MouseButton.LeftButton)
        yield Wait("the application to quit", lambda: False, 10)

    journey = _drive(qapp, launcher, script())
    assert not journey.done and journey.step == "the application to quit"
    assert launcher.window is None
    assert "Cipherline’s key is no longer in your system keyring" in str(seen["reason"])
    assert "Nothing has been deleted" in str(seen["reason"])
    way_in = str(seen["way_in"])
    assert "No backup was set up for this profile" in way_in
    assert "this history cannot be opened" in way_in
    assert "Restore from a backup" in way_in
    assert str(profile.path) in way_in
    assert seen["unlock_visible"] is False
    assert seen["fields_visible"] == [False, False, False]
    assert seen["files"] == before
    assert _fingerprint(profile.path) == before
    # Nothing was lost: with the old entry back (the old keyring restored) the
    # profile opens as before.
    keyring.set_password(KEYRING_SERVICE, str(profile.path), old_entry)
    Store.open(profile.path, KeyringProtector(account=str(profile.path))).close()


# ---- the dialogs on their own ------------------------------------------------------------


@pytest.fixture
def no_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process without a session bus, as on a machine with no desktop keyring:
    `keyring` chooses its backend again and finds none."""
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    redetect_keyring()
    problem = keyring_problem()
    assert problem is not None
    yield problem
    monkeypatch.undo()
    redetect_keyring()


def test_create_account_says_why_the_keyring_is_off_and_shows_the_lowercase_name(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess, no_keyring: str
) -> None:
    make_profile(tmp_path, "carol", relay)
    launcher = Launcher(tmp_path / "profiles" / "carol", kdf=FAST_KDF)
    launcher.start()
    dialog = launcher.dialog
    assert isinstance(dialog, OnboardingDialog)
    qtbot.addWidget(dialog)
    qtbot.mouseClick(dialog.create_button, Qt.MouseButton.LeftButton)
    assert dialog.form_title.text() == "<h2>Create your account</h2>"
    assert not dialog.keyring_choice.isEnabled()
    assert dialog.passphrase_choice.isChecked()
    assert dialog.keyring_note.isVisible()
    assert dialog.keyring_note.text().startswith("The system keyring option is off: ")
    assert no_keyring in dialog.keyring_note.text()
    assert "protected with a passphrase" in dialog.keyring_note.text()
    assert dialog.keyring_choice.toolTip()

    assert "lowercase" in dialog.username_hint.text()
    qtbot.keyClicks(dialog.username_edit, "Carol")
    assert dialog.username_hint.text() == "Your username will be “carol”: usernames are lowercase."
    dialog.username_edit.setText("carol smith")
    assert "no spaces" in dialog.username_hint.text()
    qtbot.keyClicks(dialog.passphrase_edit, "carol's passphrase")
    qtbot.keyClicks(dialog.passphrase_repeat, "carol's passphrase")
    qtbot.mouseClick(dialog.submit_button, Qt.MouseButton.LeftButton)
    assert "no spaces" in dialog.error_label.text()
    assert not (tmp_path / "profiles" / "carol" / "store.key").exists()
    dialog.username_edit.setText("Carol")
    with qtbot.waitSignal(launcher.ready, timeout=20_000):
        qtbot.mouseClick(dialog.submit_button, Qt.MouseButton.LeftButton)
    assert launcher.client is not None
    assert launcher.client.messenger.username == "carol"
    assert launcher.window is not None
    qtbot.addWidget(launcher.window)
    launcher.shutdown()


def test_the_unlock_dialog_names_the_account_not_the_profile_folder(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess
) -> None:
    profile = make_profile(tmp_path, "work-laptop", relay)
    create_account(profile, "dana", "laptop", "dana's passphrase", kdf=FAST_KDF).store.close()

    # An older profile, never opened by a Cipherline that records the account name.
    first = Launcher(profile.path)
    first.start()
    unlock = first.dialog
    assert isinstance(unlock, UnlockDialog)
    qtbot.addWidget(unlock)
    assert "work-laptop" in unlock.prompt.text()
    qtbot.keyClicks(unlock.passphrase_edit, "dana's passphrase")
    with qtbot.waitSignal(first.ready, timeout=20_000):
        qtbot.mouseClick(unlock.unlock_button, Qt.MouseButton.LeftButton)
    assert first.window is not None
    qtbot.addWidget(first.window)
    first.shutdown()
    assert account_name(profile.path) == "dana"

    again = Launcher(profile.path)
    again.start()
    unlock = again.dialog
    assert isinstance(unlock, UnlockDialog)
    qtbot.addWidget(unlock)
    assert unlock.title.text() == "<h2>Unlock dana’s history</h2>"
    assert "dana" in unlock.prompt.text()
    assert "work-laptop" not in unlock.prompt.text() + unlock.title.text()
