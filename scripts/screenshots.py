"""Runs the real app on a virtual X display (Xvfb) and saves screenshots of its
main screens: onboarding, a 1:1 chat, a group, the safety number, search,
settings, linking a second computer (both sides, its message history following
with progress on both screens) and removing it, the lock screen, and a restore
at first run that asks what the computer becomes and ends in the main window
with the history.

    .venv/bin/python -m scripts.screenshots [--out build/screenshots]

A relay is started on loopback and two other people (bob, carol) talk to "alice"
through it, so every screen shows real, end-to-end encrypted traffic.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.components import RelayProcess, Xvfb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cipherline-shots-"))
    os.environ["CIPHERLINE_HOME"] = str(work / "home")
    xvfb = Xvfb(work / "xvfb", size="1280x800x24").start()
    os.environ.update(xvfb.env())
    relay = RelayProcess(work / "relay").start()
    try:
        return _shoot(args.out, work, relay)
    finally:
        relay.stop()
        xvfb.stop()


def _shoot(out: Path, work: Path, relay: RelayProcess) -> int:
    from PySide6.QtWidgets import QApplication, QWidget

    from app.ui.application import Launcher
    from app.ui.dialogs import OnboardingDialog
    from app.ui.garbage import collect_on_gui_thread
    from tests.services.helpers import FAST_KDF, Person, make_profile

    app = QApplication(sys.argv[:1])
    app.setApplicationName("Cipherline")
    # As the app does (app/ui/garbage.py): a cycle holding a widget collected on
    # a worker thread crashed this script now and then.
    collect_on_gui_thread(app)

    def pump(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.02)

    def until(condition: Callable[[], object], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            app.processEvents()
            if condition():
                return
            time.sleep(0.02)
        raise RuntimeError("the app did not reach the expected state")

    def shot(widget: QWidget, name: str) -> None:
        pump(0.4)
        widget.grab().save(str(out / f"{name}.png"))
        print(f"saved {out / name}.png")

    # Pinned as `make run` pins it (scripts/run_local.py), so the shots show sealed mail.
    bob = Person(work, "bob", relay, sealed=True)
    carol = Person(work, "carol", relay, sealed=True)
    make_profile(work, "alice", relay, sealed=True)
    launcher = Launcher(work / "profiles" / "alice", kdf=FAST_KDF)
    launcher.start()
    dialog = launcher.dialog
    assert isinstance(dialog, OnboardingDialog)
    shot(dialog, "01-welcome")
    dialog.pages.setCurrentIndex(1)
    dialog.username_edit.setText("alice")
    dialog.device_edit.setText("Alice's laptop")
    dialog.passphrase_choice.setChecked(True)
    dialog.passphrase_edit.setText("a long passphrase")
    dialog.passphrase_repeat.setText("a long passphrase")
    shot(dialog, "02-create-account")
    dialog.submit_button.click()
    until(lambda: launcher.window is not None)
    window = launcher.window
    assert window is not None
    until(lambda: window.connection_label.text() == "Connected")

    window.bridge.start_direct("bob")
    until(lambda: window.chat_title.text() == "bob")
    lines = [
        "Hi Bob! Did you get the slides for Thursday?",
        "Also: lunch after the meeting?",
    ]
    for line in lines:
        window.composer.setPlainText(line)
        window.composer.submit()
        pump(0.3)
    until(lambda: any(c.title == "alice" for c in bob.client.conversations().result()))
    bob_view = next(c for c in bob.client.conversations().result() if c.title == "alice")
    if hasattr(bob.client, "accept_request"):  # read receipts go to accepted chats only
        bob.client.accept_request(bob_view.conversation_id).result(20)
    bob.client.mark_read(bob_view.conversation_id).result()
    for reply in ("Yes, got them — they look great.", "Lunch sounds good. The usual place at 1?"):
        bob.client.send_text(bob_view.conversation_id, reply).result(20)
    until(lambda: window.messages.rowCount() >= 4)
    group = carol.client.create_group("Book club", ["alice", "bob"]).result(30)
    carol.client.send_text(group.conversation_id, "Next book: The Left Hand of Darkness").result(20)
    until(lambda: window.conversations.rowCount() >= 2)
    pump(1.5)

    def _rows(window: Any) -> list[Any]:
        return [window.messages.message_at(r) for r in range(window.messages.rowCount())]

    def open_titled(title: str) -> None:
        for row in range(window.conversations.rowCount()):
            view = window.conversations.conversation_at(row)
            if view is not None and view.title == title:
                window.open_conversation(view.conversation_id)
        until(lambda: window.chat_title.text() == title)

    window.resize(1100, 720)
    window.show()
    open_titled("bob")
    shot(window, "03-chat")
    # Message actions (issue #24): a reply quoting bob, reactions both ways.
    rows = [window.messages.message_at(r) for r in range(window.messages.rowCount())]
    lunch = next(m for m in rows if m is not None and m.body.startswith("Lunch sounds"))
    slides = next(m for m in rows if m is not None and m.body.startswith("Yes, got them"))
    window.start_reply(lunch)
    window.composer.setPlainText("Perfect, see you there!")
    window.composer.submit()
    window.bridge.react(slides.message_id, "❤️")
    _bob_view, bob_rows = bob.client.open_conversation(bob_view.conversation_id).result()
    hi = next(m for m in bob_rows if m.body.startswith("Hi Bob"))
    bob.client.react(hi.message_id, "👍").result(20)
    until(lambda: any(m is not None and m.quote for m in _rows(window)))
    until(lambda: sum(bool(m and m.reactions) for m in _rows(window)) >= 2)
    pump(1.0)
    shot(window, "03b-chat-reply-reactions")
    _attachment_screens(
        window, work, bob, bob_view.conversation_id, shot=shot, until=until, pump=pump
    )
    _edit_delete_typing_screen(window, bob, bob_view.conversation_id, shot=shot, until=until)
    open_titled("Book club")
    until(lambda: window.messages.rowCount() >= 2)
    # Carol is no contact of alice's: her group arrives as a request (issue #24).
    until(window.request_bar.isVisible)
    shot(window, "04a-group-request")
    window.request_bar.accept_button.click()
    until(lambda: not window.request_bar.isVisible())
    shot(window, "04-group")
    open_titled("bob")
    window.show_details()
    until(lambda: getattr(window, "safety_dialog", None) is not None)
    safety = window.safety_dialog
    assert safety is not None
    shot(safety, "05-safety-number")
    safety.close()

    window.search_edit.setText("lunch")
    until(lambda: window.search_results.rowCount() >= 1)
    shot(window, "06-search")
    window.search_edit.clear()

    window.show_settings()
    until(lambda: getattr(window, "settings_dialog", None) is not None)
    pump(1.0)
    shot(window.settings_dialog, "07-settings")
    window.settings_dialog.tabs.setCurrentIndex(1)
    pump(1.0)
    shot(window.settings_dialog, "08-settings-devices")
    window.settings_dialog.tabs.setCurrentIndex(window.settings_dialog.tabs.count() - 1)
    pump(0.5)
    shot(window.settings_dialog, "20-settings-about")
    window.settings_dialog.close()

    # Before the backup screens: their split-vault relay's CA is written into
    # alice's profile folder, after which her client cannot reach her relay.
    _link_screens(window, work, relay, shot, until=until)

    key = _backup_screens(window, work, shot, until, pump)

    _contact_screens(window, work, relay, shot, until=until, open_titled=open_titled)

    window.lock()
    shot(window, "09-locked")
    launcher.shutdown()
    window.close()
    # Alice's new laptop restores the key backup at first run and becomes a
    # device of its own (the wizard's last page asks).
    _restore_journey_screens(
        work, relay, work / "fake-home" / "Dropbox", key, shot=shot, until=until
    )
    bob.stop()
    carol.stop()
    return 0


def _picture(path: Path, hue: int) -> Path:
    """A made-up photo: a sky gradient over a darker ground, with a sun."""
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QColor, QImage, QLinearGradient, QPainter

    image = QImage(1200, 800, QImage.Format.Format_RGB32)
    painter = QPainter(image)
    sky = QLinearGradient(QPointF(0, 0), QPointF(0, 800))
    sky.setColorAt(0, QColor.fromHsl(hue, 170, 150))
    sky.setColorAt(1, QColor.fromHsl((hue + 30) % 360, 200, 210))
    painter.fillRect(image.rect(), sky)
    painter.setBrush(QColor("#ffd45c"))
    painter.drawEllipse(QPointF(820, 330), 90, 90)
    painter.fillRect(0, 560, 1200, 240, QColor.fromHsl((hue + 180) % 360, 60, 60))
    painter.end()
    image.save(str(path), "PNG")  # type: ignore[call-overload]
    return path


def _attachment_screens(
    window: Any, work: Path, bob: Any, bob_chat: int, *, shot: Any, until: Any, pump: Any
) -> None:
    """Issue #24: the staging bar with a picture and its caption, then image
    bubbles both ways (thumbnails shown before and after the download)."""
    from PySide6.QtGui import QImage

    from app.ui.attachments import make_thumbnail

    harbour = _picture(work / "harbour.png", 200)
    window.stage_files([harbour])
    until(lambda: window.staging_bar.ready)
    window.staging_bar.caption.setText("The harbour last night")
    shot(window, "03c-attachment-staging")
    window.staging_bar.submit()
    hills = _picture(work / "hills.png", 20)
    bob.client.send_file(
        bob_chat,
        hills,
        caption="And the hills this morning",
        thumbnail=make_thumbnail(QImage(str(hills))),
    ).result(30)

    def both_shown() -> bool:
        rows = [window.messages.message_at(r) for r in range(window.messages.rowCount())]
        images = [m for m in rows if m is not None and m.attachment and m.attachment.thumbnail]
        return len(images) >= 2 and all(m.attachment.ready for m in images)

    until(both_shown, 30)
    window.message_view.scrollToBottom()
    until(window.message_delegate.thumbnails.idle)
    pump(0.5)
    shot(window, "03d-image-bubbles")


def _edit_delete_typing_screen(
    window: Any, bob: Any, bob_chat: int, *, shot: Any, until: Any
) -> None:
    """Issue #24: an edited message, one deleted for everyone, and bob typing."""

    def find(body: str) -> Any:
        rows = [window.messages.message_at(r) for r in range(window.messages.rowCount())]
        return next((m for m in rows if m is not None and m.body == body), None)

    window.composer.setPlainText("Running 5 minutes late")
    window.composer.submit()
    until(lambda: find("Running 5 minutes late"))
    window.start_edit(find("Running 5 minutes late"))
    window.composer.setPlainText("Running 10 minutes late, sorry")
    window.composer.submit()
    until(lambda: find("Running 10 minutes late, sorry"))
    window.composer.setPlainText("Meant for someone else")
    window.composer.submit()
    until(lambda: find("Meant for someone else"))
    window.confirm_delete_for_everyone(find("Meant for someone else"))
    window.delete_bar.delete_button.click()
    until(lambda: find("This message was deleted"))
    bob.client.send_typing(bob_chat, True).result(20)
    until(window.typing_line.isVisible)
    window.message_view.scrollToBottom()
    shot(window, "03e-chat-edit-delete-typing")


