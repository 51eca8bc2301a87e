"""Issue #19's linking dialogs driven against each other through a real relay: the
new computer's dialog in a Launcher of its own (first run → "Link to an existing
account"), the existing device's from a running account's Settings → Devices.

Approving opens the new profile's main window with the account's contacts;
declining, a mistyped code and a picture without a code each end in a sentence;
a QR code drawn by segno is read back by zxing-cpp, an independent decoder; and
removing the linked computer from Settings signs it out and covers its window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QThreadPool
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from app.ui.application import Launcher
from app.ui.bridge import ClientBridge
from app.ui.dialogs import OnboardingDialog
from app.ui.linking import LinkExistingDeviceDialog, LinkNewDeviceDialog, read_qr_code
from app.ui.main_window import MainWindow
from app.ui.settings import SettingsDialog
from tests.services.helpers import FAST_KDF, Person, make_profile, wait_for
from tests.support.components import RelayProcess
from tests.ui.test_accessibility import unnamed_controls

PASSPHRASE = "the desktop's own passphrase"
# Generous: a link step waits on the relay's long poll (five seconds a round).
STEP_MS = 30_000


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    """Alice on her laptop, with bob as a contact; bob on his."""
    cast = {name: Person(tmp_path, name, relay) for name in ("alice", "bob")}
    alice, bob = cast["alice"], cast["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hello bob").result(20)
    wait_for(lambda: bob.client.conversations().result(20), what="bob hears from alice")
    yield cast
    for person in cast.values():
        person.stop()


class Laptop:
    """Alice's running account: its main window and Settings → Devices."""

    def __init__(self, qtbot: QtBot, alice: Person) -> None:
        self.window = MainWindow(ClientBridge(alice.client))
        qtbot.addWidget(self.window)
        self.window.show()
        self.window.show_settings()
        settings = self.window.settings_dialog
        assert isinstance(settings, SettingsDialog)
        self.settings = settings
        settings.tabs.setCurrentIndex(1)
        qtbot.waitUntil(lambda: settings.devices.count() == 1, timeout=STEP_MS)

    def link_dialog(self, qtbot: QtBot) -> LinkExistingDeviceDialog:
        qtbot.mouseClick(self.settings.link_button, Qt.MouseButton.LeftButton)
        dialog = self.window.link_dialog
        assert isinstance(dialog, LinkExistingDeviceDialog)
        qtbot.waitExposed(dialog)
        return dialog


def _new_computer(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess
) -> tuple[Launcher, LinkNewDeviceDialog]:
    """First run on a new profile → "Link to an existing account" → its name and a
    passphrase → Continue; returns once the code is shown."""
    make_profile(tmp_path, "alice-desktop", relay)
    launcher = Launcher(tmp_path / "profiles" / "alice-desktop", kdf=FAST_KDF)
    launcher.start()
    onboarding = launcher.dialog
    assert isinstance(onboarding, OnboardingDialog)
    qtbot.addWidget(onboarding)
    qtbot.mouseClick(onboarding.link_button, Qt.MouseButton.LeftButton)
    dialog = launcher.link_dialog
    assert isinstance(dialog, LinkNewDeviceDialog)
    qtbot.waitExposed(dialog)
    dialog.device_edit.clear()
    qtbot.keyClicks(dialog.device_edit, "Desktop")
    dialog.protection.passphrase_choice.setChecked(True)
    qtbot.keyClicks(dialog.protection.passphrase_edit, PASSPHRASE)
    qtbot.keyClicks(dialog.protection.passphrase_repeat, PASSPHRASE)
    qtbot.mouseClick(dialog.continue_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(dialog.short_code_label.text()), timeout=STEP_MS)
    assert dialog.pages.currentIndex() == dialog.CODE
    assert dialog.qr_label.pixmap() is not None and not dialog.qr_label.pixmap().isNull()
    assert "expires in" in dialog.expiry_label.text()
    return launcher, dialog


