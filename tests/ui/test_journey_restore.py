"""A restore as a person lives it, inside the real application's event loop.

The wizard tests drive the restore wizard alone, with no `QApplication.exec()`
running, so Qt's quit-on-last-window rule never fires there. This test starts the
application the way `run_gui` does (`configure_application` + `launch`), runs
`exec()`, and walks the journey from inside it: first run → "Restore from a
backup" → the wizard → Finish → the main window with the history → a new message
that reaches the other person. If the app quits on the way, `exec()` returns early
and the test says at which step.

The wizard's last page then asks what this computer becomes (issue #19): both
answers are driven through the same journey, and the profile that opens is a
device of its own; taking over also signs the original out of the account.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QLabel, QRadioButton, QWidget, QWizard

from app.backup import engine, service
from app.backup.keys import format_key
from app.services.events import DeviceUnlinked
from app.ui.application import Launcher, configure_application, launch
from app.ui.backup_wizards import RESTORED_BACKUPS_NOTICE, RestoreRunPage, RestoreWizard
from app.ui.dialogs import OnboardingDialog
from app.ui.main_window import MainWindow
from tests.services.helpers import FAST_KDF, Person, make_profile, wait_for
from tests.support.components import RelayProcess

HISTORY = ["first words before the backup", "and a reply before the backup"]


@dataclass(frozen=True)
class Wait:
    what: str
    condition: Callable[[], object]
    seconds: float = 30.0


class Journey:
    """Steps a generator from a timer inside `exec()`: plain code between yields acts
    (clicks, typing), each yielded `Wait` holds the script until its condition holds.
    No nested event loops, so a quit of the application ends `exec()` at once."""

    def __init__(self, application: QApplication, script: Iterator[Wait]) -> None:
        self.application = application
        self.script = script
        self.waiting: Wait | None = None
        self.deadline = 0.0
        self.step = "starting"
        self.done = False
        self.error: BaseException | None = None
        self.timer = QTimer()
        self.timer.setInterval(20)
        self.timer.timeout.connect(self._tick)

    def start(self) -> None:
        self.timer.start()

    def _tick(self) -> None:
        try:
            if self.waiting is not None:
                if not self.waiting.condition():
                    if time.monotonic() > self.deadline:
                        raise AssertionError(f"timed out waiting for {self.waiting.what}")
                    return
                self.waiting = None
            wait = next(self.script)
            self.waiting = wait
            self.step = wait.what
            self.deadline = time.monotonic() + wait.seconds
        except StopIteration:
            self._end(0)
        except BaseException as error:
            self.error = error
            self._end(1)

    def _end(self, code: int) -> None:
        self.timer.stop()
        self.done = self.error is None
        self.application.exit(code)


@pytest.fixture
def bob(tmp_path: Path, relay: RelayProcess) -> Iterator[Person]:
    person = Person(tmp_path, "bob", relay)
    yield person
    person.stop()


def _bodies(window: MainWindow) -> list[str]:
    model = window.messages
    return [model.message_at(row).body for row in range(model.rowCount())]  # type: ignore[union-attr]


def _button(wizard: QWizard, which: QWizard.WizardButton) -> None:
    button = wizard.button(which)
    assert button.isEnabled(), wizard.currentPage().title()
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)


def test_restore_from_first_run_opens_the_main_window_and_the_app_keeps_running(
    qapp: QApplication, tmp_path: Path, relay: RelayProcess, bob: Person
) -> None:
    # The first device: alice talks with bob, then backs up with a 64-digit key.
    alice = Person(tmp_path, "alice", relay)
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, HISTORY[0]).result(20)
    wait_for(lambda: bob.client.conversations().result(), what="bob hears from alice")
    to_alice = bob.client.conversations().result()[0]
    bob.client.send_text(to_alice.conversation_id, HISTORY[1]).result(20)
    wait_for(
        lambda: (
            HISTORY[1]
            in [m.body for m in alice.client.open_conversation(chat.conversation_id).result()[1]]
        ),
        what="alice hears back",
    )
    folder = tmp_path / "home" / "Dropbox"
    store = alice.client.messenger.store

    def back_up() -> bytes:
        key = service.set_up_with_key(store, folder, schedule="daily", keep=2)
        service.back_up_now(store, alice.profile.path)
        return key

    key = alice.client.core(back_up).result(60)
    alice.stop()
    original_backups = engine.list_backups(folder)
    assert len(original_backups) == 1

    # The new machine: an empty profile, the real application around it.
    new_profile = make_profile(tmp_path, "alice-new", relay).path
    configure_application(qapp)
    assert qapp.quitOnLastWindowClosed()
    launcher = launch(qapp, new_profile, kdf=FAST_KDF)
    state: dict[str, object] = {}

    def script() -> Iterator[Wait]:
        wizard = yield from _restore_from_first_run(launcher, folder, key)
        yield Wait("the restore to finish", lambda: wizard.run_page.done, 60)
        state["wizard_text"] = wizard.run_page.status.text()
        _button(wizard, QWizard.WizardButton.FinishButton)
        yield Wait("the main window after Finish", lambda: launcher.window is not None, 60)
        window = launcher.window
        assert window is not None
        yield Wait("the main window to show", window.isVisible)
        yield Wait("the restored chat in the list", lambda: window.conversations.rowCount() == 1)
        first = window.conversations.conversation_at(0)
        assert first is not None
        window.open_conversation(first.conversation_id)
        yield Wait("the restored history in the chat", lambda: _bodies(window) == HISTORY)
        assert window.message_view.model() is window.messages
        yield Wait("the relay", lambda: window.connection_label.text() == "Connected")
        QTest.keyClicks(window.composer, "hello from the restored copy")
        QTest.keyClick(window.composer, Qt.Key.Key_Return)
        yield Wait(
            "the new message in the chat",
            lambda: "hello from the restored copy" in _bodies(window),
        )
        yield Wait(
            "bob to receive the new message",
            lambda: (
                "hello from the restored copy"
                in [
                    m.body
                    for m in bob.client.open_conversation(to_alice.conversation_id).result()[1]
                ]
            ),
            60,
        )
        client = launcher.client
        assert client is not None
        restored = client.messenger.store.backup_state.get()
        state["schedule"] = restored.schedule
        state["due"] = service.is_due(client.messenger.store)

    _travel(qapp, launcher, script())
    # Item 2 of the issue: the copy does not carry on the original's schedule, and says so.
    assert RESTORED_BACKUPS_NOTICE in str(state["wizard_text"])
    assert state["schedule"] == "off"
    assert state["due"] is False
    assert engine.list_backups(folder) == original_backups


def _choice_on_screen(page: RestoreRunPage) -> list[str]:
    """The words of the "what should this computer be" choice, as shown."""
    assert page.device_choice.isVisible()
    shown = [page.device_choice.title()]
    for widget in page.device_choice.findChildren(QWidget):
        if widget.isVisible() and isinstance(widget, QRadioButton | QLabel):
            shown.append(widget.text())
    return shown


@pytest.mark.parametrize("take_over", [False, True], ids=["use-as-well", "move-account"])
def test_the_restored_computer_becomes_what_the_last_page_says(
    qapp: QApplication, tmp_path: Path, relay: RelayProcess, bob: Person, take_over: bool
) -> None:
    # Alice's laptop keeps running while her new computer restores its backup.
    alice = Person(tmp_path, "alice", relay)
    original = alice.client.messenger.device_id
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, HISTORY[0]).result(20)
    folder = tmp_path / "home" / "Dropbox"
    store = alice.client.messenger.store

    def back_up() -> bytes:
        key = service.set_up_with_key(store, folder, schedule="off", keep=2)
        service.back_up_now(store, alice.profile.path)
        return key

    key = alice.client.core(back_up).result(60)
    new_profile = make_profile(tmp_path, "alice-new", relay).path
    configure_application(qapp)
    launcher = launch(qapp, new_profile, kdf=FAST_KDF)
    state: dict[str, object] = {}

    def script() -> Iterator[Wait]:
        wizard = yield from _restore_from_first_run(launcher, folder, key)
        page = wizard.run_page
        yield Wait("the restore to finish", lambda: page.done, 60)
        yield Wait("the choice to show", page.device_choice.isVisible)
        state["shown"] = _choice_on_screen(page)
        state["status"] = page.status.text()
        assert page.add_device.isChecked()  # the default: nothing is signed out unasked
        choice = page.take_over if take_over else page.add_device
        # On the button's circle: a click in the middle of its row's width lands
        # past its text, where a radio button does not take clicks.
        QTest.mouseClick(choice, Qt.MouseButton.LeftButton, pos=QPoint(8, choice.height() // 2))
        assert page.takes_over() is take_over
        _button(wizard, QWizard.WizardButton.FinishButton)
        yield Wait("the main window after Finish", lambda: launcher.window is not None, 60)
        window = launcher.window
        assert window is not None
        yield Wait("the main window to show", window.isVisible)
        yield Wait("the relay", lambda: window.connection_label.text() == "Connected")
        client = launcher.client
        assert client is not None
        state["device"] = client.messenger.device_id
        state["listed"] = client.core(client.messenger.listed_devices).result(20)
        state["relay_lists"] = [int(d["device_id"]) for d in client.devices().result(20)]
        if take_over:
            yield Wait(
                "the original to be signed out",
                lambda: any(isinstance(e, DeviceUnlinked) for e in alice.events),
                60,
            )
        else:
            # The original keeps working: it still reaches bob.
            alice.client.send_text(chat.conversation_id, "still here").result(20)

    try:
        _travel(qapp, launcher, script())
    finally:
        alice.stop()
    assert state["shown"] == [
        "What should this computer be?",
        "Use this computer as well",
        "Your other computer keeps working; this one becomes another device of your account.",
        "Move my account to this computer",
        "Your other computer is signed out and told why. Choose this if you replaced or lost it.",
    ]
    assert str(state["status"]).endswith("Choose below, then click Finish to open Cipherline.")
    device = state["device"]
    assert device != original  # never a clone of the original device
    listed, on_relay = state["listed"], state["relay_lists"]
    assert isinstance(listed, list) and isinstance(on_relay, list)
    assert device in listed and device in on_relay
    if take_over:
        assert original not in listed
        assert original not in on_relay
    else:
        assert original in listed
        assert original in on_relay
        assert not any(isinstance(e, DeviceUnlinked) for e in alice.events)


def _restore_from_first_run(
    launcher: Launcher, folder: Path, key: bytes
) -> Generator[Wait, None, RestoreWizard]:
    """As a person does: "Restore from a backup" on the first-run screen, the
    folder with its one backup, the key (and a passphrase without a keyring), Next."""
    yield Wait("the first-run screen", lambda: isinstance(launcher.dialog, OnboardingDialog))
    dialog = launcher.dialog
    assert isinstance(dialog, OnboardingDialog)
    yield Wait("the first-run screen to show", dialog.isVisible)
    QTest.mouseClick(dialog.restore_button, Qt.MouseButton.LeftButton)
    yield Wait("the restore wizard", lambda: getattr(launcher, "restore_wizard", None))
    wizard = launcher.restore_wizard
    yield Wait("the restore wizard to show", wizard.isVisible)
    wizard.choose_page.folder.set_path(folder)
    assert wizard.choose_page.backups.topLevelItemCount() == 1
    _button(wizard, QWizard.WizardButton.NextButton)
    secret = wizard.secret_page
    if wizard.protector_factory is None:
        QTest.keyClicks(secret.passphrase_edit, "new machine passphrase")
        QTest.keyClicks(secret.passphrase_repeat, "new machine passphrase")
    QTest.keyClicks(secret.key_edit, format_key(key))
    _button(wizard, QWizard.WizardButton.NextButton)
    return wizard


def _travel(qapp: QApplication, launcher: Launcher, script: Iterator[Wait]) -> None:
    """Runs `script` inside the real event loop (qapp.exec()), then shuts the app
    down; fails with the script's error, or if the app quit before it ended."""
    journey = Journey(qapp, script)
    journey.start()
    try:
        code = qapp.exec()
    finally:
        journey.timer.stop()
        qapp.aboutToQuit.disconnect(launcher.shutdown)
        launcher.shutdown()
        for widget in (launcher.window, launcher.dialog, getattr(launcher, "restore_wizard", None)):
            if widget is not None:
                widget.close()
    if journey.error is not None:
        raise journey.error
    assert journey.done, f"the application quit (exec() returned {code}) at: {journey.step}"