def _contact_screens(
    window: Any, work: Path, relay: RelayProcess, shot: Any, *, until: Any, open_titled: Any
) -> None:
    """Issue #24: a stranger's message request, the new-chat and new-group pickers."""
    from PySide6.QtCore import Qt

    from tests.services.helpers import Person

    dave = Person(work, "dave", relay, sealed=True)
    try:
        chat = dave.client.start_direct("alice").result(20)
        dave.client.send_text(chat.conversation_id, "Hi! I found your name on the club list.")
        until(
            lambda: any(
                (view := window.conversations.conversation_at(r)) is not None
                and view.title == "dave"
                for r in range(window.conversations.rowCount())
            )
        )
        open_titled("dave")
        until(window.request_bar.isVisible)
        shot(window, "21-message-request")
    finally:
        dave.stop()
    window.ask_new_chat()
    picker = window.new_chat_dialog
    until(lambda: picker.contact_list.count() >= 1)
    picker.search_edit.setText("b")
    shot(picker, "22-new-chat-picker")
    picker.search_edit.setText("bobby")
    shot(picker, "22b-new-chat-picker-username")
    picker.reject()
    window.ask_new_group()
    group_dialog = window.new_group_dialog
    until(lambda: group_dialog.member_list.count() >= 1)
    group_dialog.title_edit.setText("Climbing")
    group_dialog.member_list.item(0).setCheckState(Qt.CheckState.Checked)
    shot(group_dialog, "23-new-group")
    group_dialog.reject()