def _screenshot_of(dialog: LinkNewDeviceDialog, path: Path) -> Path:
    """The QR code as it appears on screen, drawn by segno (app/ui/widgets.py), in
    a larger picture with other things around it, as a screenshot has."""
    canvas = QImage(900, 640, QImage.Format.Format_RGB32)
    canvas.fill(QColor("#d8dde3"))
    painter = QPainter(canvas)
    painter.fillRect(40, 30, 300, 60, QColor("#3b6ea5"))
    painter.drawPixmap(310, 170, dialog.qr_label.pixmap())
    painter.end()
    assert canvas.save(str(path), "PNG")  # type: ignore[call-overload]
    return path


def _both_confirming(
    qtbot: QtBot, new: LinkNewDeviceDialog, existing: LinkExistingDeviceDialog
) -> None:
    qtbot.waitUntil(lambda: existing.pages.currentIndex() == existing.CONFIRM, timeout=STEP_MS)
    qtbot.waitUntil(lambda: new.pages.currentIndex() == new.CONFIRM, timeout=STEP_MS)
    # Both screens show the same six digits, large.
    assert new.confirmation_label.text() == existing.confirmation_label.text()
    assert len(new.confirmation_label.text().replace(" ", "")) == 6
    assert existing.confirm_title.text() == "Link “Desktop”?"
    assert "Waiting for approval on your other computer" in new.approval_status.text()
    assert unnamed_controls(new) == []
    assert unnamed_controls(existing) == []


def _finish(launcher: Launcher) -> None:
    launcher.shutdown()
    for widget in (launcher.window, launcher.dialog, launcher.link_dialog):
        if widget is not None:
            widget.close()
    # Client.stop on a worker (a removed device closes its profile that way).
    QThreadPool.globalInstance().waitForDone(20_000)


def test_a_picture_of_the_code_links_the_computer_and_removing_it_signs_it_out(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess, people: dict[str, Person]
) -> None:
    laptop = Laptop(qtbot, people["alice"])
    launcher, new = _new_computer(qtbot, tmp_path, relay)
    try:
        existing = laptop.link_dialog(qtbot)
        # segno drew it, zxing-cpp reads it: two independent implementations agree.
        picture = _screenshot_of(new, tmp_path / "screenshot.png")
        assert read_qr_code(picture) == new.qr_text
        existing.open_picture(picture)
        qtbot.waitUntil(lambda: existing.code_edit.text() == new.qr_text, timeout=STEP_MS)
        _both_confirming(qtbot, new, existing)

        with qtbot.waitSignal(launcher.ready, timeout=60_000):
            qtbot.mouseClick(existing.approve_button, Qt.MouseButton.LeftButton)
        window = launcher.window
        assert isinstance(window, MainWindow)
        qtbot.addWidget(window)
        assert window.isVisible()
        assert not new.isVisible()
        qtbot.waitUntil(lambda: existing.pages.currentIndex() == existing.DONE, timeout=STEP_MS)
        assert existing.done_label.text() == "Linked. “Desktop” now receives your messages."
        # The new profile is alice's account, with her contacts.
        client = window.bridge.client
        assert client.messenger.username == "alice"
        assert client.messenger.device_name == "Desktop"
        assert "bob" in client.contacts().result(20)
        # Settings → Devices on the laptop lists the desktop now.
        settings = laptop.settings
        qtbot.waitUntil(lambda: settings.devices.count() == 2, timeout=STEP_MS)
        labels = [settings.devices.item(r).text() for r in range(settings.devices.count())]
        row = next(r for r, label in enumerate(labels) if "Desktop" in label)

        # Removing it asks first, in plain words, then signs it out at once.
        settings.devices.setCurrentRow(row)
        assert settings.remove_button.isEnabled()
        qtbot.mouseClick(settings.remove_button, Qt.MouseButton.LeftButton)
        confirm = settings.remove_confirm
        assert isinstance(confirm, QMessageBox)
        assert confirm.text() == "Remove “Desktop”?"
        assert confirm.informativeText() == (
            "It will stop receiving your messages at once and will be signed out."
        )
        remove = next(b for b in confirm.buttons() if b.text() == "Remove")
        qtbot.mouseClick(remove, Qt.MouseButton.LeftButton)
        assert settings.devices.count() == 1

        qtbot.waitUntil(lambda: window.unlinked, timeout=STEP_MS)
        screen = window.centralWidget()
        assert screen is window.unlinked_screen
        assert screen.message.text().startswith(
            "This device was removed from your account on another device."
        )
        assert window.locked
        assert not any(action.isEnabled() for action in window.unlocked_actions)
        # The profile is closed: nothing more is asked of its client.
        assert launcher.client is None
    finally:
        _finish(launcher)


