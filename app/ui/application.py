"""Start the Qt application for one profile: unlock or onboard, then the main window."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from app.backup.errors import BackupError, InvalidKeyFormat
from app.config import SERVER_CONFIG_NAME, ConfigError, account_name, save_account_name
from app.protocol.vault import LockedOut, VaultError, WrongPassword
from app.services.account import Profile, create_account, open_messenger, protector_for
from app.services.client import Client
from app.services.messenger import Messenger
from app.store import Store, StoreError, WrongPassphrase, keyring_usable
from app.store.keyfile import (
    KeyringKeyLost,
    RecoveredKey,
    WrongRecoveryKey,
    keyring_problem,
    read_recovery,
)
from app.ui.bridge import ClientBridge
from app.ui.dialogs import (
    AccountRequest,
    KeyringLostDialog,
    OnboardingDialog,
    RecoveryRequest,
    UnlockDialog,
)
from app.ui.garbage import GuiThreadCollector, collect_on_gui_thread
from app.ui.main_window import MainWindow
from app.ui.tray import TrayController
from app.ui.workers import run_in_pool

if TYPE_CHECKING:
    from app.ui.linking import LinkApproval, LinkNewDeviceDialog

RESOURCES = Path(__file__).resolve().parent / "resources"
log = logging.getLogger("cipherline.ui")


def app_icon() -> QIcon:
    icon = QIcon(str(RESOURCES / "cipherline.svg"))
    for size in (48, 64, 128, 256):
        icon.addFile(str(RESOURCES / f"cipherline-{size}.png"))
    return icon


class Launcher(QObject):
    """Walks a profile from "nothing" or "locked" to an open main window."""

    ready = Signal(object)  # MainWindow

    def __init__(self, profile_path: Path, *, kdf: object = None) -> None:
        super().__init__()
        self.profile_path = profile_path
        self.window: MainWindow | None = None
        self.client: Client | None = None
        self.dialog: QWidget | None = None
        self.tray: TrayController | None = None
        self.link_dialog: LinkNewDeviceDialog | None = None
        self._kdf = kdf

    def start(self) -> None:
        try:
            self.profile = Profile.load(self.profile_path)
        except ConfigError as error:
            QMessageBox.critical(
                None,
                "Cipherline",
                f"{error}.\n\nStart Cipherline with `make run`, or pass --server-config.",
            )
            QApplication.quit()
            return
        if not Store.exists(self.profile_path):
            self._onboard()
        elif Store.key_method(self.profile_path) == "passphrase":
            self._ask_passphrase()
        else:
            self._open(None)

    # ---- first run --------------------------------------------------------------
    def _onboard(self) -> None:
        problem = keyring_problem()
        dialog = OnboardingDialog(
            self.profile.config.relay_url,
            socket.gethostname(),
            keyring_available=problem is None,
            keyring_problem=problem,
        )
        dialog.relay_edit.setReadOnly(True)
        dialog.relay_edit.setToolTip("The relay comes from this profile's server config.")
        dialog.create_requested.connect(self._create)
        dialog.link_requested.connect(lambda: self._link(problem))
        dialog.restore_requested.connect(self._restore)
        self.dialog = dialog
        dialog.show()

    def _create(self, request: AccountRequest) -> None:
        assert isinstance(self.dialog, OnboardingDialog)
        dialog = self.dialog
        kdf = self._kdf

        def work() -> Messenger:
            if kdf is not None:
                messenger = create_account(
                    self.profile,
                    request.username,
                    request.device_name,
                    request.passphrase,
                    kdf=kdf,  # type: ignore[arg-type]
                )
            else:
                messenger = create_account(
                    self.profile, request.username, request.device_name, request.passphrase
                )
            self._after_open(messenger)
            return messenger

        run_in_pool(work, self._opened, lambda error: dialog.show_error(str(error)))

    def _link(self, keyring_problem: str | None) -> None:
        """The first-run screen's "Link to an existing account": the linking dialog
        over that screen, which stays up behind it (so closing the dialog goes back
        to it, and some window is always shown until the main window opens)."""
        # Deferred like the wizards: zxing-cpp and the dialogs load on first use.
        from app.ui.linking import LinkNewDeviceDialog

        dialog = LinkNewDeviceDialog(
            self.profile,
            socket.gethostname(),
            keyring_available=keyring_problem is None,
            keyring_problem=keyring_problem,
            parent=self.dialog,
        )
        dialog.approved.connect(self._finish_link)
        self.link_dialog = dialog
        dialog.open()

    def _finish_link(self, approval: LinkApproval) -> None:
        """The other computer approved: the profile is made from what it sent, on a
        worker, then opened exactly as after "Create account"."""
        dialog = self.link_dialog
        assert dialog is not None
        kdf = self._kdf

        def work() -> Messenger:
            if kdf is not None:
                messenger = approval.linking.finish(approval.passphrase, kdf=kdf)  # type: ignore[arg-type]
            else:
                messenger = approval.linking.finish(approval.passphrase)
            self._after_open(messenger)
            return messenger

        def opened(messenger: Messenger) -> None:
            dialog.mark_linked()
            self._opened(messenger)
            if approval.linking.history_offered and self.window is not None:
                # The other computer sends its history next (issue #19).
                self.window.expect_history()
            dialog.close()

        def failed(error: BaseException) -> None:
            # Nothing was made (create_linked_account is all or nothing).
            dialog.show_failure(error)

        run_in_pool(work, opened, failed)

    def _restore(self) -> None:
        from app.store import KeyringProtector
        from app.ui.backup_wizards import RestoreWizard, vault_access_for

        use_keyring = keyring_usable()
        profile = self.profile_path
        wizard = RestoreWizard(
            profile,
            vault_access_for(profile),
            (lambda: KeyringProtector(account=str(profile))) if use_keyring else None,
            # The restored profile talks to the relay this launcher was started with.
            server_config=self.profile.config,
        )

        def finished(result: int) -> None:
            if not Store.exists(profile):
                return
            # The wizard has just closed itself. The first-run screen stays up (and
            # inert) until `_opened` shows the main window: with no window visible
            # while the profile opens, Qt's quit-on-last-window rule would end the
            # app, and the opening worker would report to objects being torn down.
            if self.dialog is not None:
                self.dialog.setEnabled(False)
            passphrase = None if use_keyring else wizard.secret_page.passphrase_edit.text()
            # What this computer becomes (issue #19): another device of the
            # account, or the original's replacement; settled as it opens.
            self._open(passphrase, take_over=wizard.run_page.takes_over())

        wizard.finished.connect(finished)
        self.restore_wizard = wizard
        wizard.show()

    # ---- unlock -----------------------------------------------------------------
    def _ask_passphrase(self) -> None:
        dialog = UnlockDialog(account_name(self.profile_path), self.profile_path.name)
        dialog.unlock_requested.connect(self._open)
        self.dialog = dialog
        dialog.show()

    def _after_open(self, messenger: Messenger) -> None:
        """Bookkeeping once a store is open, on the worker that opened it: the
        username for the next unlock screen, and the recovery wrapping brought in
        line with the backup settings (profiles whose backups were set up before
        it existed get theirs here). Neither may keep the profile from opening."""
        from app.backup import service

        try:
            save_account_name(self.profile_path, messenger.username)
        except OSError as error:
            log.warning("could not record the account name: %s", error)
        try:
            service.keep_recovery_current(messenger.store)
        except (OSError, StoreError) as error:
            # Only the error's text: nothing in it is key material.
            log.warning("could not update the store's recovery file: %s", error)

    def _open(self, passphrase: str | None, *, take_over: bool | None = None) -> None:
        def work() -> Messenger:
            messenger = open_messenger(self.profile, passphrase, take_over=take_over)
            self._after_open(messenger)
            return messenger

        def failed(error: BaseException) -> None:
            if isinstance(error, KeyringKeyLost):
                self._keyring_lost(error)
            elif isinstance(self.dialog, UnlockDialog | KeyringLostDialog):
                text = (
                    str(error) if isinstance(error, WrongPassphrase | StoreError) else repr(error)
                )
                self.dialog.show_error(text)
            else:
                QMessageBox.critical(None, "Cipherline", f"Cannot open this profile: {error}")
                QApplication.quit()

        run_in_pool(work, self._opened, failed)

    # ---- the keyring entry is gone --------------------------------------------------
    def _keyring_lost(self, error: KeyringKeyLost) -> None:
        if isinstance(self.dialog, KeyringLostDialog):
            # "Try again" found no key either; the screen stays as it is.
            self.dialog.show_error(
                "Still no usable key in the system keyring"
                + ("." if error.reason == KeyringKeyLost.MISSING else f": {error}.")
            )
            return
        recovery_problem: str | None = None
        try:
            recovery = read_recovery(self.profile_path)
        except StoreError as damaged:
            recovery, recovery_problem = None, str(damaged)
        dialog = KeyringLostDialog(
            account_name(self.profile_path),
            error.reason,
            recovery_method=recovery.method if recovery is not None else None,
            profile_path=self.profile_path,
            keyring_problem=keyring_problem(),
            recovery_problem=recovery_problem,
        )
        dialog.recover_requested.connect(self._recover)
        dialog.retry_requested.connect(lambda: self._open(None))
        previous, self.dialog = self.dialog, dialog
        dialog.show()
        if previous is not None:
            previous.close()

    def _recover(self, request: RecoveryRequest) -> None:
        """Opens the store through `store.recovery` with the backup key (typed, or
        from the vault for the backup password, as a restore gets it), then wraps
        its key again: in the system keyring, or under a new passphrase."""
        from app.backup.keys import parse_key
        from app.ui.backup_wizards import vault_access_for

        profile = self.profile_path
        access = vault_access_for(profile) if request.by_password else None
        kdf = self._kdf

        def work() -> Messenger:
            recovery = read_recovery(profile)
            if recovery is None:
                raise StoreError("this profile has no recovery file; nothing was changed")
            if request.by_password:
                if access is None:
                    raise BackupError("this profile has no vault configured")
                backup_key = access.retrieve(recovery.vault_record_id, request.secret)
            else:
                backup_key = parse_key(request.secret)
            recovered = RecoveredKey(recovery.open(backup_key))
            # Opened first, so the recovered key is proven on the database itself
            # before the key file is rewritten: until then nothing is changed.
            store = Store.open(profile, recovered)
            try:
                if kdf is not None and request.passphrase is not None:
                    protector = protector_for(profile, request.passphrase, kdf)  # type: ignore[arg-type]
                else:
                    protector = protector_for(profile, request.passphrase)
                Store.change_protection(profile, recovered, protector)
                messenger = Messenger(store, profile)
            except BaseException:
                store.close()
                raise
            self._after_open(messenger)
            return messenger

        run_in_pool(work, self._opened, self._recovery_failed)

    def _recovery_failed(self, error: BaseException) -> None:
        dialog = self.dialog
        if not isinstance(dialog, KeyringLostDialog):
            return
        if isinstance(error, InvalidKeyFormat):
            text = str(error)[:1].upper() + str(error)[1:] + "."
        elif isinstance(error, WrongRecoveryKey):
            text = (
                "The vault's key for that password does not open this profile; nothing was changed."
                if dialog.recovery_method == "password"
                else "That backup key does not open this profile; nothing was changed."
            )
        elif isinstance(error, WrongPassword):
            noun = "attempt" if error.attempts_left == 1 else "attempts"
            text = f"That password is not correct. {error.attempts_left} {noun} left."
        elif isinstance(error, LockedOut):
            text = (
                "Too many wrong passwords: the vault has erased the backup key for good, so "
                "it can no longer be fetched with a password."
            )
        elif isinstance(error, BackupError | VaultError | StoreError):
            text = str(error)[:1].upper() + str(error)[1:]
        else:
            text = repr(error)
        dialog.show_error(text)

    # ---- running ----------------------------------------------------------------
    def _opened(self, messenger: Messenger) -> None:
        self.client = Client(messenger, self.profile.relay(timeout=5))
        bridge = ClientBridge(self.client)
        window = MainWindow(bridge, profile_name=f"{messenger.username}")
        window.setWindowIcon(app_icon())
        self.window = window
        self.tray = TrayController(window, bridge, app_icon())
        from app.ui.backup_wizards import BackupScheduler

        self.scheduler = BackupScheduler(messenger.store, messenger.profile)
        window.tray = self.tray
        window.device_unlinked.connect(self._unlinked)
        self.client.start()
        # The window shows before the dialog closes, so there is always a window
        # and the last-window rule cannot quit the app in between.
        window.show()
        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None
        self._offer_split_vault(messenger, window)
        self.ready.emit(window)

    @staticmethod
    def _offer_split_vault(messenger: Messenger, window: MainWindow) -> None:
        """At unlock: a password backup still in the single vault is offered the move
        to the split vault; one already there has any domain that lost its part
        re-shared, in the background (docs/vault-protocol.md, "The split vault")."""
        import shiboken6

        from app.backup import service
        from app.ui.backup_wizards import vault_access_for

        access = vault_access_for(messenger.profile)
        store = messenger.store
        try:
            due = service.split_vault_move_due(store, access)
        except StoreError as error:
            log.warning("could not check the backup vault: %s", error)
            return
        if due:
            window.show_note(
                "Your backup password can now be kept by three independent vaults instead "
                "of one: Settings → Backups → “Move my password to the split vault…”.",
                timeout_ms=20_000,
            )
            return

        def repaired(domains: frozenset[int]) -> None:
            if domains and shiboken6.isValid(window):
                numbers = " and ".join(str(number) for number in sorted(domains))
                window.show_note(
                    f"Vault {numbers} had lost its part of your backup key; it has it again.",
                    timeout_ms=10_000,
                )

        def failed(error: BaseException) -> None:
            # Tried again at the next unlock; nothing is lost meanwhile.
            log.info("split vault repair did not run: %s", type(error).__name__)

        run_in_pool(lambda: service.repair_split_vault(store, access), repaired, failed)

    def _unlinked(self, _reason: str) -> None:
        """Another device removed this one: the profile is closed (its client
        stopped, its store closed, no more backups) while the window says why.
        Stopping waits for the client's threads, so it runs on a worker."""
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.stop()
        client, self.client = self.client, None
        if client is not None:
            run_in_pool(client.stop, lambda _none: None, self._stop_failed)

    @staticmethod
    def _stop_failed(error: BaseException) -> None:
        log.warning("closing the removed device's profile: %s", type(error).__name__)

    def shutdown(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.stop()
        if self.client is not None:
            self.client.stop()
            self.client = None


def _exit_after_first_paint(application: QApplication, launcher: Launcher) -> None:
    """For the cold-start benchmark: report once the first window has painted, then quit."""
    timer = QTimer(application)
    timer.setInterval(2)

    def check() -> None:
        shown = launcher.window or launcher.dialog
        if shown is not None and shown.isVisible():
            shown.repaint()
            print("first-paint", flush=True)
            timer.stop()
            application.quit()

    timer.timeout.connect(check)
    timer.start()


def configure_application(application: QApplication) -> None:
    """Names, icon and the quit rule: the app ends when its last window closes;
    and Python's cyclic garbage is collected on the GUI thread only (app/ui/garbage.py)."""
    application.setApplicationName("Cipherline")
    application.setDesktopFileName("cipherline")
    application.setWindowIcon(app_icon())
    application.setQuitOnLastWindowClosed(True)
    if application.findChild(GuiThreadCollector) is None:
        collect_on_gui_thread(application)


def launch(application: QApplication, profile: Path, *, kdf: object = None) -> Launcher:
    """A launcher for `profile` that starts once the event loop runs and shuts the
    client down when the application quits."""
    launcher = Launcher(profile, kdf=kdf)
    QTimer.singleShot(0, launcher.start)
    application.aboutToQuit.connect(launcher.shutdown)
    return launcher


def run_gui(profile: Path) -> int:
    application = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(application, QApplication)
    configure_application(application)
    if not (profile / SERVER_CONFIG_NAME).exists():
        QMessageBox.critical(
            None, "Cipherline", "This profile has no server config; start it with `make run`."
        )
        return 2
    launcher = launch(application, profile)
    if os.environ.get("CIPHERLINE_EXIT_AFTER_FIRST_PAINT") == "1":
        _exit_after_first_paint(application, launcher)
    return application.exec()