# Alice's older history for the link screens: enough that its transfer has a
# middle to show, sent in chunks small enough for the counts to move.
OLD_MESSAGES = 40_000
OLD_CHUNK = 1_000
OLD_HOLD_AT = 13_000
OLD_LINES = (
    "Did you see the harbour this morning?",
    "The ferry was late again.",
    "Photos from the weekend are in the shared folder.",
    "Happy birthday! 🎉",
    "Can you send me the address?",
    "Running a bit late, start without me.",
)


def _old_history(client: Any) -> None:
    """OLD_MESSAGES messages in alice's chat with bob, written straight into her
    store, dated years back: the chat's latest messages (and every other
    screenshot of it) stay as they were, only its history grows."""
    store = client.messenger.store
    insert = (
        "INSERT INTO messages (conversation_id, uuid, sender, outgoing, kind, body, sent_at,"
        " received_at, status) VALUES (?, ?, ?, ?, 'text', ?, ?, ?, ?)"
    )
    chat = next(c.conversation_id for c in client.conversations().result(20) if c.title == "bob")

    def run() -> None:
        rows = []
        for number in range(OLD_MESSAGES):
            outgoing = number % 2 == 0
            when = 1_500_000_000_000 + number * 600_000
            rows.append(
                (
                    chat,
                    f"old-{number:06d}",
                    "alice" if outgoing else "bob",
                    int(outgoing),
                    OLD_LINES[number % len(OLD_LINES)],
                    when,
                    when + 500,
                    "delivered" if outgoing else "read",
                )
            )
        with store.transaction():
            store.executemany(insert, rows)

    client.core(run).result(120)


