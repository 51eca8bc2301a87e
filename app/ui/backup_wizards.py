"""The two backup wizards: set up backups, and restore from one.

All key derivation, vault round trips and file work run in the thread pool and
report back by signal; the wizard pages only collect choices and show progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QFont, QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from app.backup import engine, service
from app.backup.errors import BackupCancelled, BackupError, InvalidKeyFormat
from app.backup.format import check_key
from app.backup.keys import format_key, generate_backup_key, parse_key
from app.protocol.vault import DEFAULT_ATTEMPT_LIMIT, LockedOut, VaultError, WrongPassword
from app.store import Protector, Store, StoreError
from app.ui.workers import run_in_pool

SCHEDULE_CHOICES = [
    ("Daily", "daily"),
    ("Weekly", "weekly"),
    ("Monthly", "monthly"),
    ("Off", "off"),
]
# The meter's steps (service.password_strength): only the last one is strong enough.
STRENGTH_WORDS = ["very weak", "weak", "still weak", "almost strong enough", "strong enough"]
# Shown once a restore is done: the copy is a device of its own (service.settle_after_restore).
RESTORED_BACKUPS_NOTICE = (
    "Backups are off on this device: the original device's schedule was not carried "
    "over; set up backups to choose a folder of this device's own."
)


class Progress(QObject):
    """Thread-safe progress: workers call `report`, the UI hears `changed`."""

    changed = Signal(int, int)

    def __init__(self) -> None:
        super().__init__()
        self.cancel_requested = False
        self.started = time.monotonic()

    def report(self, done: int, total: int) -> None:
        self.changed.emit(done, total)

    def cancelled(self) -> bool:
        return self.cancel_requested


def human_size(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GB"


def describe_progress(done: int, total: int, seconds: float) -> str:
    speed = done / max(seconds, 1e-3)
    left = (total - done) / speed if speed > 0 and total > done else 0
    return (
        f"{human_size(done)} of {human_size(total)} · {human_size(speed)}/s · "
        f"about {left:,.0f} s left"
    )


class ProgressPanel(QWidget):
    def __init__(self) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.detail = QLabel("")
        self.cancel_button = QPushButton("Cancel")
        layout.addWidget(self.bar)
        layout.addWidget(self.detail)
        layout.addWidget(self.cancel_button, alignment=Qt.AlignmentFlag.AlignLeft)
        self.progress: Progress | None = None
        self.cancel_button.clicked.connect(self._cancel)

    def attach(self) -> Progress:
        self.progress = Progress()
        self.progress.changed.connect(self._changed)
        self.cancel_button.setEnabled(True)
        return self.progress

    def _changed(self, done: int, total: int) -> None:
        self.bar.setValue(int(1000 * done / total) if total else 0)
        if self.progress is not None:
            seconds = time.monotonic() - self.progress.started
            self.detail.setText(describe_progress(done, total, seconds))

    def _cancel(self) -> None:
        if self.progress is not None:
            self.progress.cancel_requested = True
            self.cancel_button.setEnabled(False)


def _error_label() -> QLabel:
    label = QLabel("")
    label.setWordWrap(True)
    label.setStyleSheet("color: #c0392b;")
    label.setObjectName("error")
    return label


class FolderChooser(QWidget):
    """The cloud folders found under the home directory, or any folder."""

    changed = Signal()

    def __init__(self, home: Path | None = None) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setEditable(True)
        for service_name, path in engine.find_cloud_folders(home):
            self.combo.addItem(f"{path}", str(path))
            self.combo.setItemData(
                self.combo.count() - 1, service_name, Qt.ItemDataRole.ToolTipRole
            )
        self.browse = QPushButton("Choose…")
        layout.addWidget(self.combo, 1)
        layout.addWidget(self.browse)
        self.browse.clicked.connect(self._browse)
        self.combo.currentTextChanged.connect(lambda _t: self.changed.emit())

    def _browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Backup folder", self.path_text())
        if chosen:
            self.set_path(Path(chosen))

    def set_path(self, path: Path) -> None:
        self.combo.setEditText(str(path))
        self.changed.emit()

    def path_text(self) -> str:
        return self.combo.currentText().strip()


# ---- set-up wizard --------------------------------------------------------------------


@dataclass
class SetupChoices:
    method: str = service.METHOD_KEY
    key: bytes = b""
    password: str = ""


class MethodPage(QWizardPage):
    def __init__(self, choices: SetupChoices) -> None:
        super().__init__()
        self.choices = choices
        self.setTitle("How should backups be protected?")
        layout = QVBoxLayout(self)
        self.key_radio = QRadioButton("A 64-digit key that I keep safe")
        self.key_radio.setChecked(True)
        key_note = QLabel(
            "You write down or store a 64-digit key. Anyone with the key and the backup "
            "can read it; without the key nobody can — not even us."
        )
        self.password_radio = QRadioButton("A password")
        password_note = QLabel(
            "Your backup key is kept by the Backup Key Vault, which checks your password "
            f"without learning it. After {DEFAULT_ATTEMPT_LIMIT} wrong attempts the vault "
            "erases the key for good."
        )
        for widget in (self.key_radio, key_note, self.password_radio, password_note):
            if isinstance(widget, QLabel):
                widget.setWordWrap(True)
                widget.setIndent(24)
            layout.addWidget(widget)
        layout.addStretch(1)

    def validatePage(self) -> bool:
        self.choices.method = (
            service.METHOD_KEY if self.key_radio.isChecked() else service.METHOD_PASSWORD
        )
        if self.choices.method == service.METHOD_KEY and not self.choices.key:
            self.choices.key = generate_backup_key()
        return True

    def nextId(self) -> int:
        return SetupWizard.KEY if self.key_radio.isChecked() else SetupWizard.PASSWORD


class ShowKeyPage(QWizardPage):
    def __init__(self, choices: SetupChoices) -> None:
        super().__init__()
        self.choices = choices
        self.setTitle("Your backup key")
        self.setSubTitle("Write it down or keep it in a password manager. It is shown only now.")
        layout = QVBoxLayout(self)
        self.key_label = QLabel("")
        font = QFont("monospace")
        font.setStyleHint(QFont.StyleHint.Monospace)
        font.setPointSize(13)
        self.key_label.setFont(font)
        self.key_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.copy_button = QPushButton("Copy")
        layout.addWidget(self.key_label)
        layout.addWidget(self.copy_button, alignment=Qt.AlignmentFlag.AlignLeft)
        layout.addStretch(1)
        self.copy_button.clicked.connect(self._copy)

    def initializePage(self) -> None:
        groups = format_key(self.choices.key).split(" ")
        rows = [" ".join(groups[i : i + 4]) for i in range(0, 16, 4)]
        self.key_label.setText("\n".join(rows))

    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(format_key(self.choices.key))
        self.copy_button.setText("Copied")

    def nextId(self) -> int:
        return SetupWizard.CONFIRM


class ConfirmKeyPage(QWizardPage):
    def __init__(self, choices: SetupChoices) -> None:
        super().__init__()
        self.choices = choices
        self.setTitle("Type your key back")
        self.setSubTitle("So we know you have it. Spaces and dashes do not matter.")
        layout = QVBoxLayout(self)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("64 digits, 0-9 and a-f")
        self.error = _error_label()
        layout.addWidget(self.edit)
        layout.addWidget(self.error)
        layout.addStretch(1)
        self.edit.textChanged.connect(self._changed)

    def _changed(self, text: str) -> None:
        self.error.setText("")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        try:
            return parse_key(self.edit.text()) == self.choices.key
        except InvalidKeyFormat:
            return False

    def validatePage(self) -> bool:
        if not self.isComplete():
            self.error.setText("That is not the key shown on the previous page.")
            return False
        return True

    def nextId(self) -> int:
        return SetupWizard.FOLDER


class PasswordPage(QWizardPage):
    def __init__(self, choices: SetupChoices) -> None:
        super().__init__()
        self.choices = choices
        self.setTitle("Choose a backup password")
        self.setSubTitle(
            f"At least {service.MIN_PASSWORD_LENGTH} characters, and strong enough that someone "
            "holding the vault's data would need a century on 10,000 computers to guess it: "
            f"a few unusual words work best. After {DEFAULT_ATTEMPT_LIMIT} wrong attempts the "
            "key is erased and the backups can no longer be opened with a password."
        )
        form = QFormLayout(self)
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.confirm = QLineEdit()
        self.confirm.setEchoMode(QLineEdit.EchoMode.Password)
        self.meter = QProgressBar()
        self.meter.setRange(0, 4)
        self.meter.setTextVisible(True)
        self.meter.setFormat("too short")
        self.error = _error_label()
        form.addRow("Password", self.password)
        form.addRow("Strength", self.meter)
        form.addRow("Again", self.confirm)
        form.addRow(self.error)
        self.password.textChanged.connect(self._changed)
        self.confirm.textChanged.connect(self._changed)

    def _changed(self) -> None:
        text = self.password.text()
        strength = service.password_strength(text)
        self.meter.setValue(strength)
        too_short = len(text) < service.MIN_PASSWORD_LENGTH
        self.meter.setFormat("too short" if too_short else STRENGTH_WORDS[strength])
        problem = service.password_problem(text)
        if text and problem:
            self.error.setText(problem)
        elif self.confirm.text() and self.confirm.text() != self.password.text():
            self.error.setText("The two passwords differ.")
        else:
            self.error.setText("")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        text = self.password.text()
        return service.password_problem(text) is None and text == self.confirm.text()

    def validatePage(self) -> bool:
        self.choices.password = self.password.text()
        return True

    def nextId(self) -> int:
        return SetupWizard.FOLDER


class FolderPage(QWizardPage):
    def __init__(self, home: Path | None) -> None:
        super().__init__()
        self.setTitle("Where should backups go?")
        self.setSubTitle(
            "Pick your cloud folder (Dropbox, Google Drive, OneDrive, Nextcloud, iCloud) "
            "or any folder. Backups are encrypted before they are written."
        )
        form = QFormLayout(self)
        self.folder = FolderChooser(home)
        self.schedule = QComboBox()
        for label, _value in SCHEDULE_CHOICES:
            self.schedule.addItem(label)
        self.schedule.setCurrentIndex(1)
        self.keep = QSpinBox()
        self.keep.setRange(1, 30)
        self.keep.setValue(2)
        form.addRow("Folder", self.folder)
        form.addRow("Back up", self.schedule)
        form.addRow("Keep the newest", self.keep)
        self.folder.changed.connect(self.completeChanged)

    def isComplete(self) -> bool:
        return bool(self.folder.path_text())

    def nextId(self) -> int:
        return SetupWizard.RUN


class RunPage(QWizardPage):
    """Saves the choices (registering with the vault if needed) and backs up once."""

    def __init__(self, wizard: SetupWizard) -> None:
        super().__init__()
        self.owner = wizard
        self.setTitle("First backup")
        layout = QVBoxLayout(self)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.panel = ProgressPanel()
        self.error = _error_label()
        self.retry = QPushButton("Try again")
        self.retry.hide()
        layout.addWidget(self.status)
        layout.addWidget(self.panel)
        layout.addWidget(self.error)
        layout.addWidget(self.retry, alignment=Qt.AlignmentFlag.AlignLeft)
        layout.addStretch(1)
        self.done = False
        self.result: engine.BackupInfo | None = None
        self.retry.clicked.connect(self._start)

    def initializePage(self) -> None:
        self._start()

    def _start(self) -> None:
        self.retry.hide()
        self.error.setText("")
        self.status.setText("Setting up and writing your first backup…")
        progress = self.panel.attach()
        wizard = self.owner
        choices = wizard.choices
        folder = Path(wizard.folder_page.folder.path_text()).expanduser()
        schedule = SCHEDULE_CHOICES[wizard.folder_page.schedule.currentIndex()][1]
        keep = wizard.folder_page.keep.value()

        def work() -> engine.BackupInfo:
            if choices.method == service.METHOD_KEY:
                service.set_up_with_key(
                    wizard.store, folder, schedule=schedule, keep=keep, key=choices.key
                )
            elif not wizard.registered:
                # Once per wizard run: "Try again" after a failed first backup must
                # not leave a second record in the vault.
                if wizard.access is None:
                    raise BackupError("this profile has no vault configured")
                service.set_up_with_password(
                    wizard.store,
                    wizard.access,
                    choices.password,
                    folder,
                    schedule=schedule,
                    keep=keep,
                )
                wizard.registered = True
            return service.back_up_now(
                wizard.store,
                wizard.profile,
                progress=progress.report,
                cancelled=progress.cancelled,
            )

        run_in_pool(work, self._finished, self._failed)

    def _finished(self, info: engine.BackupInfo) -> None:
        self.result = info
        self.done = True
        self.panel.cancel_button.setEnabled(False)
        self.status.setText(
            f"Backed up: {info.path.name}, {human_size(info.size)}, in {info.path.parent}."
        )
        self.completeChanged.emit()
        self.owner.backup_made.emit(info)

    def _failed(self, error: BaseException) -> None:
        self.status.setText("")
        text = str(error) if isinstance(error, BackupError | VaultError) else repr(error)
        if isinstance(error, BackupCancelled):
            text = "Cancelled. Backups are set up; the next one runs on schedule."
        self.error.setText(text)
        self.retry.show()

    def isComplete(self) -> bool:
        return self.done


class SetupWizard(QWizard):
    METHOD, KEY, CONFIRM, PASSWORD, FOLDER, RUN = range(6)
    backup_made = Signal(object)

    def __init__(
        self,
        store: Store,
        profile: Path,
        access: service.VaultAccess | None,
        *,
        home: Path | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Set up backups")
        self.setMinimumSize(560, 420)
        self.store = store
        self.profile = profile
        self.access = access
        self.choices = SetupChoices()
        self.registered = False
        self.method_page = MethodPage(self.choices)
        self.show_key_page = ShowKeyPage(self.choices)
        self.confirm_page = ConfirmKeyPage(self.choices)
        self.password_page = PasswordPage(self.choices)
        self.folder_page = FolderPage(home)
        self.run_page = RunPage(self)
        for page_id, page in (
            (self.METHOD, self.method_page),
            (self.KEY, self.show_key_page),
            (self.CONFIRM, self.confirm_page),
            (self.PASSWORD, self.password_page),
            (self.FOLDER, self.folder_page),
            (self.RUN, self.run_page),
        ):
            self.setPage(page_id, page)
        self.setStartId(self.METHOD)
        if access is None or not access.config.vault_nodes:
            self.method_page.password_radio.setEnabled(False)
            self.method_page.password_radio.setToolTip("No backup vault is configured.")


# ---- restore wizard -------------------------------------------------------------------


class ChooseBackupPage(QWizardPage):
    def __init__(self, home: Path | None) -> None:
        super().__init__()
        self.setTitle("Choose a backup")
        self.setSubTitle("Pick the folder your backups sync to, then one of the backups in it.")
        layout = QVBoxLayout(self)
        self.folder = FolderChooser(home)
        self.backups = QTreeWidget()
        self.backups.setHeaderLabels(["Date", "Size", "Protected by"])
        self.backups.setRootIsDecorated(False)
        self.empty = QLabel("")
        layout.addWidget(self.folder)
        layout.addWidget(self.backups)
        layout.addWidget(self.empty)
        self.infos: list[engine.BackupInfo] = []
        self.folder.changed.connect(self.refresh)
        self.backups.itemSelectionChanged.connect(self.completeChanged)
        self.refresh()

    def refresh(self) -> None:
        text = self.folder.path_text()
        self.infos = engine.list_backups(Path(text).expanduser()) if text else []
        self.backups.clear()
        for info in self.infos:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created))
            QTreeWidgetItem(self.backups, [stamp, human_size(info.size), info.method])
        for column in range(3):
            self.backups.resizeColumnToContents(column)
        first = self.backups.topLevelItem(0)
        if first is not None:
            self.backups.setCurrentItem(first)
            self.empty.setText("")
        else:
            self.empty.setText("No Cipherline backups in this folder." if text else "")
        self.completeChanged.emit()

    def selected(self) -> engine.BackupInfo | None:
        current = self.backups.currentItem()
        if current is None:
            return None
        row = self.backups.indexOfTopLevelItem(current)
        return self.infos[row] if 0 <= row < len(self.infos) else None

    def isComplete(self) -> bool:
        return self.selected() is not None


class SecretPage(QWizardPage):
    """The key or password; checked (commitment or vault) before moving on."""

    def __init__(self, wizard: RestoreWizard) -> None:
        super().__init__()
        self.owner = wizard
        self.setTitle("Unlock the backup")
        form = QFormLayout(self)
        self.form = form
        self.key_edit = QLineEdit()
        self.key_edit.setPlaceholderText("64 digits, 0-9 and a-f; spaces and dashes are fine")
        self.password_edit = QLineEdit()
        self.password_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.local_note = QLabel("")
        self.local_note.setWordWrap(True)
        self.passphrase_edit = QLineEdit()
        self.passphrase_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase_edit.setPlaceholderText("protects this profile on this computer")
        self.error = _error_label()
        self.key_row = QLabel("Backup key")
        self.password_row = QLabel("Backup password")
        form.addRow(self.key_row, self.key_edit)
        form.addRow(self.password_row, self.password_edit)
        form.addRow(self.local_note)
        form.addRow("Local passphrase", self.passphrase_edit)
        form.addRow(self.error)
        self.key: bytes | None = None
        self._checking = False
        for edit in (self.key_edit, self.password_edit, self.passphrase_edit):
            edit.textChanged.connect(self._edited)

    def initializePage(self) -> None:
        info = self.owner.choose_page.selected()
        assert info is not None
        by_key = info.method == "64-digit key"
        self.form.setRowVisible(self.key_edit, by_key)
        self.form.setRowVisible(self.password_edit, not by_key)
        self.setSubTitle(
            "Type the 64-digit key you kept when you set up backups."
            if by_key
            else "Type your backup password. The vault allows a limited number of attempts."
        )
        needs_passphrase = self.owner.protector_factory is None
        self.form.setRowVisible(self.passphrase_edit, needs_passphrase)
        self.form.setRowVisible(self.local_note, needs_passphrase)
        self.local_note.setText(
            "This computer has no usable keyring, so choose a passphrase to protect the "
            "restored profile."
            if needs_passphrase
            else ""
        )
        self.key = None
        self.error.setText("")

    def _edited(self) -> None:
        self.error.setText("")
        self.key = None
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        if self._checking:
            return False
        info = self.owner.choose_page.selected()
        secret = (
            self.key_edit.text()
            if info and info.method == "64-digit key"
            else (self.password_edit.text())
        )
        if self.owner.protector_factory is None and len(self.passphrase_edit.text()) < 8:
            return False
        return bool(secret.strip())

    def validatePage(self) -> bool:
        if self.key is not None:
            return True
        info = self.owner.choose_page.selected()
        assert info is not None
        if info.method == "64-digit key":
            try:
                key = parse_key(self.key_edit.text())
                header, _length = engine.read_header(info.path)
                check_key(header, key)
            except BackupError as error:
                self.error.setText(str(error).capitalize() + ".")
                return False
            self.key = key
            return True
        self._checking = True
        self.completeChanged.emit()
        self.error.setStyleSheet("")
        self.error.setText("Asking the vault…")
        password = self.password_edit.text()
        access = self.owner.access

        def work() -> bytes:
            if access is None:
                raise BackupError("this profile has no vault configured")
            return service.key_for(info, password=password, access=access)

        run_in_pool(work, self._retrieved, self._refused)
        return False

    def _retrieved(self, key: bytes) -> None:
        self._checking = False
        self.key = key
        self.error.setText("")
        self.completeChanged.emit()
        self.wizard().next()

    def _refused(self, error: BaseException) -> None:
        self._checking = False
        self.error.setStyleSheet("color: #c0392b;")
        if isinstance(error, WrongPassword):
            self.owner.attempts_left = error.attempts_left
            noun = "attempt" if error.attempts_left == 1 else "attempts"
            text = f"That password is not correct. {error.attempts_left} {noun} left."
        elif isinstance(error, LockedOut):
            text = (
                "Too many wrong passwords: the vault has erased the key for good. This "
                "backup can no longer be opened with a password."
            )
        elif isinstance(error, BackupError | VaultError):
            text = str(error)
        else:
            text = repr(error)
        self.error.setText(text)
        self.completeChanged.emit()


class RestoreRunPage(QWizardPage):
    def __init__(self, wizard: RestoreWizard) -> None:
        super().__init__()
        self.owner = wizard
        self.setTitle("Restoring")
        layout = QVBoxLayout(self)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.panel = ProgressPanel()
        self.error = _error_label()
        layout.addWidget(self.status)
        layout.addWidget(self.panel)
        layout.addWidget(self.error)
        layout.addStretch(1)
        self.done = False

    def initializePage(self) -> None:
        info = self.owner.choose_page.selected()
        key = self.owner.secret_page.key
        assert info is not None
        assert key is not None
        progress = self.panel.attach()
        protector = self.owner.make_protector()
        self.status.setText("Decrypting and checking every chunk…")

        def work() -> engine.RestoreReport:
            report = engine.restore_backup(
                info.path,
                key,
                self.owner.profile,
                protector,
                progress=progress.report,
                cancelled=progress.cancelled,
            )
            store = Store.open(self.owner.profile, protector)
            try:
                service.settle_after_restore(store)
            finally:
                store.close()
            return report

        run_in_pool(work, self._finished, self._failed)

    def _finished(self, report: engine.RestoreReport) -> None:
        self.done = True
        self.panel.cancel_button.setEnabled(False)
        messages = report.counts.get("messages", 0)
        chats = report.counts.get("conversations", 0)
        self.status.setText(
            f"Restored {messages:,} messages in {chats:,} chats and {report.files:,} "
            f"attachments.\n\n{RESTORED_BACKUPS_NOTICE}\n\nClick Finish to open Cipherline."
        )
        self.completeChanged.emit()
        self.owner.restored.emit(report)

    def _failed(self, error: BaseException) -> None:
        self.status.setText("Nothing was restored; this profile is unchanged.")
        self.error.setText(str(error) if isinstance(error, BackupError) else repr(error))

    def isComplete(self) -> bool:
        return self.done


class RestoreWizard(QWizard):
    restored = Signal(object)

    def __init__(
        self,
        profile: Path,
        access: service.VaultAccess | None,
        protector_factory: Callable[[], Protector] | None,
        *,
        home: Path | None = None,
        passphrase_protector: Callable[[str], Protector] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Restore from a backup")
        self.setMinimumSize(600, 440)
        self.profile = profile
        self.access = access
        self.protector_factory = protector_factory
        self.passphrase_protector = passphrase_protector
        self.attempts_left: int | None = None
        self.choose_page = ChooseBackupPage(home)
        self.secret_page = SecretPage(self)
        self.run_page = RestoreRunPage(self)
        for page in (self.choose_page, self.secret_page, self.run_page):
            self.addPage(page)

    def make_protector(self) -> Protector:
        if self.protector_factory is not None:
            return self.protector_factory()
        from app.store import PassphraseProtector

        make: Any = self.passphrase_protector or PassphraseProtector
        protector: Protector = make(self.secret_page.passphrase_edit.text())
        return protector


# ---- settings tab -----------------------------------------------------------------------


def vault_access_for(profile: Path) -> service.VaultAccess | None:
    from app.config import SERVER_CONFIG_NAME, ConfigError, ServerConfig

    try:
        config = ServerConfig.load(profile / SERVER_CONFIG_NAME)
    except (ConfigError, OSError):
        return None
    return service.VaultAccess(config, profile) if config.vault_nodes else None


class BackupsTab(QWidget):
    """Settings → Backups: status, set up, back up now, change password, turn off."""

    def __init__(self, store: Store, profile: Path, access: service.VaultAccess | None) -> None:
        super().__init__()
        self.store = store
        self.profile = profile
        self.access = access
        layout = QVBoxLayout(self)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.setup_button = QPushButton("Set up backups…")
        self.now_button = QPushButton("Back up now")
        self.password_button = QPushButton("Change password…")
        self.off_button = QPushButton("Turn off backups…")
        self.panel = ProgressPanel()
        self.panel.hide()
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.status)
        for button in (self.setup_button, self.now_button, self.password_button, self.off_button):
            layout.addWidget(button, alignment=Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.panel)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self.setup_button.clicked.connect(self.open_setup)
        self.now_button.clicked.connect(self.back_up_now)
        self.password_button.clicked.connect(self.change_password)
        self.off_button.clicked.connect(self.turn_off)
        self.wizard: SetupWizard | None = None
        self.refresh()

    def refresh(self) -> None:
        state = self.store.backup_state.get()
        if not state.method:
            self.status.setText("Backups are off. Set them up to keep your history safe.")
        else:
            method = "a 64-digit key" if state.method == service.METHOD_KEY else "a password"
            last = (
                time.strftime("%Y-%m-%d %H:%M", time.localtime(state.last_success))
                if state.last_success
                else "never"
            )
            self.status.setText(
                f"Protected by {method}, {state.schedule}, into {state.folder}.\n"
                f"Last backup: {last}."
            )
        on = bool(state.method)
        self.setup_button.setText("Set up again…" if on else "Set up backups…")
        self.now_button.setEnabled(on)
        self.off_button.setEnabled(on)
        self.password_button.setVisible(state.method == service.METHOD_PASSWORD)

    def open_setup(self) -> None:
        self.wizard = SetupWizard(self.store, self.profile, self.access, parent=self)
        self.wizard.finished.connect(lambda _r: self.refresh())
        self.wizard.show()

    def back_up_now(self) -> None:
        self.panel.show()
        self.now_button.setEnabled(False)
        self.message.setText("")
        progress = self.panel.attach()

        def work() -> engine.BackupInfo:
            return service.back_up_now(
                self.store, self.profile, progress=progress.report, cancelled=progress.cancelled
            )

        def done(info: engine.BackupInfo) -> None:
            self.message.setText(f"Backed up: {info.path.name}, {human_size(info.size)}.")
            self.refresh()

        def failed(error: BaseException) -> None:
            self.message.setText(str(error) if isinstance(error, BackupError) else repr(error))
            self.refresh()

        run_in_pool(work, done, failed)

    def _ask(self, title: str, label: str) -> str | None:
        from PySide6.QtWidgets import QInputDialog

        text, ok = QInputDialog.getText(self, title, label, QLineEdit.EchoMode.Password)
        return text if ok else None

    def change_password(self) -> None:
        old = self._ask("Change backup password", "Current backup password:")
        new = old is not None and self._ask("Change backup password", "New backup password:")
        if not old or not new or self.access is None:
            return
        access = self.access
        run_in_pool(
            lambda: service.change_password(self.store, access, old, new),
            lambda _r: self.message.setText("Password changed. Existing backups use it too."),
            lambda error: self.message.setText(str(error)),
        )

    def turn_off(self) -> None:
        from PySide6.QtWidgets import QMessageBox

        state = self.store.backup_state.get()
        warning = (
            "The vault will forget your backup key, so existing backups can no longer be "
            "opened — unless you also kept a 64-digit key for them."
            if state.method == service.METHOD_PASSWORD
            else "Existing backups stay readable with the 64-digit key you kept."
        )
        answer = QMessageBox.warning(
            self,
            "Turn off backups",
            f"Turn off backups?\n\n{warning}",
            QMessageBox.StandardButton.Cancel | QMessageBox.StandardButton.Ok,
        )
        if answer != QMessageBox.StandardButton.Ok:
            return
        password = None
        if state.method == service.METHOD_PASSWORD:
            password = self._ask("Turn off backups", "Backup password:")
            if password is None:
                return
        access = self.access

        def done(_result: object) -> None:
            self.message.setText("Backups are off.")
            self.refresh()

        run_in_pool(
            lambda: service.turn_off(self.store, access, password),
            done,
            lambda error: self.message.setText(str(error)),
        )


class BackupScheduler(QObject):
    """Runs due backups in the background while the app is open."""

    finished = Signal(object)

    def __init__(self, store: Store, profile: Path, interval_ms: int = 15 * 60_000) -> None:
        super().__init__()
        from PySide6.QtCore import QTimer

        self.store = store
        self.profile = profile
        self.running = False
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.check)
        self.timer.start()
        # The first look shortly after start, on a timer we own so stop() cancels it.
        self.first = QTimer(self)
        self.first.setSingleShot(True)
        self.first.setInterval(30_000)
        self.first.timeout.connect(self.check)
        self.first.start()
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        self.timer.stop()
        self.first.stop()

    def check(self) -> None:
        if self.stopped or self.running:
            return
        try:
            due = service.is_due(self.store)
        except StoreError:
            # The profile was closed under us (the app is shutting down).
            self.stop()
            return
        if not due:
            return
        self.running = True

        def done(result: object) -> None:
            self.running = False
            self.finished.emit(result)

        run_in_pool(lambda: service.back_up_now(self.store, self.profile), done, done)
