"""Issue #19's linking dialogs driven against each other through a real relay: the
new computer's dialog in a Launcher of its own (first run → "Link to an existing
account"), the existing device's from a running account's Settings → Devices.

Approving opens the new profile's main window with the account's contacts;
declining, a mistyped code and a picture without a code each end in a sentence;
a QR code drawn by segno is read back by zxing-cpp, an independent decoder; and
removing the linked computer from Settings signs it out and covers its window.

With "Also send my message history" checked, the laptop's history follows the
link: the laptop's dialog counts the messages sent, the desktop's chat list shows
a banner with the share received and fills in chunk by chunk, and closing the
laptop's dialog halfway leaves the transfer running (Settings → Devices follows it)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QThreadPool
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from app.services.client import Client
from app.services.events import HistoryProgress
from app.ui.application import Launcher
from app.ui.bridge import ClientBridge
from app.ui.dialogs import OnboardingDialog
from app.ui.linking import LinkExistingDeviceDialog, LinkNewDeviceDialog, read_qr_code
from app.ui.main_window import HistoryBanner, MainWindow
from app.ui.settings import SettingsDialog
from tests.services.helpers import (
    FAST_KDF,
    Person,
    make_profile,
    wait_for,
    write_old_history,
)
from tests.support.components import RelayProcess
from tests.ui.test_accessibility import unnamed_controls

PASSPHRASE = "the desktop's own passphrase"
# Generous: a link step waits on the relay's long poll (five seconds a round).
STEP_MS = 30_000
# The laptop's history for the transfer tests: a few hundred messages, sent in
# chunks small enough that both screens have a middle to show.
HISTORY = 600
CHUNK = 100
HOLD_AT = 300


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


# ---- the history follows the link --------------------------------------------------


def _fill(alice: Person) -> None:
    """HISTORY old messages in the laptop's store: half in the chat with bob, half
    with dave, a chat the desktop gets only through the history (contacts come
    with the link, chats do not)."""
    write_old_history(alice, [("bob", "bob"), ("dave", "dave")], HISTORY)


class HeldTransfer:
    """The laptop's client sends its history in CHUNK-message chunks and holds
    the transfer once HOLD_AT messages are out until `release`, so the test can
    look at both screens (and close a dialog) in the middle, deterministically."""

    def __init__(self, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached = threading.Event()
        self.released = threading.Event()
        original = client.transfer_history

        def transfer(device_id: int, **_given: object) -> object:
            return original(device_id, chunk_messages=CHUNK, progress=self._progress)

        monkeypatch.setattr(client, "transfer_history", transfer)

    def _progress(self, done: int, _total: int) -> None:
        # On the client's history thread, before the count goes out as an event.
        if done >= HOLD_AT and not self.released.is_set():
            self.reached.set()
            self.released.wait(STEP_MS / 1000)

    def release(self) -> None:
        self.released.set()


def _linked_with_history(
    qtbot: QtBot, tmp_path: Path, relay: RelayProcess, laptop: Laptop
) -> tuple[Launcher, LinkExistingDeviceDialog, list[HistoryProgress]]:
    """Links the desktop with the history box left checked; returns once its main
    window is open, with every HistoryProgress its bridge heard."""
    launcher, new = _new_computer(qtbot, tmp_path, relay)
    existing = laptop.link_dialog(qtbot)
    qtbot.keyClicks(existing.code_edit, new.short_code)
    qtbot.mouseClick(existing.continue_button, Qt.MouseButton.LeftButton)
    _both_confirming(qtbot, new, existing)
    assert existing.history_box.isChecked()
    assert existing.history_box.isVisible()
    assert existing.history_box.text() == "Also send my message history to “Desktop”"
    received: list[HistoryProgress] = []

    def record(window: MainWindow) -> None:
        # Connected as the window opens, before its first event is delivered.
        window.bridge.history_progress.connect(received.append)

    launcher.ready.connect(record)
    with qtbot.waitSignal(launcher.ready, timeout=60_000):
        qtbot.mouseClick(existing.approve_button, Qt.MouseButton.LeftButton)
    assert isinstance(launcher.window, MainWindow)
    qtbot.addWidget(launcher.window)
    return launcher, existing, received


def _new_device_messages(window: MainWindow) -> int:
    client = window.bridge.client
    store = client.messenger.store
    query = "SELECT count(*) FROM messages WHERE uuid LIKE 'history-%'"
    return int(client.core(lambda: store.execute(query).fetchone()[0]).result(20))


def _titles(window: MainWindow) -> list[str]:
    rows = range(window.conversations.rowCount())
    return [view.title for r in rows if (view := window.conversations.conversation_at(r))]


def test_the_history_follows_the_link_with_progress_on_both_screens(
    qtbot: QtBot,
    tmp_path: Path,
    relay: RelayProcess,
    people: dict[str, Person],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = people["alice"]
    _fill(alice)
    held = HeldTransfer(alice.client, monkeypatch)
    laptop = Laptop(qtbot, alice)
    sent: list[HistoryProgress] = []
    laptop.window.bridge.history_progress.connect(sent.append)
    launcher, existing, received = _linked_with_history(qtbot, tmp_path, relay, laptop)
    try:
        window = launcher.window
        assert isinstance(window, MainWindow)
        banner = window.history_banner
        # At once, before the first chunk: the other computer waits for our keys.
        assert banner.state in (HistoryBanner.WAITING, HistoryBanner.RECEIVING)
        assert banner.isVisible()
        assert banner.text.text().startswith(
            "Receiving your message history from your other computer…"
        )
        qtbot.waitUntil(lambda: existing.pages.currentIndex() == existing.DONE, timeout=STEP_MS)
        assert existing.history_panel.isVisible()
        assert existing.history_note.text() == (
            "You can close this window: the history keeps being sent in the background."
        )

        # Halfway: the laptop counts messages, the desktop shows a share, and its
        # chat list already has the chat that only the history brings.
        assert held.reached.wait(STEP_MS / 1000), "the transfer never got halfway"
        qtbot.waitUntil(lambda: "dave" in _titles(window), timeout=STEP_MS)
        qtbot.waitUntil(lambda: banner.state == HistoryBanner.RECEIVING, timeout=STEP_MS)
        middle = re.fullmatch(
            r"Receiving your message history from your other computer… (\d+)%",
            banner.text.text(),
        )
        assert middle is not None, banner.text.text()
        assert 0 < int(middle.group(1)) < 100
        sending = re.fullmatch(
            r"Sending your message history… ([\d,]+) of ([\d,]+) messages",
            existing.history_label.text(),
        )
        assert sending is not None, existing.history_label.text()
        done, total = (int(group.replace(",", "")) for group in sending.groups())
        assert 0 < done < total
        assert existing.history_bar.value() == done
        assert existing.history_bar.maximum() == total
        held.release()

        # The end, on both screens.
        transfer = existing.history_transfer
        assert transfer is not None
        count = transfer.result(timeout=STEP_MS / 1000)
        assert count == total >= HISTORY
        qtbot.waitUntil(
            lambda: existing.history_label.text() == f"Done: {count:,} messages sent.",
            timeout=STEP_MS,
        )
        assert existing.history_bar.value() == existing.history_bar.maximum()
        assert not existing.history_note.isVisible()
        qtbot.waitUntil(lambda: banner.state == HistoryBanner.ARRIVED, timeout=STEP_MS)
        assert banner.text.text() == f"Your message history arrived: {count:,} messages."
        assert not banner.bar.isVisible()
        # Each side reported a middle, chunk by chunk, then the end.
        assert any(0 < e.done_messages < e.total_messages for e in sent if e.sending)
        assert any(not e.finished and not e.sending for e in received)
        assert received[-1] == HistoryProgress(count, count, True, False)
        assert _new_device_messages(window) == HISTORY

        # The chat list has both chats, and a chat opened shows the old messages.
        assert {"bob", "dave"} <= set(_titles(window))
        dave = next(
            view
            for r in range(window.conversations.rowCount())
            if (view := window.conversations.conversation_at(r)) and view.title == "dave"
        )
        window.open_conversation(dave.conversation_id)
        qtbot.waitUntil(lambda: window.messages.rowCount() > 0, timeout=STEP_MS)
        newest = window.messages.message_at(window.messages.rowCount() - 1)
        assert newest is not None
        assert newest.body == f"old message {HISTORY - 1} about the harbour"

        # The "arrived" line goes at a click (else by itself, after a few seconds).
        qtbot.mouseClick(banner, Qt.MouseButton.LeftButton)
        assert not banner.isVisible()
        assert banner.state == HistoryBanner.HIDDEN
    finally:
        held.release()
        _finish(launcher)


def test_closing_the_laptops_dialog_halfway_leaves_the_history_going(
    qtbot: QtBot,
    tmp_path: Path,
    relay: RelayProcess,
    people: dict[str, Person],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = people["alice"]
    _fill(alice)
    held = HeldTransfer(alice.client, monkeypatch)
    laptop = Laptop(qtbot, alice)
    launcher, existing, _received = _linked_with_history(qtbot, tmp_path, relay, laptop)
    try:
        window = launcher.window
        assert isinstance(window, MainWindow)
        qtbot.waitUntil(lambda: existing.pages.currentIndex() == existing.DONE, timeout=STEP_MS)
        assert held.reached.wait(STEP_MS / 1000), "the transfer never got halfway"
        qtbot.waitUntil(
            lambda: existing.history_label.text().startswith("Sending your message history…"),
            timeout=STEP_MS,
        )
        qtbot.mouseClick(existing.close_button, Qt.MouseButton.LeftButton)
        assert not existing.isVisible()
        transfer = existing.history_transfer
        assert transfer is not None
        assert not transfer.done()

        # Settings → Devices, open all along, follows the transfer; so does a
        # Settings opened now (it asks the client where the transfer stands).
        for settings in (laptop.settings, _reopened_settings(qtbot, laptop)):
            qtbot.waitUntil(settings.history_line.isVisible, timeout=STEP_MS)
            assert re.fullmatch(
                r"Sending your message history to your new device… [\d,]+ of [\d,]+ messages",
                settings.history_line.text(),
            ), settings.history_line.text()
            assert settings.history_bar.isVisible()

        held.release()
        count = transfer.result(timeout=STEP_MS / 1000)
        qtbot.waitUntil(
            lambda: window.history_banner.state == HistoryBanner.ARRIVED, timeout=STEP_MS
        )
        assert _new_device_messages(window) == HISTORY
        qtbot.waitUntil(
            lambda: (
                laptop.settings.history_line.text()
                == f"Your message history was sent: {count:,} messages."
            ),
            timeout=STEP_MS,
        )
        assert not laptop.settings.history_bar.isVisible()
        # The closed dialog heard the end too: it would say so if opened again.
        assert existing.history_label.text() == f"Done: {count:,} messages sent."
    finally:
        held.release()
        _finish(launcher)


def _reopened_settings(qtbot: QtBot, laptop: Laptop) -> SettingsDialog:
    laptop.window.show_settings()
    settings = laptop.window.settings_dialog
    assert isinstance(settings, SettingsDialog)
    assert settings is not laptop.settings
    settings.tabs.setCurrentIndex(1)
    qtbot.waitExposed(settings)
    return settings
