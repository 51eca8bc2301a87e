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

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QFont, QGuiApplication, QKeyEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
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

from app.backup import engine, service, snapshots
from app.backup import format as fmt
from app.backup.errors import BackupCancelled, BackupError, InvalidKeyFormat
from app.backup.keys import format_key, generate_backup_key, parse_key
from app.config import ServerConfig
from app.protocol import vault_split as split_vault
from app.protocol.vault import DEFAULT_ATTEMPT_LIMIT, LockedOut, VaultError, WrongPassword
from app.sizes import format_size
from app.store import BackupState, Protector, Store, StoreError
from app.ui.widgets import sentence
from app.ui.workers import run_in_pool

SCHEDULE_CHOICES = [
    ("Daily", "daily"),
    ("Weekly", "weekly"),
    ("Monthly", "monthly"),
    ("Off", "off"),
]
# The meter's steps (service.password_strength): only the last one is strong enough.
STRENGTH_WORDS = ["Very weak", "Weak", "Still weak", "Almost strong enough", "Strong enough"]
TOO_SHORT = "Too short"
# Red to green; the last step alone is green because only it passes the rule.
STRENGTH_COLOURS = ["#c0392b", "#d35400", "#e67e22", "#d4ac0d", "#1e8449"]
# The store's own floor for a local passphrase (the first-run dialog asks the same).
MIN_PASSPHRASE_LENGTH = 8
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


