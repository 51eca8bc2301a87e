"""Small reusable widgets: the composer, the identity banner, the error bar, the
QR label, the lock screen; and `sentence`, which makes service texts read as
sentences."""

from __future__ import annotations

import io
from pathlib import Path

import segno
from PySide6.QtCore import QMimeData, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QKeyEvent, QPixmap
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)


def sentence(text: str) -> str:
    """`text` as a sentence: a capital first letter and a closing full stop.

    The services and the backup engine word their errors as clauses ("there is no
    Cipherline user called “x”"), fit for `cipherline: …` on a terminal; a window
    shows them on their own, where a clause in lowercase reads as a glitch."""
    text = text.strip()
    if not text:
        return text
    if text[0].islower():
        text = text[0].upper() + text[1:]
    if text[-1] not in ".!?…":
        text += "."
    return text


class Composer(QPlainTextEdit):
    """Enter sends, Shift+Enter breaks the line, Escape cancels an edit or a reply
    (`escape_pressed`); pasted or dropped files attach.

    While `blocked` (a sentence saying why nothing can be sent here) it takes no
    input and shows the sentence in place of the text; the draft comes back when
    it is unblocked."""

    send_requested = Signal(str)
    files_attached = Signal(list)  # list[Path]
    image_pasted = Signal(QImage)  # a pasted picture that has no file
    escape_pressed = Signal()  # the window cancels an edit or a reply

    def __init__(self) -> None:
        super().__init__()
        self.setPlaceholderText("Message")
        self.setAccessibleName("Message")
        self.setAcceptDrops(True)
        self.setTabChangesFocus(True)
        self.setMaximumHeight(72)
        self.setMinimumHeight(40)
        self.blocked = ""
        self._draft = ""

    def set_blocked(self, sentence: str) -> None:
        """Blocks sending with `sentence` as the reason, or unblocks with ""."""
        if sentence == self.blocked:
            return
        if sentence and not self.blocked:
            self._draft = self.toPlainText()
            self.clear()
        self.blocked = sentence
        self.setReadOnly(bool(sentence))
        self.setAcceptDrops(not sentence)
        self.setPlaceholderText(sentence or "Message")
        self.setToolTip(sentence)
        if not sentence:
            self.setPlainText(self._draft)
            self._draft = ""

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape and not event.modifiers():
            self.escape_pressed.emit()
            return
        is_enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if is_enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submit()
            return
        super().keyPressEvent(event)

    def submit(self) -> None:
        text = self.toPlainText().strip()
        if text and not self.blocked:
            self.send_requested.emit(text)
            self.clear()

    def _files_of(self, mime: QMimeData) -> list[Path]:
        return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return (
            bool(self._files_of(source))
            or source.hasImage()
            or super().canInsertFromMimeData(source)
        )

    def insertFromMimeData(self, source: QMimeData) -> None:
        files = self._files_of(source)
        if files:
            if not self.blocked:
                self.files_attached.emit(files)
            return
        if source.hasImage() and not source.hasText():
            # A screenshot from the clipboard: staged like a file, never written
            # to one (app.ui.attachments keeps it in memory until encrypted).
            image = source.imageData()
            if isinstance(image, QImage) and not image.isNull() and not self.blocked:
                self.image_pasted.emit(image)
            return
        super().insertFromMimeData(source)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if self._files_of(event.mimeData()):
            event.acceptProposedAction()
            return
        super().dragEnterEvent(event)

    def dropEvent(self, event: QDropEvent) -> None:
        files = self._files_of(event.mimeData())
        if files:
            self.files_attached.emit(files)
            event.acceptProposedAction()
            return
        super().dropEvent(event)


class Banner(QFrame):
    """A warning strip with up to two actions, e.g. a changed safety number. A
    banner that is not `dismissible` (sending blocked) has no "Dismiss"."""

    primary_clicked = Signal()
    dismissed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("banner")
        self.setStyleSheet(
            "#banner { background: #fff4ce; border-bottom: 1px solid #e0c060; }"
            "#banner QLabel { color: #4a3b00; }"
        )
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 12, 6)
        self.text = QLabel()
        self.text.setWordWrap(True)
        layout.addWidget(self.text, 1)
        self.primary = QPushButton()
        self.primary.clicked.connect(self.primary_clicked)
        layout.addWidget(self.primary)
        self.dismiss = QPushButton("Dismiss")
        self.dismiss.clicked.connect(self.dismissed)
        layout.addWidget(self.dismiss)
        self.hide()

    def show_message(self, text: str, action: str, *, dismissible: bool = True) -> None:
        self.text.setText(text)
        self.primary.setText(action)
        self.dismiss.setVisible(dismissible)
        self.show()


class ErrorBar(QFrame):
    """An error that stays until it is dismissed or replaced by the next one.

    The status bar's timed messages vanish while the reader looks elsewhere; what
    went wrong (a chat that could not start, a file that was not sent) must still
    be there when they look back."""

    dismissed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("errorBar")
        self.setStyleSheet(
            "#errorBar { background: #fde7e9; border-bottom: 1px solid #e8a0a6; }"
            "#errorBar QLabel { color: #8c1d18; }"
        )
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 6, 6)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.text, 1)
        self.close_button = QToolButton()
        self.close_button.setText("✕")
        self.close_button.setAutoRaise(True)
        self.close_button.setToolTip("Dismiss this error")
        self.close_button.setAccessibleName("Dismiss this error")
        self.close_button.clicked.connect(self.dismiss)
        layout.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_error(self, text: str) -> None:
        self.text.setText(sentence(text))
        self.setAccessibleDescription(self.text.text())
        self.show()

    def dismiss(self) -> None:
        self.hide()
        self.text.clear()
        self.dismissed.emit()


def qr_pixmap(payload: bytes, *, scale: int = 5) -> QPixmap:
    """The QR code of a safety-number payload, drawn by segno (a maintained encoder)."""
    buffer = io.BytesIO()
    segno.make(payload, error="m", micro=False).save(buffer, kind="png", scale=scale, border=2)
    image = QImage()
    image.loadFromData(buffer.getvalue())
    return QPixmap.fromImage(image)


class QrLabel(QLabel):
    def __init__(self, payload: bytes, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.payload = payload
        self.setPixmap(qr_pixmap(payload))
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)


class LockScreen(QWidget):
    """Covers the window while the app is locked; only the passphrase opens it."""

    unlock_requested = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        title = QLabel("<h2>Cipherline is locked</h2>")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(title)
        self.passphrase = QLineEdit()
        self.passphrase.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase.setPlaceholderText("Passphrase")
        self.passphrase.setAccessibleName("Passphrase")
        self.passphrase.setFixedWidth(300)
        layout.addWidget(self.passphrase, 0, Qt.AlignmentFlag.AlignHCenter)
        self.error = QLabel()
        self.error.setStyleSheet("color: #b3261e;")
        self.error.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.error)
        self.unlock_button = QPushButton("Unlock")
        layout.addWidget(self.unlock_button, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addStretch(1)
        self.unlock_button.clicked.connect(self._submit)
        self.passphrase.returnPressed.connect(self._submit)

    def reset(self) -> None:
        self.passphrase.clear()
        self.error.clear()
        self.unlock_button.setEnabled(True)
        self.passphrase.setFocus()

    def _submit(self) -> None:
        self.unlock_button.setEnabled(False)
        self.unlock_requested.emit(self.passphrase.text())

    def show_error(self, text: str) -> None:
        self.unlock_button.setEnabled(True)
        self.passphrase.selectAll()
        self.error.setText(text)