def _hold_history_midway(client: Any) -> Any:
    """Alice's client sends its history in OLD_CHUNK chunks and waits, once
    OLD_HOLD_AT messages are out, until the returned event is set: both screens
    can then be shot halfway, however fast the transfer really is."""
    import threading

    release = threading.Event()
    original = client.transfer_history

    def progress(done: int, _total: int) -> None:
        if done >= OLD_HOLD_AT:
            release.wait(60)

    def transfer(device_id: int, **_given: Any) -> Any:
        return original(device_id, chunk_messages=OLD_CHUNK, progress=progress)

    client.transfer_history = transfer
    return release


def _link_screens(window: Any, work: Path, relay: RelayProcess, shot: Any, *, until: Any) -> None:
    """Issue #19: alice links a desktop to her account. The new computer's setup,
    code and confirmation screens, the laptop's side (code, confirmation, done),
    her history sent over (the laptop's count, the desktop's banner, Settings →
    Devices), then the desktop removed again from Settings → Devices and signed out."""
    from app.ui.application import Launcher
    from app.ui.dialogs import OnboardingDialog
    from app.ui.main_window import HistoryBanner
    from tests.services.helpers import FAST_KDF, make_profile

    _old_history(window.bridge.client)
    release = _hold_history_midway(window.bridge.client)
    make_profile(work, "alice-desktop", relay, sealed=True)
    desktop = Launcher(work / "profiles" / "alice-desktop", kdf=FAST_KDF)
    desktop.start()
    dialogs: list[Any] = []
    try:
        first_run = desktop.dialog
        assert isinstance(first_run, OnboardingDialog)
        first_run.link_button.click()
        new = desktop.link_dialog
        assert new is not None
        dialogs.append(new)
        until(new.isVisible)
        new.device_edit.setText("Alice's desktop")
        new.protection.passphrase_choice.setChecked(True)
        new.protection.passphrase_edit.setText("the desktop passphrase")
        new.protection.passphrase_repeat.setText("the desktop passphrase")
        shot(new, "29-link-new-device-setup")
        new.continue_button.click()
        until(new.short_code_label.text)
        shot(new, "30-link-new-device-code")

        window.show_settings()
        settings = window.settings_dialog
        settings.tabs.setCurrentIndex(1)
        until(lambda: settings.devices.count() >= 1)
        settings.link_button.click()
        existing = window.link_dialog
        dialogs.append(existing)
        until(existing.isVisible)
        existing.code_edit.setText(new.short_code)
        shot(existing, "31-link-existing-device-code")
        existing.continue_button.click()
        until(lambda: existing.pages.currentIndex() == existing.CONFIRM, 30)
        until(lambda: new.pages.currentIndex() == new.CONFIRM, 30)
        shot(new, "32-link-new-device-confirm")
        shot(existing, "33-link-existing-device-confirm")
        existing.approve_button.click()
        until(lambda: desktop.window is not None, 60)
        until(lambda: existing.pages.currentIndex() == existing.DONE, 30)
        # Halfway through the history: the laptop's count, the desktop's banner.
        # Held at OLD_HOLD_AT: the laptop shows the chunk before it, and the
        # desktop, which lags by the chunk in flight, catches up to about as far.
        held_at = f"{OLD_HOLD_AT - OLD_CHUNK:,} of"
        until(lambda: held_at in existing.history_label.text(), 60)
        shot(existing, "34-link-existing-device-sending-history")
        receiving = desktop.window
        assert receiving is not None
        receiving.resize(1100, 720)
        share = (OLD_HOLD_AT - OLD_CHUNK) * 100 // OLD_MESSAGES
        until(
            lambda: (
                receiving.history_banner.state == HistoryBanner.RECEIVING
                and receiving.history_banner.bar.value() >= share
            ),
            60,
        )
        until(lambda: receiving.conversations.rowCount() >= 2, 30)
        shot(receiving, "34b-link-new-device-receiving-history")
        until(lambda: settings.devices.count() == 2)
        until(settings.history_line.isVisible)
        shot(settings, "34c-settings-devices-sending-history")
        release.set()
        until(lambda: existing.history_label.text().startswith("Done"), 60)
        shot(existing, "34d-link-existing-device-history-sent")
        until(lambda: receiving.history_banner.state == HistoryBanner.ARRIVED, 60)
        shot(receiving, "34e-link-new-device-history-arrived")
        existing.close()
        shot(settings, "35-settings-devices-linked")
        labels = [settings.devices.item(row).text() for row in range(settings.devices.count())]
        desktop_row = next(r for r, text in enumerate(labels) if "desktop" in text)
        settings.devices.setCurrentRow(desktop_row)
        settings.remove_button.click()
        confirm = settings.remove_confirm
        until(confirm.isVisible)
        shot(confirm, "36-remove-device-confirm")
        next(button for button in confirm.buttons() if button.text() == "Remove").click()
        unlinked = desktop.window
        assert unlinked is not None
        until(lambda: unlinked.unlinked, 30)
        unlinked.resize(1100, 720)
        shot(unlinked, "37-device-removed")
    finally:
        release.set()
        # A link left waiting (a step above failed) would keep polling the relay
        # and hold the process at exit: cancel it as closing the dialog does.
        for dialog in dialogs:
            dialog.reject()
        if getattr(window, "settings_dialog", None) is not None:
            window.settings_dialog.close()
        desktop.shutdown()
        if desktop.window is not None:
            desktop.window.close()