def describe_seconds(seconds: float) -> str:
    """A duration as people say it: "4 s", "2 min 5 s", "1 h 3 min"."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    return f"{hours} h {rest // 60} min" if rest >= 60 else f"{hours} h"


def describe_progress(done: int, total: int, seconds: float) -> str:
    """The line under a running backup or restore."""
    speed = done / max(seconds, 1e-3)
    text = f"{format_size(done)} of {format_size(total)} · {format_size(speed)}/s"
    if speed > 0 and total > done:
        text += f" · about {describe_seconds((total - done) / speed)} left"
    return text


def describe_done(size: int, seconds: float) -> str:
    """The line once it is over: no speed and no time left, which read as still running."""
    # "in 0 s" reads as nothing happened: short runs get a tenth of a second.
    took = f"{seconds:.1f} s" if seconds < 10 else describe_seconds(seconds)
    return f"Done — {format_size(size)} in {took}."


class ProgressPanel(QWidget):
    """A bar, a line of detail and a button that stops the work in progress."""

    def __init__(self, stop_text: str = "Stop") -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setAccessibleName("Progress")
        self.detail = QLabel("")
        # Not "Cancel": the wizards have a Cancel of their own, which closes them.
        self.cancel_button = QPushButton(stop_text)
        layout.addWidget(self.bar)
        layout.addWidget(self.detail)
        layout.addWidget(self.cancel_button, alignment=Qt.AlignmentFlag.AlignLeft)
        self.progress: Progress | None = None
        self._total = 0
        self.finished = False
        self.cancel_button.clicked.connect(self._cancel)

    def attach(self) -> Progress:
        self.progress = Progress()
        self.progress.changed.connect(self._changed)
        self._total = 0
        self.finished = False
        self.bar.setValue(0)
        self.detail.setText("")
        self.cancel_button.setEnabled(True)
        self.cancel_button.show()
        return self.progress

    def _changed(self, done: int, total: int) -> None:
        if self.progress is None or self.finished:
            return  # a late report must not bring back "about 0 s left"
        self._total = total
        self.bar.setValue(int(1000 * done / total) if total else 0)
        seconds = time.monotonic() - self.progress.started
        self.detail.setText(describe_progress(done, total, seconds))

    def finish(self, size: int | None = None) -> None:
        """Full bar, "Done — 1.2 MiB in 3 s", and nothing left to stop."""
        started = self.progress.started if self.progress is not None else time.monotonic()
        self.finished = True
        self.bar.setValue(self.bar.maximum())
        self.detail.setText(
            describe_done(self._total if size is None else size, time.monotonic() - started)
        )
        self.cancel_button.hide()

    def _cancel(self) -> None:
        if self.progress is not None:
            self.progress.cancel_requested = True
            self.cancel_button.setEnabled(False)


class StrengthMeter(QWidget):
    """A thin coloured bar and the word for it ("Strong enough").

    A full-height QProgressBar with its text inside read as an empty text box;
    this one is a few pixels high, so it reads as a gauge, and the word beside
    it says what the colour means."""

    def __init__(self) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.bar = QProgressBar()
        self.bar.setRange(0, 4)
        self.bar.setTextVisible(False)
        self.bar.setFixedHeight(8)
        self.bar.setAccessibleName("Password strength")
        self.label = QLabel(TOO_SHORT)
        self.label.setMinimumWidth(self.label.fontMetrics().horizontalAdvance(STRENGTH_WORDS[3]))
        layout.addWidget(self.bar, 1)
        layout.addWidget(self.label)
        self.set_strength(0, too_short=True)

    def set_strength(self, strength: int, *, too_short: bool) -> None:
        self.bar.setValue(0 if too_short else strength)
        word = TOO_SHORT if too_short else STRENGTH_WORDS[strength]
        colour = STRENGTH_COLOURS[0 if too_short else strength]
        self.label.setText(word)
        self.label.setStyleSheet(f"color: {colour}; font-weight: bold;")
        self.bar.setStyleSheet(
            f"QProgressBar {{ border: none; border-radius: 4px; background: palette(mid); }}"
            f"QProgressBar::chunk {{ border-radius: 4px; background: {colour}; }}"
        )
        self.bar.setAccessibleDescription(word)

    def value(self) -> int:
        return self.bar.value()

    def text(self) -> str:
        return self.label.text()


def _error_label() -> QLabel:
    label = QLabel("")
    label.setWordWrap(True)
    label.setStyleSheet("color: #c0392b;")
    label.setObjectName("error")
    return label


def describe_error(error: BaseException) -> str:
    """An error from a worker as a sentence for the page it failed on."""
    if isinstance(error, BackupError | VaultError):
        return sentence(str(error))
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return sentence(f"{error.strerror}{where}")
    return sentence(f"Something went wrong ({type(error).__name__}: {error})")


class FolderChooser(QWidget):
    """The cloud folders found under the home directory, or any folder.

    Return in the folder box settles the typed path (and so lists or checks it)
    instead of reaching the wizard's default button: someone who typed a path and
    pressed Return expects to see that folder, not to be moved on with whatever
    backup happened to be selected."""

    changed = Signal()
    return_pressed = Signal()

    def __init__(self, home: Path | None = None) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setAccessibleName("Backup folder")
        # Typed paths are not added to the list of cloud folders.
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        for service_name, path in engine.find_cloud_folders(home):
            self.combo.addItem(f"{path}", str(path))
            self.combo.setItemData(
                self.combo.count() - 1, service_name, Qt.ItemDataRole.ToolTipRole
            )
        self.browse = QPushButton("Choose…")
        self.browse.setAccessibleName("Choose a folder")
        self.browse.setToolTip("Choose the backup folder in a file dialog")
        layout.addWidget(self.combo, 1)
        layout.addWidget(self.browse)
        self.browse.clicked.connect(self._browse)
        self.combo.currentTextChanged.connect(lambda _t: self.changed.emit())
        self.combo.installEventFilter(self)
        line = self.combo.lineEdit()
        if line is not None:
            line.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (
            event.type() == QEvent.Type.KeyPress
            and isinstance(event, QKeyEvent)
            and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        ):
            # Consumed here, so neither the combo nor the dialog sees it.
            text = self.path_text()
            if text:
                self.set_path(Path(text).expanduser())
            self.return_pressed.emit()
            return True
        return super().eventFilter(watched, event)

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


def vault_note(*, split: bool) -> str:
    """What the password option means, in plain words, for the vault in use."""
    if split:
        guesses = split_vault.guess_bound(split_vault.DEFAULT_SPLIT_LIMIT, 0)
        return (
            "Your backup key is split between three independent vaults on different "
            "hardware: any two of them can give it back to you, and no single one can "
            f"read it or test your password. After {guesses} wrong attempts it is erased "
            "for good."
        )
    return (
        "Your backup key is kept by the Backup Key Vault, which checks your password "
        f"without learning it. After {DEFAULT_ATTEMPT_LIMIT} wrong attempts the vault "
        "erases the key for good."
    )


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
        self.password_note = password_note = QLabel(vault_note(split=False))
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
        self.key_label.setAccessibleName("Your backup key")
        self.copy_button = QPushButton("Copy key")
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
        self.edit.setAccessibleName("Backup key")
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
        # The wizard's subtitle does not wrap past two lines; the rules go in a label.
        rules = QLabel(
            f"At least {service.MIN_PASSWORD_LENGTH} characters, and strong enough that someone "
            "holding the vault's data would need a century on 10,000 computers to guess it: "
            f"a few unusual words work best. After {DEFAULT_ATTEMPT_LIMIT} wrong attempts the "
            "key is erased and the backups can no longer be opened with a password."
        )
        rules.setWordWrap(True)
        form = QFormLayout(self)
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.password.setAccessibleName("Backup password")
        self.confirm = QLineEdit()
        self.confirm.setEchoMode(QLineEdit.EchoMode.Password)
        self.confirm.setAccessibleName("Repeat the backup password")
        self.meter = StrengthMeter()
        self.error = _error_label()
        form.addRow(rules)
        form.addRow("Password", self.password)
        form.addRow("Strength", self.meter)
        form.addRow("Repeat", self.confirm)
        form.addRow(self.error)
        self.password.textChanged.connect(self._changed)
        self.confirm.textChanged.connect(self._changed)

    def _changed(self) -> None:
        text = self.password.text()
        strength = service.password_strength(text)
        self.meter.set_strength(strength, too_short=len(text) < service.MIN_PASSWORD_LENGTH)
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


def existing_backups_note(backups: list[engine.BackupInfo], keep: int) -> str:
    """One sentence on what becomes of the backups already in the chosen folder.

    Setting up again makes a new key (or a new vault record for a password), so
    the backups already there keep needing what they were made with; the newest
    `keep` backups of any kind are kept (engine.prune), so new ones replace them."""
    if not backups:
        return ""
    methods = {info.method for info in backups}
    key_name = fmt.METHOD_NAMES[fmt.METHOD_KEY]
    which = "it was" if len(backups) == 1 else "they were"
    if methods == {key_name}:
        made_with, opens_with = "a 64-digit key", "that earlier key"
    elif key_name not in methods:
        made_with, opens_with = "a password", f"the password {which} made with"
    else:
        made_with, opens_with = "a key or a password", f"the key or password {which} made with"
    if len(backups) == 1:
        return (
            f"This folder already holds a backup made with {made_with}: it still opens "
            f"only with {opens_with}, and is deleted as new backups take its place "
            f"(Cipherline keeps the newest {keep})."
        )
    return (
        f"This folder already holds {len(backups)} backups made with {made_with}: they "
        f"still open only with {opens_with}, and are deleted as new backups take their "
        f"place (Cipherline keeps the newest {keep})."
    )


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
        self.schedule.setAccessibleName("How often to back up")
        for label, _value in SCHEDULE_CHOICES:
            self.schedule.addItem(label)
        self.schedule.setCurrentIndex(1)
        self.keep = QSpinBox()
        self.keep.setRange(1, 30)
        self.keep.setValue(2)
        self.keep.setAccessibleName("How many backups to keep")
        self.existing = QLabel("")
        self.existing.setWordWrap(True)
        self.existing.setStyleSheet("color: #8a5a00;")
        form.addRow("Folder", self.folder)
        form.addRow("Back up", self.schedule)
        form.addRow("Keep the newest", self.keep)
        form.addRow(self.existing)
        self.folder.changed.connect(self.completeChanged)
        self.folder.changed.connect(self._describe_existing)
        self.keep.valueChanged.connect(self._describe_existing)

    def prefill(self, state: BackupState) -> None:
        """The choices of an earlier set-up ("Set up again…"), so only what
        changes needs changing."""
        if state.folder:
            self.folder.set_path(Path(state.folder))
        schedules = [value for _label, value in SCHEDULE_CHOICES]
        if state.schedule in schedules and state.method:
            self.schedule.setCurrentIndex(schedules.index(state.schedule))
        if state.keep:
            self.keep.setValue(state.keep)

    def initializePage(self) -> None:
        self._describe_existing()

    def _describe_existing(self) -> None:
        text = self.folder.path_text()
        backups = engine.list_backups(Path(text).expanduser()) if text else []
        self.existing.setText(existing_backups_note(backups, self.keep.value()))

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
        self.panel = ProgressPanel("Stop backing up")
        self.error = _error_label()
        self.retry = QPushButton("Try again")
        self.retry.hide()
        layout.addWidget(self.status)
        layout.addWidget(self.panel)
        layout.addWidget(self.error)
        layout.addWidget(self.retry, alignment=Qt.AlignmentFlag.AlignLeft)
        layout.addStretch(1)
        self.done = False
        self.running = False
        self.result: engine.BackupInfo | None = None
        self.retry.clicked.connect(self._start)

    def initializePage(self) -> None:
        self._start()

    def _start(self) -> None:
        if self.running or self.done:
            # Back and Next again while it runs: one backup at a time.
            return
        self.running = True
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
        self.running = False
        self.done = True
        self.panel.finish(info.size)
        self.status.setText(
            f"Backed up: {info.path.name}, {format_size(info.size)}, in {info.path.parent}."
        )
        finish_only(self.owner)
        self.completeChanged.emit()
        self.owner.backup_made.emit(info)

    def _failed(self, error: BaseException) -> None:
        self.running = False
        self.status.setText("")
        text = describe_error(error)
        if isinstance(error, BackupCancelled):
            text = "Stopped. Backups are set up; the next one runs on schedule."
        self.error.setText(text)
        self.retry.show()

    def isComplete(self) -> bool:
        return self.done


def finish_only(wizard: QWizard) -> None:
    """Once the work is done there is nothing to go back to or cancel: Back and
    Cancel would only suggest the backup or restore could still be undone."""
    wizard.setButtonLayout([QWizard.WizardButton.Stretch, QWizard.WizardButton.FinishButton])


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
        if access is None or not access.configured:
            self.method_page.password_radio.setEnabled(False)
            self.method_page.password_radio.setToolTip("No backup vault is configured.")
        else:
            self.method_page.password_note.setText(vault_note(split=access.split))
        # "Set up again…" starts from the earlier choices rather than from scratch.
        previous = store.backup_state.get()
        self.folder_page.prefill(previous)
        if (
            previous.method == service.METHOD_PASSWORD
            and self.method_page.password_radio.isEnabled()
        ):
            self.method_page.password_radio.setChecked(True)


# ---- restore wizard -------------------------------------------------------------------


class ChooseBackupPage(QWizardPage):
    def __init__(self, home: Path | None) -> None:
        super().__init__()
        self.setTitle("Choose a backup")
        self.setSubTitle("Pick the folder your backups sync to, then one of the backups in it.")
        layout = QVBoxLayout(self)
        self.folder = FolderChooser(home)
        self.backups = QTreeWidget()
        self.backups.setAccessibleName("Backups in this folder")
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
            QTreeWidgetItem(self.backups, [stamp, format_size(info.size), info.method])
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
        self.key_edit.setAccessibleName("Backup key")
        self.password_edit = QLineEdit()
        self.password_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.password_edit.setAccessibleName("Backup password")
        self.local_note = QLabel("")
        self.local_note.setWordWrap(True)
        self.passphrase_edit = QLineEdit()
        self.passphrase_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase_edit.setPlaceholderText(
            f"At least {MIN_PASSPHRASE_LENGTH} characters, for this computer only"
        )
        self.passphrase_edit.setAccessibleName("Local passphrase")
        # Typed unseen, so typed twice: a slip here would lock the restored history.
        self.passphrase_repeat = QLineEdit()
        self.passphrase_repeat.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase_repeat.setAccessibleName("Repeat the local passphrase")
        self.passphrase_problem = _error_label()
        self.error = _error_label()
        self.key_row = QLabel("Backup key")
        self.password_row = QLabel("Backup password")
        form.addRow(self.key_row, self.key_edit)
        form.addRow(self.password_row, self.password_edit)
        form.addRow(self.local_note)
        form.addRow("Local passphrase", self.passphrase_edit)
        form.addRow("Repeat", self.passphrase_repeat)
        form.addRow(self.passphrase_problem)
        form.addRow(self.error)
        self.key: bytes | None = None
        self._checking = False
        for edit in (
            self.key_edit,
            self.password_edit,
            self.passphrase_edit,
            self.passphrase_repeat,
        ):
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
        for row in (
            self.passphrase_edit,
            self.passphrase_repeat,
            self.local_note,
            self.passphrase_problem,
        ):
            self.form.setRowVisible(row, needs_passphrase)
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
        self.passphrase_problem.setText(self._passphrase_problem(live=True) or "")
        self.completeChanged.emit()

    def _passphrase_problem(self, *, live: bool = False) -> str | None:
        """Why the local passphrase cannot be used yet; None when it can (or when
        the keyring protects the profile). `live`: only what is worth saying while
        the person is still typing."""
        if self.owner.protector_factory is not None:
            return None
        passphrase = self.passphrase_edit.text()
        repeat = self.passphrase_repeat.text()
        if len(passphrase) < MIN_PASSPHRASE_LENGTH:
            if live and not passphrase:
                return None
            return f"The passphrase needs at least {MIN_PASSPHRASE_LENGTH} characters."
        if repeat != passphrase:
            if live and not repeat:
                return None
            return "The two passphrases differ."
        return None

    def isComplete(self) -> bool:
        if self._checking:
            return False
        info = self.owner.choose_page.selected()
        secret = (
            self.key_edit.text()
            if info and info.method == "64-digit key"
            else (self.password_edit.text())
        )
        if self._passphrase_problem() is not None:
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
                engine.check_backup_key(info.path, key)
            except BackupError as error:
                self.error.setText(sentence(str(error)))
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
        else:
            text = describe_error(error)
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
        self.panel = ProgressPanel("Stop restoring")
        self.error = _error_label()
        # Never a silent clone of the original device (issue #19): the user says
        # what this computer becomes once the history is back.
        self.device_choice = QGroupBox("What should this computer be?")
        choice_layout = QVBoxLayout(self.device_choice)
        self.add_device = QRadioButton("Use this computer as well")
        self.take_over = QRadioButton("Move my account to this computer")
        explanations = (
            "Your other computer keeps working; this one becomes another device of your account.",
            "Your other computer is signed out and told why. Choose this if you replaced"
            " or lost it.",
        )
        for choice, words in zip((self.add_device, self.take_over), explanations, strict=True):
            explanation = QLabel(words)
            explanation.setWordWrap(True)
            explanation.setIndent(24)  # under the button's text, not its circle
            choice_layout.addWidget(choice)
            choice_layout.addWidget(explanation)
        self.add_device.setChecked(True)
        self.device_choice.hide()
        layout.addWidget(self.status)
        layout.addWidget(self.panel)
        layout.addWidget(self.error)
        layout.addWidget(self.device_choice)
        layout.addStretch(1)
        self.done = False
        self.running = False

    def initializePage(self) -> None:
        if self.running or self.done:
            # Back and Next again while it runs: a second restore into the same
            # profile would race the first.
            return
        self.running = True
        self.error.setText("")
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
                server_config=self.owner.server_config,
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
        self.running = False
        self.done = True
        self.setTitle("Restored")  # the page now asks a question; "Restoring" is over
        info = self.owner.choose_page.selected()
        self.panel.finish(info.size if info is not None else None)
        finish_only(self.owner)
        messages = report.counts.get("messages", 0)
        chats = report.counts.get("conversations", 0)
        self.status.setText(
            f"Restored {messages:,} messages in {chats:,} chats and {report.files:,} "
            f"attachments.\n\n{RESTORED_BACKUPS_NOTICE}\n\nChoose below, then click Finish"
            " to open Cipherline."
        )
        self.device_choice.show()
        self.completeChanged.emit()
        self.owner.restored.emit(report)

    def _failed(self, error: BaseException) -> None:
        self.running = False
        self.status.setText("Nothing was restored; this profile is unchanged.")
        self.error.setText(
            "Stopped." if isinstance(error, BackupCancelled) else describe_error(error)
        )

    def isComplete(self) -> bool:
        return self.done

    def takes_over(self) -> bool:
        """The user's answer: this computer takes the original device's place."""
        return self.take_over.isChecked()


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
        server_config: ServerConfig | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Restore from a backup")
        self.setMinimumSize(600, 440)
        self.profile = profile
        self.access = access
        self.protector_factory = protector_factory
        self.passphrase_protector = passphrase_protector
        # The relay the restored profile talks to: the launcher's (the one it was
        # started with). None: the profile's own server.json, else the backup's.
        self.server_config = server_config
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
    from app.config import SERVER_CONFIG_NAME, ConfigError

    try:
        config = ServerConfig.load(profile / SERVER_CONFIG_NAME)
    except (ConfigError, OSError):
        return None
    access = service.VaultAccess(config, profile)
    return access if access.configured else None


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
        self.move_button = QPushButton("Move my password to the split vault…")
        # The split vault's three domains, checked when the tab shows them.
        self.domains = QLabel("")
        self.domains.setWordWrap(True)
        self.domains.setAccessibleName("Vault status")
        self.panel = ProgressPanel("Stop backing up")
        self.panel.hide()
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addWidget(self.domains)
        # Keep rules (restic's --keep-last/daily/weekly/monthly): applied by every
        # backup's prune; saved as soon as a box changes.
        self.keep_last = self._keep_box(1, "How many of the newest backups to keep")
        self.keep_daily = self._keep_box(0, "Days to keep one backup a day for")
        self.keep_weekly = self._keep_box(0, "Weeks to keep one backup a week for")
        self.keep_monthly = self._keep_box(0, "Months to keep one backup a month for")
        keep_form = QFormLayout()
        keep_form.addRow("Keep the newest", self.keep_last)
        keep_form.addRow("Also one a day, for days", self.keep_daily)
        keep_form.addRow("One a week, for weeks", self.keep_weekly)
        keep_form.addRow("One a month, for months", self.keep_monthly)
        layout.addLayout(keep_form)
        for button in (
            self.setup_button,
            self.now_button,
            self.password_button,
            self.move_button,
            self.off_button,
        ):
            layout.addWidget(button, alignment=Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.panel)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self.setup_button.clicked.connect(self.open_setup)
        self.now_button.clicked.connect(self.back_up_now)
        self.password_button.clicked.connect(self.change_password)
        self.off_button.clicked.connect(self.turn_off)
        self.move_button.clicked.connect(self.move_to_split_vault)
        self.wizard: SetupWizard | None = None
        self.refresh()
        for box in self._keep_boxes():
            box.valueChanged.connect(self.save_retention)

    def _keep_box(self, minimum: int, name: str) -> QSpinBox:
        box = QSpinBox()
        box.setRange(minimum, 999)
        box.setAccessibleName(name)
        return box

    def _keep_boxes(self) -> tuple[QSpinBox, QSpinBox, QSpinBox, QSpinBox]:
        return (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly)

    def save_retention(self) -> None:
        rule = snapshots.Retention(
            last=self.keep_last.value(),
            daily=self.keep_daily.value(),
            weekly=self.keep_weekly.value(),
            monthly=self.keep_monthly.value(),
        )
        service.set_retention(self.store, rule)
        self.message.setText(f"The next backup keeps {rule.describe()}.")

    def refresh(self) -> None:
        state = self.store.backup_state.get()
        rule = service.retention(self.store)
        for box, value in zip(
            self._keep_boxes(), (rule.last, rule.daily, rule.weekly, rule.monthly), strict=True
        ):
            # Showing the saved rule is not a change to save again.
            box.blockSignals(True)
            box.setValue(value)
            box.setEnabled(bool(state.method))
            box.blockSignals(False)
        if not state.method:
            self.status.setText("Backups are off. Set them up to keep your history safe.")
        else:
            method = "a 64-digit key" if state.method == service.METHOD_KEY else "a password"
            last = (
                time.strftime("%Y-%m-%d %H:%M", time.localtime(state.last_success))
                if state.last_success
                else "never"
            )
            size = (
                f" ({format_size(state.last_size)})"
                if state.last_success and state.last_size
                else ""
            )
            verified_at = service.last_verified(self.store)
            verified = (
                time.strftime("%Y-%m-%d %H:%M", time.localtime(verified_at))
                if verified_at
                else "never"
            )
            self.status.setText(
                f"Protected by {method}, {state.schedule}, into {state.folder}.\n"
                f"Last backup: {last}{size}. Last read back and verified: {verified}."
            )
        on = bool(state.method)
        self.setup_button.setText("Set up again…" if on else "Set up backups…")
        self.now_button.setEnabled(on)
        self.off_button.setEnabled(on)
        self.password_button.setVisible(state.method == service.METHOD_PASSWORD)
        self.move_button.setVisible(service.split_vault_move_due(self.store, self.access))
        self._check_domains(state.method == service.METHOD_PASSWORD)

    def _check_domains(self, password_backups: bool) -> None:
        access = self.access
        if access is None or not access.split or not password_backups:
            self.domains.hide()
            return
        self.domains.setText("Checking the three vaults that hold your backup key…")
        self.domains.show()

        def done(sentences: list[str]) -> None:
            answering = sum(sentence.endswith(": answering.") for sentence in sentences)
            verdict = (
                "All three answer."
                if answering == 3
                else "Two answer, which is enough: restores keep working."
                if answering == 2
                else "Fewer than two answer: restoring with the password waits until one "
                "is back. Backups go on."
            )
            self.domains.setText(
                "Your backup key is split between three vaults; any two can give it "
                "back.\n" + "\n".join(sentences) + "\n" + verdict
            )

        def failed(error: BaseException) -> None:
            self.domains.setText(f"The vaults could not be checked: {describe_error(error)}")

        run_in_pool(access.domain_status, done, failed)

    def move_to_split_vault(self) -> None:
        access = self.access
        if access is None:
            return
        password = self._ask(
            "Move to the split vault",
            "Your backup password, to register it with the three independent vaults:",
        )
        if not password:
            return
        self.move_button.setEnabled(False)
        self.message.setText("Moving your backup password to the split vault…")
        store = self.store

        def done(_result: object) -> None:
            self.move_button.setEnabled(True)
            self.message.setText(
                "Done: your backup key is now split between three vaults. Backups made "
                "before still open with the same password."
            )
            self.refresh()

        def failed(error: BaseException) -> None:
            self.move_button.setEnabled(True)
            self.message.setText(describe_error(error))

        run_in_pool(lambda: service.move_to_split_vault(store, access, password), done, failed)

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
            self.panel.finish(info.size)
            self.message.setText(f"Backed up: {info.path.name}, {format_size(info.size)}.")
            self.refresh()

        def failed(error: BaseException) -> None:
            self.panel.hide()
            self.message.setText(
                "Stopped." if isinstance(error, BackupCancelled) else describe_error(error)
            )
            self.refresh()

        run_in_pool(work, done, failed)

    def _ask(self, title: str, label: str) -> str | None:
        from PySide6.QtWidgets import QInputDialog

        text, ok = QInputDialog.getText(self, title, label, QLineEdit.EchoMode.Password)
        return text if ok else None

    def change_password(self) -> None:
        """Opens the change-password dialog (app.ui.backup_password) without
        blocking; a failed change is reported in it, a done one here."""
        from app.ui.backup_password import ChangePasswordDialog

        access = self.access
        if access is None:
            self.message.setText("This profile has no vault configured.")
            return
        dialog = ChangePasswordDialog(self)
        store = self.store

        def change(old: str, new: str) -> None:
            def done(_result: object) -> None:
                dialog.done_changing()
                self.message.setText("Password changed. Existing backups use it too.")

            run_in_pool(
                lambda: service.change_password(store, access, old, new),
                done,
                lambda error: dialog.show_error(describe_error(error)),
            )

        dialog.change_requested.connect(change)
        self.password_dialog = dialog
        dialog.open()

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
            lambda error: self.message.setText(describe_error(error)),
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
