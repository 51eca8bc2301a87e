"""Dialogs: first run, unlock, keyring recovery, new chat, new group, contact
details, group members."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QRadioButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

ERROR_STYLE = "color: #b3261e;"
NOTE_STYLE = "color: palette(placeholder-text);"
# The relay's rule (relay/server.py), applied to the lowercased name.
USERNAME_PATTERN = re.compile(r"^[a-z0-9_.-]{3,32}$")
USERNAME_HINT = "3–32 letters, digits, . _ or -. Usernames are lowercase."


def username_hint(typed: str) -> tuple[str, bool]:
    """What the username field's hint says for `typed`, and whether it is a problem.

    Usernames are lowercase on the relay; rather than lowercase "Alice" silently,
    the hint shows the name that will be registered as it is typed."""
    name = typed.strip().lower()
    if not name:
        return USERNAME_HINT, False
    if not USERNAME_PATTERN.match(name):
        if len(name) < 3:
            return "A username needs at least 3 characters.", True
        if len(name) > 32:
            return "A username has at most 32 characters.", True
        return "Use only letters a–z, digits and . _ - (no spaces).", True
    if name != typed.strip():
        return f"Your username will be “{name}”: usernames are lowercase.", False
    return f"Your username will be “{name}”.", False


@dataclass(frozen=True)
class AccountRequest:
    relay_url: str
    username: str
    device_name: str
    passphrase: str | None  # None: the OS keyring protects the store key


class OnboardingDialog(QDialog):
    """First run: create an account or restore from a backup."""

    create_requested = Signal(object)  # AccountRequest
    restore_requested = Signal()

    def __init__(
        self,
        default_relay: str,
        default_device: str,
        *,
        keyring_available: bool,
        keyring_problem: str | None = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle("Welcome to Cipherline")
        self.setMinimumWidth(480)
        self.pages = QStackedWidget()
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)

        welcome = QWidget()
        welcome_layout = QVBoxLayout(welcome)
        title = QLabel("<h2>Welcome to Cipherline</h2>")
        subtitle = QLabel(
            "Messages, history and backups are end-to-end encrypted. "
            "Nobody but you and the people you talk to can read them — not even us."
        )
        subtitle.setWordWrap(True)
        self.create_button = QPushButton("Create account")
        self.create_button.setDefault(True)
        self.restore_button = QPushButton("Restore from a backup")
        welcome_layout.addWidget(title)
        welcome_layout.addWidget(subtitle)
        welcome_layout.addStretch(1)
        welcome_layout.addWidget(self.create_button)
        welcome_layout.addWidget(self.restore_button)
        self.pages.addWidget(welcome)

        form_page = QWidget()
        form = QFormLayout(form_page)
        self.form_title = QLabel("<h2>Create your account</h2>")
        form.addRow(self.form_title)
        self.relay_edit = QLineEdit(default_relay)
        self.username_edit = QLineEdit()
        self.username_edit.setPlaceholderText("for example alice")
        self.username_hint = QLabel(USERNAME_HINT)
        self.username_hint.setWordWrap(True)
        self.username_hint.setStyleSheet(NOTE_STYLE)
        self.device_edit = QLineEdit(default_device)
        form.addRow("Relay", self.relay_edit)
        form.addRow("Username", self.username_edit)
        form.addRow("", self.username_hint)
        form.addRow("This device", self.device_edit)
        self.keyring_choice = QRadioButton("Protect my history with the system keyring")
        self.passphrase_choice = QRadioButton("Protect my history with a passphrase")
        choices = QButtonGroup(self)
        choices.addButton(self.keyring_choice)
        choices.addButton(self.passphrase_choice)
        self.keyring_choice.setEnabled(keyring_available)
        (self.keyring_choice if keyring_available else self.passphrase_choice).setChecked(True)
        # A greyed-out choice with no reason looks like a bug; say why it is off.
        self.keyring_note = QLabel()
        self.keyring_note.setWordWrap(True)
        self.keyring_note.setStyleSheet(NOTE_STYLE)
        if not keyring_available:
            why = keyring_problem or "no system keyring was found on this computer"
            self.keyring_choice.setToolTip(why[:1].upper() + why[1:] + ".")
            self.keyring_note.setText(
                f"The system keyring option is off: {why}. Your history will be "
                "protected with a passphrase you choose instead."
            )
        self.keyring_note.setVisible(not keyring_available)
        form.addRow(self.keyring_choice)
        form.addRow(self.keyring_note)
        form.addRow(self.passphrase_choice)
        self.passphrase_edit = QLineEdit()
        self.passphrase_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase_edit.setPlaceholderText("at least 8 characters")
        self.passphrase_repeat = QLineEdit()
        self.passphrase_repeat.setEchoMode(QLineEdit.EchoMode.Password)
        form.addRow("Passphrase", self.passphrase_edit)
        form.addRow("Repeat", self.passphrase_repeat)
        self.error_label = QLabel()
        self.error_label.setStyleSheet("color: #b3261e;")
        self.error_label.setWordWrap(True)
        form.addRow(self.error_label)
        buttons = QDialogButtonBox()
        self.back_button = buttons.addButton("Back", QDialogButtonBox.ButtonRole.RejectRole)
        self.submit_button = buttons.addButton(
            "Create account", QDialogButtonBox.ButtonRole.AcceptRole
        )
        form.addRow(buttons)
        self.pages.addWidget(form_page)

        self.create_button.clicked.connect(lambda: self.pages.setCurrentIndex(1))
        self.restore_button.clicked.connect(self.restore_requested)
        self.back_button.clicked.connect(lambda: self.pages.setCurrentIndex(0))
        self.submit_button.clicked.connect(self._submit)
        self.passphrase_choice.toggled.connect(self._update_passphrase_fields)
        self.username_edit.textChanged.connect(self._update_username_hint)
        self._update_passphrase_fields()

    def _update_username_hint(self, text: str) -> None:
        hint, problem = username_hint(text)
        self.username_hint.setText(hint)
        self.username_hint.setStyleSheet(ERROR_STYLE if problem else NOTE_STYLE)

    def _update_passphrase_fields(self) -> None:
        enabled = self.passphrase_choice.isChecked()
        self.passphrase_edit.setEnabled(enabled)
        self.passphrase_repeat.setEnabled(enabled)

    def _submit(self) -> None:
        typed = self.username_edit.text()
        username = typed.strip().lower()
        device = self.device_edit.text().strip()
        relay = self.relay_edit.text().strip()
        passphrase: str | None = None
        if not relay.startswith("https://"):
            self.show_error("The relay address must start with https://.")
            return
        if not username:
            self.show_error("Choose a username.")
            return
        hint, problem = username_hint(typed)
        if problem:
            self.show_error(hint)
            return
        if not device:
            self.show_error("Name this device, for example “Laptop”.")
            return
        if self.passphrase_choice.isChecked():
            passphrase = self.passphrase_edit.text()
            if len(passphrase) < 8:
                self.show_error("The passphrase needs at least 8 characters.")
                return
            if passphrase != self.passphrase_repeat.text():
                self.show_error("The two passphrases differ.")
                return
        self.error_label.clear()
        self.set_busy(True)
        self.create_requested.emit(AccountRequest(relay, username, device, passphrase))

    def set_busy(self, busy: bool) -> None:
        self.submit_button.setEnabled(not busy)
        self.submit_button.setText("Creating…" if busy else "Create account")

    def show_error(self, text: str) -> None:
        self.set_busy(False)
        self.error_label.setText(text)


def _whose(username: str | None) -> str:
    return f"{username}’s history" if username else "your history"


class UnlockDialog(QDialog):
    """Asks for the local passphrase; a wrong one says so and changes nothing.

    It names the account (its username), which is what people know; the profile
    folder's name is shown only when the username is not known yet."""

    unlock_requested = Signal(str)

    def __init__(self, username: str | None, profile_name: str = "") -> None:
        super().__init__()
        self.setWindowTitle("Unlock Cipherline")
        self.setMinimumWidth(420)
        layout = QVBoxLayout(self)
        self.title = QLabel(f"<h2>Unlock {escape(_whose(username))}</h2>")
        layout.addWidget(self.title)
        if username:
            prompt = f"Enter the passphrase that protects {username}’s messages on this computer."
        elif profile_name:
            prompt = f"Enter the passphrase of the Cipherline profile “{profile_name}”."
        else:
            prompt = "Enter the passphrase that protects your messages on this computer."
        self.prompt = QLabel(prompt)
        self.prompt.setWordWrap(True)
        layout.addWidget(self.prompt)
        self.passphrase_edit = QLineEdit()
        self.passphrase_edit.setEchoMode(QLineEdit.EchoMode.Password)
        layout.addWidget(self.passphrase_edit)
        self.error_label = QLabel()
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setWordWrap(True)
        layout.addWidget(self.error_label)
        self.unlock_button = QPushButton("Unlock")
        self.unlock_button.setDefault(True)
        layout.addWidget(self.unlock_button)
        self.unlock_button.clicked.connect(self._submit)
        self.passphrase_edit.returnPressed.connect(self._submit)

    def _submit(self) -> None:
        self.unlock_button.setEnabled(False)
        self.error_label.clear()
        self.unlock_requested.emit(self.passphrase_edit.text())

    def show_error(self, text: str) -> None:
        self.unlock_button.setEnabled(True)
        self.passphrase_edit.selectAll()
        self.error_label.setText(text)


