"""Settings: profile, devices, notifications, app lock, appearance."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app import __version__


def about_text() -> str:
    return (
        f"<b>Cipherline {__version__}</b><br><br>"
        "An end-to-end encrypted messenger: messages, local history and backups are "
        "encrypted on this device, with keys only you hold.<br><br>"
        "Post-quantum session start (X25519 + ML-KEM-768), the Double Ratchet, Sender "
        "Keys for groups, an SQLCipher store, and backups protected by a 64-digit key "
        "or by a password checked by the Backup Key Vault (OPAQUE)."
    )


LOCK_CHOICES = [("Never", 0), ("1 minute", 1), ("5 minutes", 5), ("15 minutes", 15), ("1 hour", 60)]


class SettingsDialog(QDialog):
    previews_changed = Signal(bool)
    lock_changed = Signal(int)
    remove_device = Signal(int)
    unblock_requested = Signal(str)
    typing_indicators_changed = Signal(bool)

    def __init__(
        self,
        username: str,
        device_name: str,
        *,
        previews: bool,
        lock_minutes: int,
        lock_available: bool,
        typing_indicators: bool = True,
        backups: QWidget | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        tabs = QTabWidget()
        # Every tab shows: without scroll buttons the tab bar's width is the
        # dialog's minimum, instead of hiding "Appearance" and "About" behind
        # arrows nobody notices.
        tabs.setUsesScrollButtons(False)
        layout = QVBoxLayout(self)
        layout.addWidget(tabs)

        profile = QWidget()
        form = QFormLayout(profile)
        form.addRow("Username", QLabel(username))
        form.addRow("This device", QLabel(device_name))
        tabs.addTab(profile, "Profile")

        devices = QWidget()
        devices_layout = QVBoxLayout(devices)
        self.devices = QListWidget()
        self.devices.setAccessibleName("Devices on this account")
        devices_layout.addWidget(self.devices)
        self.remove_button = QPushButton("Remove selected device")
        devices_layout.addWidget(self.remove_button)
        self.remove_button.clicked.connect(self._remove)
        tabs.addTab(devices, "Devices")

        notifications = QWidget()
        notification_form = QFormLayout(notifications)
        self.previews = QCheckBox("Show the sender and message text in notifications")
        self.previews.setChecked(previews)
        self.previews.toggled.connect(self.previews_changed)
        notification_form.addRow(self.previews)
        tabs.addTab(notifications, "Notifications")

        privacy = QWidget()
        privacy_form = QFormLayout(privacy)
        self.lock_combo = QComboBox()
        self.lock_combo.setAccessibleName("Lock after being idle")
        for label, _minutes in LOCK_CHOICES:
            self.lock_combo.addItem(label)
        minutes = [m for _label, m in LOCK_CHOICES]
        self.lock_combo.setCurrentIndex(
            minutes.index(lock_minutes) if lock_minutes in minutes else 0
        )
        self.lock_combo.setEnabled(lock_available)
        self.lock_combo.activated.connect(
            lambda index: self.lock_changed.emit(LOCK_CHOICES[index][1])
        )
        privacy_form.addRow("Lock after being idle", self.lock_combo)
        if not lock_available:
            note = QLabel(
                "The app lock asks for your passphrase, so it needs a profile "
                "protected by a passphrase rather than the system keyring."
            )
            note.setWordWrap(True)
            privacy_form.addRow(note)
        self.typing_box = QCheckBox("Send typing indicators")
        self.typing_box.setAccessibleName("Send typing indicators")
        self.typing_box.setToolTip(
            "When off, others do not see when you type, and you do not see when they do."
        )
        self.typing_box.setChecked(typing_indicators)
        self.typing_box.toggled.connect(self.typing_indicators_changed)
        privacy_form.addRow(self.typing_box)
        privacy_form.addRow(QLabel("<b>Blocked people</b>"))
        blocked_note = QLabel(
            "What they send is dropped as it arrives, and nothing is sent to them. "
            "Blocking is kept on this device only: they and the relay are not told."
        )
        blocked_note.setWordWrap(True)
        privacy_form.addRow(blocked_note)
        self.blocked_list = QListWidget()
        self.blocked_list.setAccessibleName("Blocked people")
        privacy_form.addRow(self.blocked_list)
        self.unblock_button = QPushButton("Unblock selected")
        self.unblock_button.setEnabled(False)
        privacy_form.addRow(self.unblock_button)
        self.blocked_list.currentRowChanged.connect(
            lambda row: self.unblock_button.setEnabled(row >= 0)
        )
        self.unblock_button.clicked.connect(self._unblock)
        tabs.addTab(privacy, "Privacy")

        if backups is not None:
            tabs.addTab(backups, "Backups")

        appearance = QWidget()
        appearance_form = QFormLayout(appearance)
        appearance_form.addRow(QLabel("Cipherline follows your system's light or dark theme."))
        tabs.addTab(appearance, "Appearance")

        about = QWidget()
        about_layout = QVBoxLayout(about)
        self.about_label = QLabel(about_text())
        self.about_label.setWordWrap(True)
        self.about_label.setTextInteractionFlags(
            self.about_label.textInteractionFlags() | Qt.TextInteractionFlag.TextSelectableByMouse
        )
        about_layout.addWidget(self.about_label)
        about_layout.addStretch(1)
        tabs.addTab(about, "About")

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.tabs = tabs
        # Room for the Backups tab's status and buttons without a cramped look.
        self.resize(max(self.minimumSizeHint().width(), 620), 460)

    def set_devices(self, devices: list[dict[str, object]]) -> None:
        self.devices.clear()
        self._device_ids = []
        for device in devices:
            # Client.devices opened the names; None is one sealed by another
            # device's identity, which this device cannot read.
            name = device["name"] if device.get("name") is not None else "Name readable there only"
            label = f"{name} (#{device['device_id']})"
            if device.get("current"):
                label += " — this device"
            self.devices.addItem(label)
            self._device_ids.append(int(str(device["device_id"])))

    def set_blocked(self, usernames: list[str]) -> None:
        self.blocked_list.clear()
        self.blocked_list.addItems(usernames)
        if not usernames:
            self.unblock_button.setEnabled(False)

    def _unblock(self) -> None:
        item = self.blocked_list.currentItem()
        if item is not None:
            self.unblock_requested.emit(item.text())

    def _remove(self) -> None:
        row = self.devices.currentRow()
        if 0 <= row < len(getattr(self, "_device_ids", [])):
            self.remove_device.emit(self._device_ids[row])
            self.devices.takeItem(row)
            del self._device_ids[row]
