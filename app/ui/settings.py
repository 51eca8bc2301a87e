"""Settings: profile, devices, notifications, app lock, appearance."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app import __version__
from app.services.events import HistoryProgress


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
    link_requested = Signal()  # "Link a new device" (app/ui/linking.py)
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
        # A history transfer to a linked device (issue #19) outlives the link
        # dialog: while one runs, this is where to see how far it got.
        self.history_line = QLabel()
        self.history_line.setWordWrap(True)
        self.history_bar = QProgressBar()
        self.history_bar.setTextVisible(False)
        self.history_bar.setMaximumHeight(8)
        self.history_bar.setAccessibleName("Message history sent")
        self.history_line.hide()
        self.history_bar.hide()
        devices_layout.addWidget(self.history_line)
        devices_layout.addWidget(self.history_bar)
        device_buttons = QHBoxLayout()
        self.link_button = QPushButton("Link a new device")
        self.link_button.setToolTip("Use this account on another computer too")
        self.remove_button = QPushButton("Remove selected device")
        # Enabled for another device only: this one cannot remove itself here.
        self.remove_button.setEnabled(False)
        device_buttons.addWidget(self.link_button)
        device_buttons.addStretch(1)
        device_buttons.addWidget(self.remove_button)
        devices_layout.addLayout(device_buttons)
        self.remove_confirm: QMessageBox | None = None
        self._device_ids: list[int] = []
        self._device_names: list[str] = []
        self._current_ids: set[int] = set()
        self.devices.currentRowChanged.connect(self._update_remove)
        self.link_button.clicked.connect(self.link_requested)
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
        self._device_names = []
        self._current_ids = set()
        for device in devices:
            device_id = int(str(device["device_id"]))
            # Client.devices opened the names; None is one sealed by another
            # device's identity, which this device cannot read.
            readable = device.get("name") is not None
            name = str(device["name"]) if readable else "Name readable there only"
            label = f"{name} (#{device_id})"
            if device.get("current"):
                label += " — this device"
                self._current_ids.add(device_id)
            self.devices.addItem(label)
            self._device_ids.append(device_id)
            self._device_names.append(name if readable else f"device #{device_id}")
        self._update_remove(self.devices.currentRow())

    def set_history_progress(self, progress: HistoryProgress | None) -> None:
        """The outgoing history transfer's state (`Client.history_progress(sending=True)`
        when the dialog opens, then each event): a line while it runs, "Done" once
        it ends under our eyes, nothing for one that ended before."""
        if progress is None or not progress.sending or progress.stopped:
            return
        if progress.finished:
            if self.history_line.isHidden():
                return
            self.history_line.setText(
                f"Your message history was sent: {progress.done_messages:,} messages."
            )
            self.history_bar.hide()
            return
        self.history_line.setText(
            f"Sending your message history to your new device… "
            f"{progress.done_messages:,} of {progress.total_messages:,} messages"
        )
        self.history_bar.setRange(0, max(progress.total_messages, 1))
        self.history_bar.setValue(progress.done_messages)
        self.history_line.show()
        self.history_bar.show()

    def _update_remove(self, row: int) -> None:
        self.remove_button.setEnabled(
            0 <= row < len(self._device_ids) and self._device_ids[row] not in self._current_ids
        )

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
        """Asks first, in plain words: removing is immediate and cannot be undone
        from here (the device would have to be linked again)."""
        row = self.devices.currentRow()
        if not 0 <= row < len(self._device_ids) or self._device_ids[row] in self._current_ids:
            return
        device_id, name = self._device_ids[row], self._device_names[row]
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Remove device")
        box.setText(f"Remove “{name}”?")
        box.setInformativeText(
            "It will stop receiving your messages at once and will be signed out."
        )
        remove = box.addButton("Remove", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)

        def answered() -> None:
            if box.clickedButton() is not remove or device_id not in self._device_ids:
                return
            index = self._device_ids.index(device_id)
            self.remove_device.emit(device_id)
            self.devices.takeItem(index)
            del self._device_ids[index]
            del self._device_names[index]

        box.finished.connect(lambda _result: answered())
        self.remove_confirm = box
        box.open()
