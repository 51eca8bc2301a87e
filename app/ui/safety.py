"""The safety-number dialog: compare the numbers, then mark the contact verified.

Cipherline runs only on desktops, and no desktop here reads a camera, so the
dialog asks people to compare the digits (read aloud, or screens side by side)
and shows no QR code that nothing could scan. Marking the contact verified keeps
the dialog open and says so, with the way back ("Clear verification") beside it.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.services.views import SafetyNumberView

VERIFIED_STYLE = "color: #1e7b34;"
UNVERIFIED_STYLE = "color: palette(placeholder-text);"


class SafetyNumberDialog(QDialog):
    """The safety number in 12 groups of 5, whether the contact is verified, and
    "Mark as verified" / "Clear verification".

    For a contact whose identity changed after it was verified (`view.unaccepted`)
    it says so and offers "Accept new safety number", optionally marking the new
    number verified too; accepting is what unblocks sending to the contact."""

    verified_toggled = Signal(str, bool)
    accept_requested = Signal(str, bool)  # peer, also mark as verified

    def __init__(self, view: SafetyNumberView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = view
        peer = view.peer
        self.setWindowTitle(f"Safety number with {peer}")
        self.setMinimumWidth(440)
        layout = QVBoxLayout(self)
        self.changed_label = QLabel(
            f"{peer}'s safety number has changed since you verified it. This can "
            "mean they reinstalled Cipherline, or that someone is intercepting your "
            f"chats. Nothing is sent to {peer} until you accept the new number."
        )
        self.changed_label.setWordWrap(True)
        self.changed_label.setStyleSheet("color: #8a5a00; font-weight: bold;")
        self.changed_label.setVisible(view.unaccepted)
        layout.addWidget(self.changed_label)
        self.explanation = QLabel(
            f"To make sure no one is in the middle of your chat, compare these 60 digits "
            f"with the ones {peer} sees: read them aloud to each other on a call or in "
            "person, or put your screens side by side. If every group matches, mark "
            f"{peer} as verified."
        )
        self.explanation.setWordWrap(True)
        layout.addWidget(self.explanation)
        grid_widget = QWidget()
        grid = QGridLayout(grid_widget)
        grid.setContentsMargins(0, 8, 0, 8)
        self.group_labels: list[QLabel] = []
        for position, group in enumerate(view.groups):
            label = QLabel(group)
            label.setStyleSheet("font-family: monospace; font-size: 18px;")
            label.setAlignment(Qt.AlignmentFlag.AlignCenter)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(label, position // 4, position % 4)
            self.group_labels.append(label)
        grid_widget.setAccessibleName("Safety number")
        grid_widget.setAccessibleDescription(" ".join(view.groups))
        layout.addWidget(grid_widget)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        row = QHBoxLayout()
        self.copy_button = QPushButton("Copy numbers")
        self.copy_button.setToolTip("Copy the 60 digits, to compare them in another app")
        self.copy_button.clicked.connect(self._copy)
        self.verify_button = QPushButton()
        self.verify_button.clicked.connect(self._toggle)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.accept)
        row.addWidget(self.copy_button)
        row.addStretch(1)
        row.addWidget(self.verify_button)
        row.addWidget(self.close_button)
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

    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(" ".join(self.view.groups))
        self.copy_button.setText("Copied")

    def _accept_new(self) -> None:
        self.accept_requested.emit(self.view.peer, self.also_verify.isChecked())
        self.accept()

    def _refresh(self) -> None:
        peer = self.view.peer
        if self.view.unaccepted:
            self.status_label.setText("Not verified: the number is new.")
            self.status_label.setStyleSheet(UNVERIFIED_STYLE)
        elif self._verified:
            self.status_label.setText(
                f"✔ Verified. You compared this number with {peer}; if it ever changes, "
                "Cipherline stops sending to them until you accept the new one."
            )
            self.status_label.setStyleSheet(VERIFIED_STYLE)
        else:
            self.status_label.setText(f"Not verified yet: you have not marked {peer} verified.")
            self.status_label.setStyleSheet(UNVERIFIED_STYLE)
        self.verify_button.setText("Clear verification" if self._verified else "Mark as verified")

    def _toggle(self) -> None:
        self._verified = not self._verified
        self._refresh()
        self.verified_toggled.emit(self.view.peer, self._verified)

    @property
    def verified(self) -> bool:
        return self._verified
