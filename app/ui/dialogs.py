"""Dialogs: first run, unlock, keyring recovery, new chat, new group, contact
details, group members."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from pathlib import Path

from PySide6.QtCore import QStringListModel, Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCompleter,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
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


class HistoryProtection:
    """How this computer's history is protected: the system keyring or a passphrase.

    One set of fields and one rule for the create-account page and for linking this
    computer to an existing account (app/ui/linking.py); the rows go into `form`."""

    def __init__(
        self,
        form: QFormLayout,
        owner: QWidget,
        *,
        keyring_available: bool,
        keyring_problem: str | None = None,
    ) -> None:
        self.keyring_choice = QRadioButton("Protect my history with the system keyring")
        self.passphrase_choice = QRadioButton("Protect my history with a passphrase")
        choices = QButtonGroup(owner)
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
        self.passphrase_choice.toggled.connect(self._update_fields)
        self._update_fields()

    def _update_fields(self) -> None:
        enabled = self.passphrase_choice.isChecked()
        self.passphrase_edit.setEnabled(enabled)
        self.passphrase_repeat.setEnabled(enabled)

    def problem(self) -> str:
        """What is wrong with the choice as a sentence, or "" when it can be used."""
        if not self.passphrase_choice.isChecked():
            return ""
        if len(self.passphrase_edit.text()) < 8:
            return "The passphrase needs at least 8 characters."
        if self.passphrase_edit.text() != self.passphrase_repeat.text():
            return "The two passphrases differ."
        return ""

    def passphrase(self) -> str | None:
        """The chosen passphrase; None when the system keyring protects the store key."""
        return self.passphrase_edit.text() if self.passphrase_choice.isChecked() else None


class OnboardingDialog(QDialog):
    """First run: create an account, link this computer to an existing account, or
    restore from a backup."""

    create_requested = Signal(object)  # AccountRequest
    link_requested = Signal()
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
        self.link_button = QPushButton("Link to an existing account")
        self.link_button.setToolTip(
            "Use the account you already have on another computer here too."
        )
        self.restore_button = QPushButton("Restore from a backup")
        welcome_layout.addWidget(title)
        welcome_layout.addWidget(subtitle)
        welcome_layout.addStretch(1)
        welcome_layout.addWidget(self.create_button)
        welcome_layout.addWidget(self.link_button)
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
        self.protection = HistoryProtection(
            form, self, keyring_available=keyring_available, keyring_problem=keyring_problem
        )
        self.keyring_choice = self.protection.keyring_choice
        self.keyring_note = self.protection.keyring_note
        self.passphrase_choice = self.protection.passphrase_choice
        self.passphrase_edit = self.protection.passphrase_edit
        self.passphrase_repeat = self.protection.passphrase_repeat
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
        self.link_button.clicked.connect(self.link_requested)
        self.restore_button.clicked.connect(self.restore_requested)
        self.back_button.clicked.connect(lambda: self.pages.setCurrentIndex(0))
        self.submit_button.clicked.connect(self._submit)
        self.username_edit.textChanged.connect(self._update_username_hint)

    def _update_username_hint(self, text: str) -> None:
        hint, problem = username_hint(text)
        self.username_hint.setText(hint)
        self.username_hint.setStyleSheet(ERROR_STYLE if problem else NOTE_STYLE)

    def _submit(self) -> None:
        typed = self.username_edit.text()
        username = typed.strip().lower()
        device = self.device_edit.text().strip()
        relay = self.relay_edit.text().strip()
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
        unusable = self.protection.problem()
        if unusable:
            self.show_error(unusable)
            return
        self.error_label.clear()
        self.set_busy(True)
        self.create_requested.emit(
            AccountRequest(relay, username, device, self.protection.passphrase())
        )

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
    """The contact picker: the contacts, filtered as you type; a typed username
    that is no contact is offered as a new chat (the relay then checks it exists,
    by serving its keys). Non-blocking: `chosen` carries the pick."""

    chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New chat")
        self.setMinimumWidth(380)
        self._contacts: list[str] = []
        layout = QVBoxLayout(self)
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search contacts or type a username")
        self.search_edit.setAccessibleName("Search contacts or type a username")
        self.search_edit.setClearButtonEnabled(True)
        layout.addWidget(self.search_edit)
        self.contact_list = QListWidget()
        self.contact_list.setAccessibleName("Contacts")
        layout.addWidget(self.contact_list, 1)
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet(NOTE_STYLE)
        layout.addWidget(self.hint)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.start_button = buttons.addButton("Start chat", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.search_edit.textChanged.connect(self._refilter)
        self.search_edit.returnPressed.connect(self.accept)
        self.contact_list.currentRowChanged.connect(lambda _row: self._update_start())
        self.contact_list.itemDoubleClicked.connect(lambda _item: self.accept())
        self._refilter()

    def set_contacts(self, contacts: list[str]) -> None:
        self._contacts = list(contacts)
        self._refilter()

    def visible_names(self) -> list[str]:
        """The usernames the list offers now, in order (a new one last)."""
        return [
            str(self.contact_list.item(row).data(Qt.ItemDataRole.UserRole))
            for row in range(self.contact_list.count())
        ]

    def _refilter(self) -> None:
        typed = self.search_edit.text().strip().lower()
        self.contact_list.clear()
        for name in (name for name in self._contacts if typed in name):
            item = QListWidgetItem(name)
            item.setData(Qt.ItemDataRole.UserRole, name)
            self.contact_list.addItem(item)
        # After the contacts (as Signal's "find by username"), so Enter on a
        # partly typed name picks the contact rather than a stranger's name.
        if typed and typed not in self._contacts and USERNAME_PATTERN.match(typed):
            item = QListWidgetItem(f"New chat with “{typed}”")
            item.setData(Qt.ItemDataRole.UserRole, typed)
            self.contact_list.addItem(item)
        if self.contact_list.count():
            self.contact_list.setCurrentRow(0)
        if not self._contacts and not typed:
            self.hint.setText("No contacts yet: type the username of the person to write to.")
        elif typed and not self.contact_list.count():
            self.hint.setText(username_hint(typed)[0])
        else:
            self.hint.setText("")
        self._update_start()

    def _update_start(self) -> None:
        self.start_button.setEnabled(self.contact_list.currentItem() is not None)

    def username(self) -> str:
        item = self.contact_list.currentItem()
        return "" if item is None else str(item.data(Qt.ItemDataRole.UserRole))

    def accept(self) -> None:
        name = self.username()
        if not name:
            return
        super().accept()
        self.chosen.emit(name)


class NewGroupDialog(QDialog):
    """A group's name and its members: contacts ticked in a list (filtered as you
    type), plus anyone added by username. Non-blocking: `chosen` carries the
    title and the members."""

    chosen = Signal(str, list)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New group")
        self.setMinimumWidth(400)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.title_edit = QLineEdit()
        form.addRow("Group name", self.title_edit)
        layout.addLayout(form)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Search contacts")
        self.filter_edit.setAccessibleName("Search contacts")
        self.filter_edit.setClearButtonEnabled(True)
        layout.addWidget(self.filter_edit)
        self.member_list = QListWidget()
        self.member_list.setAccessibleName("Members: tick the contacts to add")
        layout.addWidget(self.member_list, 1)
        row = QHBoxLayout()
        self.add_edit = QLineEdit()
        self.add_edit.setPlaceholderText("Add someone by username")
        self.add_edit.setAccessibleName("Add someone by username")
        self.add_button = QPushButton("Add")
        row.addWidget(self.add_edit, 1)
        row.addWidget(self.add_button)
        layout.addLayout(row)
        self.error_label = QLabel()
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setWordWrap(True)
        layout.addWidget(self.error_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.create_button = buttons.addButton("Create", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.filter_edit.textChanged.connect(self._refilter)
        self.add_button.clicked.connect(self._add_typed)
        self.add_edit.returnPressed.connect(self._add_typed)

    def set_contacts(self, contacts: list[str]) -> None:
        ticked = set(self.members())
        for name in contacts:
            if self._item(name) is None:
                self._add_item(name, checked=name in ticked)
        self._refilter()

    def _item(self, name: str) -> QListWidgetItem | None:
        for row in range(self.member_list.count()):
            item = self.member_list.item(row)
            if item.text() == name:
                return item
        return None

    def _add_item(self, name: str, *, checked: bool) -> None:
        item = QListWidgetItem(name)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self.member_list.addItem(item)

    def _refilter(self) -> None:
        typed = self.filter_edit.text().strip().lower()
        for row in range(self.member_list.count()):
            item = self.member_list.item(row)
            # A ticked member stays in sight whatever the filter.
            checked = item.checkState() == Qt.CheckState.Checked
            item.setHidden(bool(typed) and typed not in item.text() and not checked)

    def _add_typed(self) -> None:
        name = self.add_edit.text().strip().lower()
        if not name:
            return
        hint, problem = username_hint(name)
        if problem:
            self.error_label.setText(hint)
            return
        self.error_label.clear()
        existing = self._item(name)
        if existing is not None:
            existing.setCheckState(Qt.CheckState.Checked)
        else:
            self._add_item(name, checked=True)
        self.add_edit.clear()
        self._refilter()

    def title(self) -> str:
        return self.title_edit.text().strip()

    def members(self) -> list[str]:
        return [
            self.member_list.item(row).text()
            for row in range(self.member_list.count())
            if self.member_list.item(row).checkState() == Qt.CheckState.Checked
        ]

    def accept(self) -> None:
        if self.add_edit.text().strip():
            self._add_typed()  # typed but not yet added: meant to be in
        if not self.title():
            self.error_label.setText("Name the group.")
            return
        if not self.members():
            self.error_label.setText("Tick at least one contact, or add someone by username.")
            return
        super().accept()
        self.chosen.emit(self.title(), self.members())


class GroupMembersDialog(QDialog):
    add_requested = Signal(str)
    remove_requested = Signal(str)

    def __init__(
        self,
        title: str,
        members: list[str],
        parent: QWidget | None = None,
        contacts: list[str] | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Members of {title}")
        layout = QVBoxLayout(self)
        self.members = QListWidget()
        self.members.setAccessibleName("Members")
        self.members.addItems(members)
        layout.addWidget(self.members)
        row = QHBoxLayout()
        self.add_edit = QLineEdit()
        self.add_edit.setPlaceholderText("contact or username")
        self.add_edit.setAccessibleName("Add a member: a contact or a username")
        self._completions = QStringListModel(self)
        completer = QCompleter(self._completions, self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.add_edit.setCompleter(completer)
        self.set_contacts(contacts or [])
        add_button = QPushButton("Add")
        remove_button = QPushButton("Remove selected")
        row.addWidget(self.add_edit)
        row.addWidget(add_button)
        row.addWidget(remove_button)
        layout.addLayout(row)
        add_button.clicked.connect(self._add)
        self.add_edit.returnPressed.connect(self._add)
        remove_button.clicked.connect(self._remove)

    def set_contacts(self, contacts: list[str]) -> None:
        """Contacts not yet in the group, offered as the add field completes."""
        present = {self.members.item(row).text() for row in range(self.members.count())}
        self._completions.setStringList([name for name in contacts if name not in present])

    def _add(self) -> None:
        name = self.add_edit.text().strip().lower()
        if name:
            self.add_requested.emit(name)
            self.members.addItem(name)
            self.add_edit.clear()

    def _remove(self) -> None:
        item = self.members.currentItem()
        if item is not None:
            self.remove_requested.emit(item.text())
            self.members.takeItem(self.members.row(item))