def _backup_screens(window: object, work: Path, shot: Any, until: Any, pump: Any) -> bytes:
    """Both backup wizards and the Backups settings tab; returns the key of the
    backup the key wizard wrote to the fake home's Dropbox."""
    from PySide6.QtWidgets import QWizard

    from app.backup.keys import format_key
    from app.ui.backup_wizards import BackupsTab, RestoreWizard, SetupWizard
    from tests.store.conftest import protector

    messenger = window.bridge.client.messenger  # type: ignore[attr-defined]
    home = work / "fake-home"
    (home / "Dropbox").mkdir(parents=True, exist_ok=True)
    (home / "Nextcloud").mkdir(parents=True, exist_ok=True)
    wizard = SetupWizard(messenger.store, messenger.profile, None, home=home)
    wizard.show()
    shot(wizard, "10-backup-method")
    wizard.next()
    shot(wizard, "11-backup-key")
    key = wizard.choices.key
    wizard.next()
    wizard.confirm_page.edit.setText(format_key(key)[:30])
    shot(wizard, "12-backup-confirm")
    wizard.confirm_page.edit.setText(format_key(key))
    wizard.next()
    shot(wizard, "13-backup-folder")
    wizard.next()
    until(lambda: wizard.run_page.done, 60)
    shot(wizard, "14-backup-done")
    wizard.close()
    password = SetupWizard(messenger.store, messenger.profile, None, home=home)
    password.setStartId(SetupWizard.PASSWORD)
    password.show()
    password.restart()
    password.password_page.password.setText("walrus lantern sepia fjord kestrel")
    password.password_page.confirm.setText("walrus lantern sepia fjord kestre")
    shot(password, "15-backup-password")
    password.close()
    tab = BackupsTab(messenger.store, messenger.profile, None)
    tab.resize(520, 320)
    tab.show()
    shot(tab, "16-settings-backups")
    tab.close()
    _split_vault_screens(messenger, work, home, shot, until)
    target = work / "profiles" / "alice-restored"
    restore = RestoreWizard(target, None, protector, home=home)
    restore.show()
    restore.choose_page.folder.set_path(home / "Dropbox")
    shot(restore, "17-restore-choose")
    restore.next()
    restore.secret_page.key_edit.setText("1234 5678 abcd")
    restore.button(QWizard.WizardButton.NextButton).click()
    shot(restore, "18-restore-invalid-key")
    restore.secret_page.key_edit.setText(format_key(key))
    restore.button(QWizard.WizardButton.NextButton).click()
    until(lambda: restore.run_page.done, 60)
    pump(0.5)
    shot(restore, "19-restore-done")
    restore.close()
    return key


