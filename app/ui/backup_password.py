"""Settings → Backups → "Change password…": the current password, the new one with
the backup wizard's strength meter, and a repeat field, in one non-blocking
dialog. The change itself runs on a pool thread (it is a vault round trip); a
wrong current password or a vault error shows in the dialog, which stays open so
nothing typed is lost."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.backup import service
from app.protocol.vault import DEFAULT_ATTEMPT_LIMIT
from app.ui.backup_wizards import StrengthMeter

DIFFERENT = "The two new passwords differ."
SAME_AS_OLD = "The new password is the one you have now."


class ChangePasswordDialog(QDialog):
    """Emits `change_requested(current, new)` once the new password passes the
    same rule as the wizard's (service.password_problem) and the repeat matches;
    the owner then calls `show_error` or `done_changing`."""

    change_requested = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Change backup password")
        self.setAccessibleName("Change backup password")
        self.setMinimumWidth(460)
        layout = QVBoxLayout(self)
        intro = QLabel(
            "The backups keep their key; only the password that fetches it from the "
            f"vault changes. A wrong current password counts toward the vault's "
            f"{DEFAULT_ATTEMPT_LIMIT} attempts."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.current = self._password_field("Current backup password")
        self.new = self._password_field("New backup password")
        self.meter = StrengthMeter()
        self.meter.setAccessibleName("Strength of the new password")
        self.repeat = self._password_field("Repeat the new backup password")
        form.addRow("Current password", self.current)
        form.addRow("New password", self.new)
        form.addRow("Strength", self.meter)
        form.addRow("Repeat", self.repeat)
        layout.addLayout(form)
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #b3261e;")
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.error)
        buttons = QDialogButtonBox()
        self.change_button = QPushButton("Change password")
        self.change_button.setAccessibleName("Change password")
        self.change_button.setDefault(True)
        self.cancel_button = buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.cancel_button.setAccessibleName("Cancel")
        buttons.addButton(self.change_button, QDialogButtonBox.ButtonRole.AcceptRole)
        layout.addWidget(buttons)
        # Accept only through `done_changing`: the button asks, the vault answers.
        self.change_button.clicked.connect(self._submit)
        self.cancel_button.clicked.connect(self.reject)
        # Return reaches Change as the default button. Cancel must not be an
        # auto-default: while Change is disabled (mid-change) QDialog would hand
        # Return to it and close the dialog under the running change.
        self.cancel_button.setAutoDefault(False)
        for field in (self.current, self.new, self.repeat):
            field.textChanged.connect(self._changed)
        self.busy = False
        self._changed()

    def _password_field(self, name: str) -> QLineEdit:
        field = QLineEdit()
        field.setEchoMode(QLineEdit.EchoMode.Password)
        field.setAccessibleName(name)
        return field

    def problem(self) -> str | None:
        """Why Change cannot go ahead yet, as a sentence; None when it can."""
        new = self.new.text()
        if not self.current.text():
            return "Type your current backup password."
        rule = service.password_problem(new)
        if rule is not None:
            return rule[:1].upper() + rule[1:] if new else "Choose a new password."
        if new == self.current.text():
            return SAME_AS_OLD
        if self.repeat.text() != new:
            return DIFFERENT if self.repeat.text() else "Repeat the new password."
        return None

    def _changed(self) -> None:
        new, repeat = self.new.text(), self.repeat.text()
        self.meter.set_strength(
            service.password_strength(new), too_short=len(new) < service.MIN_PASSWORD_LENGTH
        )
        # Only what was typed is judged: an empty field is a step still to take
        # (it keeps Change disabled), not an error to shout about.
        rule = service.password_problem(new) if new else None
        if rule is not None:
            shown = rule[:1].upper() + rule[1:]
        elif new and new == self.current.text():
            shown = SAME_AS_OLD
        elif repeat and repeat != new:
            shown = DIFFERENT
        else:
            shown = ""
        self.error.setText(shown)
        self.change_button.setEnabled(self.problem() is None and not self.busy)

    def _submit(self) -> None:
        if self.busy or self.problem() is not None:
            return
        self.busy = True
        self.change_button.setEnabled(False)
        self.error.setText("Changing the password in the vault…")
        self.change_requested.emit(self.current.text(), self.new.text())

    def show_error(self, text: str) -> None:
        """The change failed: say why and let the user try again."""
        self.busy = False
        self.error.setText(text)
        self.current.selectAll()
        self.current.setFocus()
        self.change_button.setEnabled(self.problem() is None)

    def done_changing(self) -> None:
        self.busy = False
        self.accept()