# Why the keyring gave no key, by `KeyringKeyLost.reason` (app/store/keyfile.py).
KEYRING_LOST_TEXT = {
    "missing": (
        "Cipherline’s key is no longer in your system keyring, so this computer cannot "
        "open your history on its own. This happens when the keyring is reset or "
        "replaced — after a new desktop or a reinstall, for example."
    ),
    "unreachable": (
        "Cipherline cannot reach your system keyring, where the key to your history is "
        "kept{why}. If the keyring is only locked or not started yet, start it and "
        "click Try again."
    ),
    "mismatch": (
        "The key in your system keyring no longer opens your history: the keyring "
        "entry was replaced, so this computer cannot open your history on its own."
    ),
}
NOTHING_DELETED = "Nothing has been deleted: your messages are still on this computer, encrypted."


@dataclass(frozen=True)
class RecoveryRequest:
    """What the keyring-lost screen hands the launcher: the 64-digit backup key or
    the backup password, and the passphrase to protect the store with from now on
    (None: the system keyring takes the key back)."""

    secret: str
    by_password: bool
    passphrase: str | None

    def __repr__(self) -> str:
        return f"RecoveryRequest(by_password={self.by_password}, <secrets hidden>)"


class KeyringLostDialog(QDialog):
    """The unlock screen for a profile whose keyring entry is gone.

    With a recovery wrapping (`store.recovery`, written when backups were set up)
    it offers the way back in: the 64-digit backup key, or the backup password,
    which the vault exchanges for that key. The store is opened with it, and its
    key put back in the system keyring (or under a new passphrase when no keyring
    can be reached now). Without one it says plainly that the store cannot be
    opened without the keyring entry, and what can be done; it deletes nothing.
    """

    recover_requested = Signal(object)  # RecoveryRequest
    retry_requested = Signal()

    def __init__(
        self,
        username: str | None,
        reason: str,
        *,
        recovery_method: str | None,
        profile_path: Path,
        keyring_problem: str | None = None,
        recovery_problem: str | None = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle("Unlock Cipherline")
        self.setMinimumWidth(560)
        self.recovery_method = recovery_method
        self.needs_passphrase = recovery_method is not None and keyring_problem is not None
        layout = QVBoxLayout(self)
        self.title = QLabel(f"<h2>Unlock {escape(_whose(username))}</h2>")
        layout.addWidget(self.title)
        why = f" ({keyring_problem})" if keyring_problem and reason == "unreachable" else ""
        self.reason_label = QLabel(
            KEYRING_LOST_TEXT.get(reason, KEYRING_LOST_TEXT["missing"]).format(why=why)
            + " "
            + NOTHING_DELETED
        )
        self.reason_label.setWordWrap(True)
        layout.addWidget(self.reason_label)
        self.way_in = QLabel(self._way_in_text(profile_path, recovery_problem))
        self.way_in.setWordWrap(True)
        self.way_in.setTextFormat(Qt.TextFormat.RichText)
        self.way_in.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.way_in)

        form = QFormLayout()
        self.form = form
        self.key_edit = QLineEdit()
        self.key_edit.setPlaceholderText("64 digits, 0-9 and a-f; spaces and dashes are fine")
        self.password_edit = QLineEdit()
        self.password_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase_edit = QLineEdit()
        self.passphrase_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase_edit.setPlaceholderText("at least 8 characters")
        self.passphrase_repeat = QLineEdit()
        self.passphrase_repeat.setEchoMode(QLineEdit.EchoMode.Password)
        form.addRow("Backup key", self.key_edit)
        form.addRow("Backup password", self.password_edit)
        form.addRow("New passphrase", self.passphrase_edit)
        form.addRow("Repeat", self.passphrase_repeat)
        layout.addLayout(form)
        form.setRowVisible(self.key_edit, recovery_method == "key")
        form.setRowVisible(self.password_edit, recovery_method == "password")
        form.setRowVisible(self.passphrase_edit, self.needs_passphrase)
        form.setRowVisible(self.passphrase_repeat, self.needs_passphrase)

        self.error_label = QLabel()
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setWordWrap(True)
        layout.addWidget(self.error_label)
        layout.addStretch(1)
        buttons = QHBoxLayout()
        self.quit_button = QPushButton("Quit")
        self.retry_button = QPushButton("Try again")
        self.unlock_button = QPushButton("Unlock")
        buttons.addWidget(self.quit_button)
        buttons.addStretch(1)
        buttons.addWidget(self.retry_button)
        buttons.addWidget(self.unlock_button)
        layout.addLayout(buttons)
        self.unlock_button.setVisible(recovery_method is not None)
        (self.unlock_button if recovery_method else self.retry_button).setDefault(True)
        self.quit_button.clicked.connect(self.close)
        self.retry_button.clicked.connect(self._retry)
        self.unlock_button.clicked.connect(self._submit)
        for edit in (self.key_edit, self.password_edit, self.passphrase_repeat):
            edit.returnPressed.connect(self._submit)

    def _way_in_text(self, profile_path: Path, recovery_problem: str | None) -> str:
        back = (
            "protects it with a new passphrase you choose below, since no system keyring "
            "can be reached now"
            if self.needs_passphrase
            else "puts its key back in the system keyring"
        )
        if self.recovery_method == "key":
            return (
                "<p><b>You can open it with your backup key.</b> Type the 64-digit key you "
                "kept when you set up backups: Cipherline opens your history with it and "
                f"{back}.</p>"
            )
        if self.recovery_method == "password":
            return (
                "<p><b>You can open it with your backup password.</b> Cipherline asks the "
                "vault for your backup key (the vault allows a limited number of wrong "
                f"attempts), opens your history with it and {back}.</p>"
            )
        if recovery_problem:
            cause = (
                f"<p><b>{escape(recovery_problem[:1].upper() + recovery_problem[1:])}</b>, so "
                "your backup key cannot open it either: without that keyring entry this "
                "history cannot be opened.</p>"
            )
        else:
            cause = (
                "<p><b>No backup was set up for this profile</b>, so nothing else can open "
                "it: without that keyring entry this history cannot be opened.</p>"
            )
        return (
            cause + "<p>What you can do:</p><ul>"
            "<li>If your old keyring still exists (another login on this computer, or a "
            "backup of your home folder), bring it back, then click Try again.</li>"
            "<li>If you have a Cipherline backup of this account, restore it into a new "
            "profile: start Cipherline with another profile "
            "(<code>cipherline --profile restored</code>) and choose “Restore from a "
            "backup”.</li></ul>"
            f"<p>This profile’s files stay as they are in <code>{escape(str(profile_path))}"
            "</code>.</p>"
        )

    def _retry(self) -> None:
        self.set_busy(True)
        self.error_label.clear()
        self.retry_requested.emit()

    def _submit(self) -> None:
        if self.recovery_method is None:
            return
        by_password = self.recovery_method == "password"
        secret = (self.password_edit if by_password else self.key_edit).text()
        if not secret.strip():
            self.show_error(
                "Type your backup password." if by_password else "Type your 64-digit backup key."
            )
            return
        passphrase: str | None = None
        if self.needs_passphrase:
            passphrase = self.passphrase_edit.text()
            if len(passphrase) < 8:
                self.show_error("The new passphrase needs at least 8 characters.")
                return
            if passphrase != self.passphrase_repeat.text():
                self.show_error("The two passphrases differ.")
                return
        self.set_busy(True)
        self.error_label.clear()
        self.recover_requested.emit(RecoveryRequest(secret, by_password, passphrase))

    def set_busy(self, busy: bool) -> None:
        for widget in (self.unlock_button, self.retry_button):
            widget.setEnabled(not busy)
        self.unlock_button.setText("Unlocking…" if busy else "Unlock")

    def show_error(self, text: str) -> None:
        self.set_busy(False)
        self.error_label.setText(text)


class NewChatDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New chat")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Start a chat with"))
        self.username_edit = QLineEdit()
        self.username_edit.setPlaceholderText("username")
        layout.addWidget(self.username_edit)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def username(self) -> str:
        return self.username_edit.text().strip()


class NewGroupDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New group")
        form = QFormLayout(self)
        self.title_edit = QLineEdit()
        self.members_edit = QLineEdit()
        self.members_edit.setPlaceholderText("usernames, separated by commas")
        form.addRow("Group name", self.title_edit)
        form.addRow("Members", self.members_edit)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def title(self) -> str:
        return self.title_edit.text().strip()

    def members(self) -> list[str]:
        return [name.strip() for name in self.members_edit.text().split(",") if name.strip()]


class GroupMembersDialog(QDialog):
    add_requested = Signal(str)
    remove_requested = Signal(str)

    def __init__(self, title: str, members: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Members of {title}")
        layout = QVBoxLayout(self)
        self.members = QListWidget()
        self.members.addItems(members)
        layout.addWidget(self.members)
        row = QHBoxLayout()
        self.add_edit = QLineEdit()
        self.add_edit.setPlaceholderText("username")
        add_button = QPushButton("Add")
        remove_button = QPushButton("Remove selected")
        row.addWidget(self.add_edit)
        row.addWidget(add_button)
        row.addWidget(remove_button)
        layout.addLayout(row)
        add_button.clicked.connect(self._add)
        remove_button.clicked.connect(self._remove)

    def _add(self) -> None:
        name = self.add_edit.text().strip()
        if name:
            self.add_requested.emit(name)
            self.members.addItem(name)
            self.add_edit.clear()

    def _remove(self) -> None:
        item = self.members.currentItem()
        if item is not None:
            self.remove_requested.emit(item.text())
            self.members.takeItem(self.members.row(item))
