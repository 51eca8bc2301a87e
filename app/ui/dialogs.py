"""Dialogs: first run, new chat, new group, contact details, group members."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
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

from app.services.views import SafetyNumberView
from app.ui.widgets import QrLabel


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

    def __init__(self, default_relay: str, default_device: str, *, keyring_available: bool) -> None:
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
        self.relay_edit = QLineEdit(default_relay)
        self.username_edit = QLineEdit()
        self.username_edit.setPlaceholderText("3–32 letters, digits, . _ -")
        self.device_edit = QLineEdit(default_device)
        form.addRow("Relay", self.relay_edit)
        form.addRow("Username", self.username_edit)
        form.addRow("This device", self.device_edit)
        self.keyring_choice = QRadioButton("Protect my history with the system keyring")
        self.passphrase_choice = QRadioButton("Protect my history with a passphrase")
        choices = QButtonGroup(self)
        choices.addButton(self.keyring_choice)
        choices.addButton(self.passphrase_choice)
        self.keyring_choice.setEnabled(keyring_available)
        (self.keyring_choice if keyring_available else self.passphrase_choice).setChecked(True)
        form.addRow(self.keyring_choice)
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
        self._update_passphrase_fields()

    def _update_passphrase_fields(self) -> None:
        enabled = self.passphrase_choice.isChecked()
        self.passphrase_edit.setEnabled(enabled)
        self.passphrase_repeat.setEnabled(enabled)

    def _submit(self) -> None:
        username = self.username_edit.text().strip()
        device = self.device_edit.text().strip()
        relay = self.relay_edit.text().strip()
        passphrase: str | None = None
        if not relay.startswith("https://"):
            self.show_error("The relay address must start with https://.")
            return
        if not username:
            self.show_error("Choose a username.")
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


class UnlockDialog(QDialog):
    """Asks for the local passphrase; a wrong one says so and changes nothing."""

    unlock_requested = Signal(str)

    def __init__(self, profile_name: str) -> None:
        super().__init__()
        self.setWindowTitle("Unlock Cipherline")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"Enter the passphrase of profile “{profile_name}”."))
        self.passphrase_edit = QLineEdit()
        self.passphrase_edit.setEchoMode(QLineEdit.EchoMode.Password)
        layout.addWidget(self.passphrase_edit)
        self.error_label = QLabel()
        self.error_label.setStyleSheet("color: #b3261e;")
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


class SafetyNumberDialog(QDialog):
    """The safety number in 12 groups of 5, its QR code, and "Mark as verified".

    For a contact whose identity changed after it was verified (`view.unaccepted`)
    it says so and offers "Accept new safety number", optionally marking the new
    number verified too; accepting is what unblocks sending to the contact."""

    verified_toggled = Signal(str, bool)
    accept_requested = Signal(str, bool)  # peer, also mark as verified

    def __init__(self, view: SafetyNumberView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = view
        self.setWindowTitle(f"Safety number with {view.peer}")
        layout = QVBoxLayout(self)
        self.changed_label = QLabel(
            f"{view.peer}'s safety number has changed since you verified it. This can "
            "mean they reinstalled Cipherline, or that someone is intercepting your "
            f"chats. Nothing is sent to {view.peer} until you accept the new number."
        )
        self.changed_label.setWordWrap(True)
        self.changed_label.setStyleSheet("color: #8a5a00; font-weight: bold;")
        self.changed_label.setVisible(view.unaccepted)
        layout.addWidget(self.changed_label)
        explanation = QLabel(
            f"Compare these numbers with {view.peer}, in person or on a call, or scan "
            "the code on their screen. If they match, your chat is end-to-end "
            "encrypted with no one in the middle."
        )
        explanation.setWordWrap(True)
        layout.addWidget(explanation)
        self.qr = QrLabel(view.qr_payload)
        layout.addWidget(self.qr)
        grid_widget = QWidget()
        grid = QGridLayout(grid_widget)
        self.group_labels: list[QLabel] = []
        for position, group in enumerate(view.groups):
            label = QLabel(group)
            label.setStyleSheet("font-family: monospace; font-size: 16px;")
            label.setAlignment(Qt.AlignmentFlag.AlignCenter)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(label, position // 4, position % 4)
            self.group_labels.append(label)
        layout.addWidget(grid_widget)
        row = QHBoxLayout()
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(
            lambda: QGuiApplication.clipboard().setText(" ".join(view.groups))
        )
        self.verify_button = QPushButton()
        self.verify_button.clicked.connect(self._toggle)
        row.addWidget(self.copy_button)
        row.addStretch(1)
        row.addWidget(self.verify_button)
        layout.addLayout(row)
        accept_row = QHBoxLayout()
        self.also_verify = QCheckBox("The numbers match: also mark as verified")
        self.accept_button = QPushButton("Accept new safety number")
        self.accept_button.clicked.connect(self._accept_new)
        accept_row.addWidget(self.also_verify)
        accept_row.addStretch(1)
        accept_row.addWidget(self.accept_button)
        layout.addLayout(accept_row)
        for widget in (self.also_verify, self.accept_button):
            widget.setVisible(view.unaccepted)
        # While unaccepted, accepting (optionally verifying) is the one way forward.
        self.verify_button.setVisible(not view.unaccepted)
        self._verified = view.verified
        self._refresh()

    def _accept_new(self) -> None:
        self.accept_requested.emit(self.view.peer, self.also_verify.isChecked())
        self.accept()

    def _refresh(self) -> None:
        self.verify_button.setText("Clear verification" if self._verified else "Mark as verified")

    def _toggle(self) -> None:
        self._verified = not self._verified
        self._refresh()
        self.verified_toggled.emit(self.view.peer, self._verified)

    @property
    def verified(self) -> bool:
        return self._verified


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