def test_a_declined_link_says_so_on_the_new_computer(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess, people: dict[str, Person]
) -> None:
    laptop = Laptop(qtbot, people["alice"])
    launcher, new = _new_computer(qtbot, tmp_path, relay)
    try:
        existing = laptop.link_dialog(qtbot)
        # The short code, typed in lower case with spaces, works as well as the QR.
        qtbot.keyClicks(existing.code_edit, new.short_code.lower().replace("-", " "))
        qtbot.mouseClick(existing.continue_button, Qt.MouseButton.LeftButton)
        _both_confirming(qtbot, new, existing)

        qtbot.mouseClick(existing.decline_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: new.pages.currentIndex() == new.FAILED, timeout=STEP_MS)
        assert new.failure_label.text() == (
            "The other device declined: the link was declined on your other device."
        )
        assert new.start_again_button.isVisible()
        qtbot.waitUntil(lambda: existing.pages.currentIndex() == existing.DONE, timeout=STEP_MS)
        assert "was not linked" in existing.done_label.text()
        assert launcher.window is None
        assert not (tmp_path / "profiles" / "alice-desktop" / "store.db").exists()

        # Start again: a new code from a new mailbox, the same name and protection.
        old_code = new.short_code
        qtbot.mouseClick(new.start_again_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: new.short_code_label.text() not in ("", old_code), timeout=STEP_MS)
        assert new.pages.currentIndex() == new.CODE
    finally:
        _finish(launcher)


def test_a_wrong_code_or_a_picture_without_one_gets_a_sentence(
    qtbot: QtBot, tmp_path: Path, people: dict[str, Person]
) -> None:
    laptop = Laptop(qtbot, people["alice"])
    existing = laptop.link_dialog(qtbot)

    def refused(text: str) -> str:
        existing.code_edit.setText(text)
        qtbot.mouseClick(existing.continue_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(existing.continue_button.isEnabled, timeout=STEP_MS)
        assert existing.pages.currentIndex() == existing.ENTER
        said = existing.enter_error.text()
        assert said[:1].isupper() and said.endswith("."), said
        return said

    assert "20 letters and digits" in refused("ABCD-EFGH")
    # Well formed, but no new computer waits with it.
    assert "No device is waiting with that code" in refused("ABCD-EFGH-IJKL-MNOP-QRST")
    assert refused("https://example.org/") == "This is not a Cipherline link code."

    # A picture with no QR code in it.
    blank = QImage(640, 480, QImage.Format.Format_RGB32)
    blank.fill(QColor("#ffffff"))
    assert blank.save(str(tmp_path / "blank.png"), "PNG")  # type: ignore[call-overload]
    existing.open_picture(tmp_path / "blank.png")
    qtbot.waitUntil(lambda: "No QR code" in existing.enter_error.text(), timeout=STEP_MS)
    assert existing.picture_button.isEnabled()
    # A file that is no picture at all.
    (tmp_path / "notes.txt").write_text("not a picture")
    existing.open_picture(tmp_path / "notes.txt")
    qtbot.waitUntil(lambda: "not a picture" in existing.enter_error.text(), timeout=STEP_MS)
    existing.reject()
    assert not existing.isVisible()


def test_cancelling_the_new_computer_goes_back_to_the_first_run_screen(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess
) -> None:
    launcher, new = _new_computer(qtbot, tmp_path, relay)
    try:
        linking = new.linking
        assert linking is not None
        new.reject()
        assert not new.isVisible()
        assert linking.cancelled.is_set()  # the waiting worker ends
        assert isinstance(launcher.dialog, OnboardingDialog)
        assert launcher.dialog.isVisible()
    finally:
        _finish(launcher)