def _split_vault_screens(messenger: Any, work: Path, home: Path, shot: Any, until: Any) -> None:
    """The password option and Settings → Backups with the split vault: three
    domains of their own (memory backend, keys in keyholder processes) behind a
    relay that routes /v1/vault/domains/N/ to them."""
    from app.backup import service
    from app.config import ServerConfig, VaultNodeKey
    from app.ui.backup_wizards import BackupsTab, SetupWizard
    from tests.support.components import VaultProcess

    domains = [
        VaultProcess(work / f"domain-{number}", backend="memory", node_name=f"domain-{number}")
        .provision()
        .start()
        for number in (1, 2, 3)
    ]
    relay = RelayProcess(
        work / "split-relay",
        extra_args=[
            arg
            for number, domain in enumerate(domains, 1)
            for arg in ("--vault-domain", f"{number}={domain.url}")
        ],
    ).start()
    try:
        config = ServerConfig(
            relay.url,
            relay.ca_file.read_text(),
            vault_domains=tuple((VaultNodeKey(**d.public_keys()),) for d in domains),
        )
        access = service.VaultAccess(config, messenger.profile)
        wizard = SetupWizard(messenger.store, messenger.profile, access, home=home)
        wizard.method_page.password_radio.setChecked(True)
        wizard.show()
        shot(wizard, "10b-backup-method-split-vault")
        wizard.close()
        service.set_up_with_password(
            messenger.store, access, "walrus lantern sepia fjord kestrel", home / "Nextcloud"
        )
        domains[2].kill()
        tab = BackupsTab(messenger.store, messenger.profile, access)
        tab.resize(560, 420)
        tab.show()
        until(lambda: "not answering" in tab.domains.text(), 30)
        shot(tab, "16b-settings-backups-split-vault")
        tab.close()
    finally:
        relay.stop()
        for domain in domains:
            domain.stop()


def _restore_journey_screens(
    work: Path, relay: RelayProcess, folder: Path, key: bytes, *, shot: Any, until: Any
) -> None:
    """Issue #24's journey: a third profile (alice's new laptop) restores at first
    run, Finish opens the main window, and the history is there. Driven through
    the real Launcher, as `make run` would start it."""
    from PySide6.QtWidgets import QWizard

    from app.backup.keys import format_key
    from app.ui.application import Launcher
    from app.ui.dialogs import OnboardingDialog
    from tests.services.helpers import FAST_KDF, make_profile

    profile = make_profile(work, "alice-new-laptop", relay, sealed=True).path
    launcher = Launcher(profile, kdf=FAST_KDF)
    launcher.start()
    first_run = launcher.dialog
    assert isinstance(first_run, OnboardingDialog)
    shot(first_run, "24-restore-first-run")
    first_run.restore_button.click()
    until(lambda: getattr(launcher, "restore_wizard", None) is not None)
    wizard = launcher.restore_wizard
    until(wizard.isVisible)
    wizard.choose_page.folder.set_path(folder)
    shot(wizard, "25-restore-journey-choose")
    wizard.button(QWizard.WizardButton.NextButton).click()
    secret = wizard.secret_page
    if wizard.protector_factory is None:  # no keyring on the virtual display
        secret.passphrase_edit.setText("new laptop passphrase")
        secret.passphrase_repeat.setText("new laptop passphrase")
    secret.key_edit.setText(format_key(key))
    shot(wizard, "26-restore-journey-secret")
    wizard.button(QWizard.WizardButton.NextButton).click()
    until(lambda: wizard.run_page.done, 60)
    # The last page asks what this computer becomes (issue #19); it stays
    # "as well", so the laptop is not signed out by the screenshots.
    until(wizard.run_page.device_choice.isVisible)
    shot(wizard, "27-restore-journey-done")
    wizard.button(QWizard.WizardButton.FinishButton).click()
    until(lambda: launcher.window is not None, 60)
    window = launcher.window
    assert window is not None
    until(window.isVisible)
    until(lambda: window.conversations.rowCount() >= 2)
    for row in range(window.conversations.rowCount()):
        view = window.conversations.conversation_at(row)
        if view is not None and view.title == "bob":
            window.open_conversation(view.conversation_id)
    until(lambda: window.chat_title.text() == "bob" and window.messages.rowCount() >= 4)
    until(lambda: window.connection_label.text() == "Connected")
    window.resize(1100, 720)
    window.message_view.scrollToBottom()
    shot(window, "28-restored-main-window")
    launcher.shutdown()
    window.close()


if __name__ == "__main__":
    raise SystemExit(main())
