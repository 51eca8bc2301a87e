"""Linking a second computer to an account (issue #19; docs/protocol.md §14).

- `LinkNewDeviceDialog`, on the computer being set up (the first-run screen's
  "Link to an existing account"): its name and how its history is protected, then
  the QR code and short code to enter on the other computer, the confirmation
  code, and the wait for approval. The launcher makes the profile once approved.
- `LinkExistingDeviceDialog`, in Settings → Devices on a computer of the account:
  the code pasted, typed or read from a picture, the new computer's name and the
  confirmation code, then Approve (with or without the message history) or
  Decline; once approved, how far the history has been sent.
- `UnlinkedScreen`, what the main window shows once this device was removed.

Every step that waits on the relay runs in a worker (app/ui/workers.py). Closing a
dialog cancels the step in flight; its relay connection is closed only once that
worker has returned, so no connection is closed under a thread still using it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shiboken6
import zxingcpp
from PySide6.QtCore import QCoreApplication, QStandardPaths, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.net import RelayClient
from app.services.account import Profile
from app.services.client import Client, HistoryTransferCancelled
from app.services.events import HistoryProgress
from app.services.linking import (
    ExistingDeviceLinking,
    LinkCancelled,
    LinkRequest,
    NewDeviceLinking,
)
from app.services.messenger import ServiceError
from app.ui.dialogs import ERROR_STYLE, NOTE_STYLE, HistoryProtection
from app.ui.widgets import qr_pixmap, sentence
from app.ui.workers import run_in_pool

# Codes people compare or copy by eye: large, monospace, one per line.
CODE_STYLE = "font-family: monospace; font-size: 22px; font-weight: bold;"
CONFIRMATION_STYLE = "font-family: monospace; font-size: 40px; font-weight: bold;"
# The relay keeps a link mailbox ten minutes (relay/server.py); used when its own
# clock disagrees with ours so much that its expiry time makes no sense here.
MAILBOX_LIFETIME_MS = 10 * 60_000
QR_SCALE = 6


def describe(error: BaseException) -> str:
    """A failed step as the sentence the dialogs show."""
    return sentence(Client.describe_error(error))


def _title(text: str) -> QLabel:
    label = QLabel(f"<h2>{text}</h2>")
    label.setWordWrap(True)
    return label


def _text(text: str = "", *, style: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    if style:
        label.setStyleSheet(style)
    return label


def _busy_bar(name: str) -> QProgressBar:
    bar = QProgressBar()
    bar.setRange(0, 0)  # no end known: the bar moves to show it is working
    bar.setTextVisible(False)
    bar.setMaximumHeight(8)
    bar.setAccessibleName(name)
    return bar


def _code_label(text: str, style: str, name: str) -> QLabel:
    label = QLabel(text)
    label.setStyleSheet(style)
    label.setAlignment(Qt.AlignmentFlag.AlignCenter)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setAccessibleName(name)
    return label


def _quoted(name: str) -> str:
    return f"“{name}”"


class PictureError(ValueError):
    """A picture without a readable Cipherline QR code; the text is a sentence."""


def read_qr_code(path: Path) -> str:
    """The text of the QR code in the picture at `path` (a screenshot or a photo),
    decoded by zxing-cpp. Prefers a Cipherline link code when the picture holds
    several codes. Raises PictureError with a sentence otherwise."""
    image = QImage(str(path))
    if image.isNull():
        raise PictureError(
            "That file is not a picture Cipherline can open. Choose a PNG or JPEG"
            " screenshot or photo of the code."
        )
    grey = image.convertToFormat(QImage.Format.Format_Grayscale8)
    width, height, stride = grey.width(), grey.height(), grey.bytesPerLine()
    pixels = memoryview(bytes(grey.constBits())).cast("B", (height, stride))
    view = zxingcpp.ImageView(pixels, width, height, zxingcpp.ImageFormat.Lum, stride, 1)
    qr_only = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
    found = [code.text for code in zxingcpp.read_barcodes(view, qr_only)]
    if not found:
        raise PictureError(
            "No QR code could be read in that picture. Try a sharper or closer picture,"
            " or type the code shown under the QR code instead."
        )
    linked = [text for text in found if text.lower().startswith("cipherline-link:")]
    return (linked or found)[0]


@dataclass(frozen=True)
class LinkApproval:
    """What the new-device dialog hands the launcher once the other computer
    approved: the link (holding the provision) and how to protect the history."""

    linking: NewDeviceLinking
    passphrase: str | None  # None: the system keyring protects the store key

    def __repr__(self) -> str:
        return "LinkApproval(<secrets hidden>)"


class _Steps(QDialog):
    """A stack of pages whose blocking steps run one at a time in workers.

    `_run` tags each step with the current attempt; "Start again" and closing
    begin a new attempt, so a step that reports late is ignored rather than
    moving a page that has moved on."""

    _progress = Signal(str)  # emitted on worker threads; delivered on the UI thread

    def __init__(self, parent: QWidget | None) -> None:
        super().__init__(parent)
        self.pages = QStackedWidget()
        self._attempt = 0
        self._in_flight = 0
        self._after_idle: list[Callable[[], None]] = []
        # A link step waits on the relay for minutes (for ever while it is
        # unreachable); Qt's thread pool holds the process at exit until its
        # workers return, so quitting must cancel it as closing the dialog does.
        application = QCoreApplication.instance()
        if application is not None:
            application.aboutToQuit.connect(self._quitting)

    @Slot()
    def _quitting(self) -> None:
        self._abandon()

    def _abandon(self) -> None:
        """Ends the link in flight (each dialog says how)."""
        self._attempt += 1

    def _page(self) -> tuple[QWidget, QVBoxLayout]:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        self.pages.addWidget(page)
        return page, layout

    def _cancel_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addStretch(1)
        button = QPushButton("Cancel")
        button.clicked.connect(self.reject)
        row.addWidget(button)
        return row

    def _failed_page(self, title: str, close_text: str) -> None:
        """FAILED: the sentence for what went wrong (`failure_label`), and a way to
        close (`failed_cancel`) or start again (`start_again_button`)."""
        _page, failed = self._page()
        failed.addWidget(_title(title))
        self.failure_label = _text()
        self.failure_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        failed.addWidget(self.failure_label)
        failed.addStretch(1)
        failed_buttons = QHBoxLayout()
        self.failed_cancel = QPushButton(close_text)
        self.start_again_button = QPushButton("Start again")
        failed_buttons.addStretch(1)
        failed_buttons.addWidget(self.failed_cancel)
        failed_buttons.addWidget(self.start_again_button)
        failed.addLayout(failed_buttons)

    def _run(
        self,
        work: Callable[[], Any],
        done: Callable[[Any], None],
        failed: Callable[[BaseException], None],
        *,
        stale: Callable[[Any], None] | None = None,
    ) -> None:
        """Runs `work` in a worker; `done` or `failed` hear of it if the dialog is
        still at this attempt, else `stale` gets a result nobody will use."""
        attempt = self._attempt
        self._in_flight += 1

        def finished(result: Any) -> None:
            self._settle()
            if self._current(attempt):
                done(result)
            elif stale is not None:
                stale(result)

        def error(problem: BaseException) -> None:
            self._settle()
            if self._current(attempt) and not isinstance(problem, LinkCancelled):
                failed(problem)

        run_in_pool(work, finished, error)

    def _current(self, attempt: int) -> bool:
        return attempt == self._attempt and shiboken6.isValid(self)

    def _settle(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            pending, self._after_idle = self._after_idle, []
            for step in pending:
                step()

    def _when_idle(self, step: Callable[[], None]) -> None:
        """Runs `step` once no worker of this dialog is running (now if none is)."""
        if self._in_flight == 0:
            step()
        else:
            self._after_idle.append(step)


# ---- the new computer -------------------------------------------------------------


class LinkNewDeviceDialog(_Steps):
    """Links this computer to an account on another: name and protection, the code
    to enter there, the confirmation code, the wait for approval. Emits `approved`
    with a LinkApproval; the launcher makes the profile and calls `show_failure`
    if that fails."""

    approved = Signal(object)  # LinkApproval

    SETUP, CODE, CONFIRM, FINISHING, FAILED = range(5)

    def __init__(
        self,
        profile: Profile,
        default_device: str,
        *,
        keyring_available: bool,
        keyring_problem: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.profile = profile
        self.setWindowTitle("Link to an existing account")
        self.setMinimumWidth(520)
        self.linking: NewDeviceLinking | None = None
        self.request: LinkRequest | None = None
        self.qr_text = ""
        self.short_code = ""
        self.confirmation_code = ""
        self.linked = False
        self._deadline = 0.0
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)

        # SETUP: this computer's name and how its history is protected.
        setup = QWidget()
        form = QFormLayout(setup)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(_title("Link to an existing account"))
        form.addRow(
            _text(
                "Use the account you already have on another computer here too. Your "
                "contacts and groups come over from it, and from then on your messages "
                "arrive on both computers. Your earlier messages can follow, if you "
                "choose to send them when you approve there."
            )
        )
        self.device_edit = QLineEdit(default_device)
        self.device_edit.setAccessibleName("This computer's name")
        form.addRow("This computer", self.device_edit)
        form.addRow(
            "",
            _text(
                "Your other computers show this name in their list of devices.",
                style=NOTE_STYLE,
            ),
        )
        self.protection = HistoryProtection(
            form, self, keyring_available=keyring_available, keyring_problem=keyring_problem
        )
        self.setup_error = _text(style=ERROR_STYLE)
        form.addRow(self.setup_error)
        setup_buttons = QHBoxLayout()
        self.setup_cancel = QPushButton("Cancel")
        self.continue_button = QPushButton("Continue")
        self.continue_button.setDefault(True)
        setup_buttons.addStretch(1)
        setup_buttons.addWidget(self.setup_cancel)
        setup_buttons.addWidget(self.continue_button)
        form.addRow(setup_buttons)
        self.pages.addWidget(setup)

        # CODE: the QR code and the same as a code to type.
        _page, code = self._page()
        code.addWidget(_title("Link this computer"))
        code.addWidget(
            _text(
                "On your other computer, open Settings → Devices → Link a new device, "
                "and scan this code or type the code below."
            )
        )
        self.qr_label = QLabel()
        self.qr_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.qr_label.setAccessibleName("QR code to scan on your other computer")
        self.qr_label.setMinimumHeight(230)
        code.addWidget(self.qr_label)
        row = QHBoxLayout()
        self.short_code_label = _code_label("", CODE_STYLE, "Link code")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the code, to paste it into a message to yourself")
        row.addStretch(1)
        row.addWidget(self.short_code_label)
        row.addWidget(self.copy_button)
        row.addStretch(1)
        code.addLayout(row)
        self.expiry_label = _text(style=NOTE_STYLE)
        self.expiry_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        code.addWidget(self.expiry_label)
        self.code_status = _text("Connecting to the relay…")
        self.code_status.setAlignment(Qt.AlignmentFlag.AlignCenter)
        code.addWidget(self.code_status)
        code.addWidget(_busy_bar("Waiting for your other computer"))
        code.addStretch(1)
        code.addLayout(self._cancel_row())

        # CONFIRM: the code both screens show.
        _page, confirm = self._page()
        confirm.addWidget(_title("Check the code"))
        confirm.addWidget(_text("Check that your other computer shows the same code:"))
        self.confirmation_label = _code_label("", CONFIRMATION_STYLE, "Confirmation code")
        confirm.addSpacing(12)
        confirm.addWidget(self.confirmation_label)
        confirm.addSpacing(12)
        confirm.addWidget(
            _text(
                "If it shows a different code, decline there: someone may be trying to "
                "link their computer to your account.",
                style=NOTE_STYLE,
            )
        )
        confirm.addSpacing(12)
        self.approval_status = _text("Waiting for approval on your other computer…")
        confirm.addWidget(self.approval_status)
        confirm.addWidget(_busy_bar("Waiting for approval on your other computer"))
        confirm.addStretch(1)
        confirm.addLayout(self._cancel_row())

        # FINISHING: the profile being made (by the launcher).
        _page, finishing = self._page()
        finishing.addWidget(_title("Setting up this computer"))
        finishing.addWidget(
            _text(
                "Approved. Your contacts and groups are being saved on this computer, "
                "encrypted, and this computer is being announced to them…"
            )
        )
        finishing.addWidget(_busy_bar("Setting up this computer"))
        finishing.addStretch(1)

        self._failed_page("This computer was not linked", "Cancel")

        self._countdown = QTimer(self)
        self._countdown.setInterval(1000)
        self._countdown.timeout.connect(self._tick)
        self.setup_cancel.clicked.connect(self.reject)
        self.failed_cancel.clicked.connect(self.reject)
        self.continue_button.clicked.connect(self._continue)
        self.device_edit.returnPressed.connect(self._continue)
        self.start_again_button.clicked.connect(self.start_again)
        self.copy_button.clicked.connect(self._copy)

    # ---- steps ------------------------------------------------------------------
    def _continue(self) -> None:
        if not self.device_edit.text().strip():
            self.setup_error.setText("Name this computer, for example “Desktop”.")
            return
        problem = self.protection.problem()
        if problem:
            self.setup_error.setText(problem)
            return
        self.setup_error.clear()
        self._open()

    def start_again(self) -> None:
        """A new code from a new mailbox; the name and protection chosen stay."""
        self._abandon()
        self._open()

    def _open(self) -> None:
        self._attempt += 1
        self.qr_label.clear()
        self.short_code_label.clear()
        self.expiry_label.clear()
        self.copy_button.setEnabled(False)
        self.code_status.setText("Connecting to the relay…")
        self.pages.setCurrentIndex(self.CODE)
        profile, name = self.profile, self.device_edit.text().strip()

        def work() -> tuple[NewDeviceLinking, LinkRequest]:
            # New identity keys are made here, off the UI thread.
            linking = NewDeviceLinking(profile, name)
            try:
                return linking, linking.open()
            except BaseException:
                linking.close()
                raise

        def opened(result: tuple[NewDeviceLinking, LinkRequest]) -> None:
            self.linking, self.request = result
            self._show_code(self.request)
            self._run(self.linking.wait_for_existing_device, self._answered, self.show_failure)

        def unused(result: tuple[NewDeviceLinking, LinkRequest]) -> None:
            # Opened after the dialog was closed or started again: nobody will
            # use this mailbox, so it is closed rather than left to expire.
            _in_background(result[0].close)

        self._run(work, opened, self.show_failure, stale=unused)

    def _show_code(self, request: LinkRequest) -> None:
        self.qr_text, self.short_code = request.qr_text, request.short_code
        self.qr_label.setPixmap(qr_pixmap(request.qr_text.encode("ascii"), scale=QR_SCALE))
        self.short_code_label.setText(request.short_code)
        # Squeezed by the Copy button, the code would be cut off: its own width,
        # in the style sheet's font (hence the polish first).
        self.short_code_label.ensurePolished()
        metrics = self.short_code_label.fontMetrics()
        self.short_code_label.setMinimumWidth(metrics.horizontalAdvance(request.short_code) + 12)
        self.copy_button.setEnabled(True)
        self.copy_button.setText("Copy")
        self.code_status.setText("Waiting for your other computer…")
        left_ms = request.expires_at - time.time() * 1000
        if not 0 < left_ms <= 2 * MAILBOX_LIFETIME_MS:
            left_ms = MAILBOX_LIFETIME_MS  # the relay's clock is off: its usual lifetime
        self._deadline = time.monotonic() + left_ms / 1000
        self._tick()
        self._countdown.start()

    def _tick(self) -> None:
        left = round(self._deadline - time.monotonic())
        if self.pages.currentIndex() != self.CODE:
            self._countdown.stop()
            return
        if left <= 0:
            self._countdown.stop()
            self._abandon()
            self.show_failure(
                ServiceError(
                    "The code expired before your other computer used it. Start again for"
                    " a new code."
                )
            )
            return
        minutes, seconds = divmod(left, 60)
        self.expiry_label.setText(
            f"This code expires in {minutes}:{seconds:02d}, and works only once."
        )

    def _answered(self, confirmation_code: str) -> None:
        self.confirmation_code = confirmation_code
        self.confirmation_label.setText(confirmation_code)
        self._countdown.stop()
        self.pages.setCurrentIndex(self.CONFIRM)
        assert self.linking is not None
        self._run(self.linking.wait_for_approval, self._approved, self.show_failure)

    def _approved(self, _provision: object) -> None:
        assert self.linking is not None
        self.pages.setCurrentIndex(self.FINISHING)
        self.approved.emit(LinkApproval(self.linking, self.protection.passphrase()))

    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(self.short_code)
        self.copy_button.setText("Copied")

    # ---- endings ------------------------------------------------------------------
    def show_failure(self, error: BaseException | str) -> None:
        """The sentence for what went wrong, with "Start again"."""
        self._countdown.stop()
        text = error if isinstance(error, str) else describe(error)
        self.failure_label.setText(sentence(text))
        self.pages.setCurrentIndex(self.FAILED)
        self.start_again_button.setDefault(True)

    def mark_linked(self) -> None:
        """The profile is made: closing the dialog now cancels nothing."""
        self.linked = True
        self.linking = None

    def _abandon(self) -> None:
        """Stops the current link: the waiting worker ends, then the mailbox is
        closed (the relay would drop it at expiry anyway)."""
        self._attempt += 1
        self._countdown.stop()
        linking, self.linking = self.linking, None
        if linking is None or self.linked:
            return
        linking.cancel()
        self._when_idle(lambda: _in_background(linking.close))

    def reject(self) -> None:
        if self.pages.currentIndex() == self.FINISHING and not self.linked:
            return  # the profile is being made; it cannot be stopped half way
        self._abandon()
        super().reject()


# ---- a computer of the account ------------------------------------------------------


class LinkExistingDeviceDialog(_Steps):
    """Settings → Devices → Link a new device: the code from the new computer, its
    name and the confirmation code, then Approve (it gets the account) or Decline.
    Emits `linked` with the new device's name once it is part of the account.

    Approving with "Also send my message history" checked starts the transfer in
    the client; the done page follows it through `show_history_progress` (fed the
    bridge's `history_progress` signal by the main window). The transfer belongs
    to the client, not to this dialog: closing the dialog leaves it running."""

    linked = Signal(str)
    # The transfer's future settled, on a client thread: its count, or the error.
    _history_ended = Signal(object)

    ENTER, WAITING, CONFIRM, WORKING, DONE, FAILED = range(6)

    def __init__(self, client: Client, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.setWindowTitle("Link a new device")
        self.setMinimumWidth(520)
        self.linking: ExistingDeviceLinking | None = None
        self.relay: RelayClient | None = None
        self.device_name = ""
        self.confirmation_code = ""
        self.file_dialog: QFileDialog | None = None
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)

        # ENTER: the code, pasted or typed, or read from a picture.
        _page, enter = self._page()
        enter.addWidget(_title("Link a new device"))
        enter.addWidget(
            _text(
                "On the new computer, start Cipherline and choose “Link to an existing "
                "account”. It shows a QR code and, under it, a code of letters and "
                "digits. Type or paste that code here, or open a picture of the QR code "
                "(a screenshot, or a photo taken with your phone)."
            )
        )
        self.code_edit = QLineEdit()
        self.code_edit.setPlaceholderText("ABCD-EFGH-JKLM-NPQR-STUV")
        self.code_edit.setAccessibleName("Link code from the new computer")
        self.code_edit.setStyleSheet("font-family: monospace; font-size: 16px;")
        self.code_edit.setClearButtonEnabled(True)
        enter.addWidget(self.code_edit)
        self.picture_button = QPushButton("Open a picture of the code…")
        picture_row = QHBoxLayout()
        picture_row.addWidget(self.picture_button)
        picture_row.addStretch(1)
        enter.addLayout(picture_row)
        self.enter_error = _text(style=ERROR_STYLE)
        enter.addWidget(self.enter_error)
        enter.addWidget(
            _text(
                "The new computer gets your contacts and groups, and receives your "
                "messages from then on. You will see its name and a code to compare "
                "before anything is sent.",
                style=NOTE_STYLE,
            )
        )
        enter.addStretch(1)
        enter_buttons = QHBoxLayout()
        self.enter_cancel = QPushButton("Cancel")
        self.continue_button = QPushButton("Continue")
        self.continue_button.setDefault(True)
        enter_buttons.addStretch(1)
        enter_buttons.addWidget(self.enter_cancel)
        enter_buttons.addWidget(self.continue_button)
        enter.addLayout(enter_buttons)

        # WAITING: for the new computer's answer.
        _page, waiting = self._page()
        waiting.addWidget(_title("Waiting for the new computer"))
        waiting.addWidget(
            _text(
                "The new computer is answering. This takes a few seconds; keep "
                "Cipherline open on both computers."
            )
        )
        waiting.addWidget(_busy_bar("Waiting for the new computer"))
        waiting.addStretch(1)
        waiting.addLayout(self._cancel_row())

        # CONFIRM: its name and the code both screens show.
        _page, confirm = self._page()
        self.confirm_title = _title("")
        self.confirm_title.setTextFormat(Qt.TextFormat.PlainText)
        self.confirm_title.setStyleSheet("font-size: 20px; font-weight: bold;")
        confirm.addWidget(self.confirm_title)
        confirm.addWidget(_text("The new computer should show this code:"))
        self.confirmation_label = _code_label("", CONFIRMATION_STYLE, "Confirmation code")
        confirm.addSpacing(12)
        confirm.addWidget(self.confirmation_label)
        confirm.addSpacing(12)
        confirm.addWidget(_text("Only approve if your new computer shows the same code."))
        confirm.addWidget(
            _text(
                "Approving gives it your contacts and groups, and it receives your "
                "messages from then on. You can remove it later in Settings → Devices.",
                style=NOTE_STYLE,
            )
        )
        confirm.addSpacing(6)
        # Checked by default (issue #19): a new computer with empty chats is what
        # people least expect. Its text names the device once it is known.
        self.history_box = QCheckBox("Also send my message history")
        self.history_box.setChecked(True)
        self.history_box.setToolTip(
            "Your earlier messages, end-to-end encrypted to the new computer; it goes on "
            "in the background and picks up again after a dropped connection."
        )
        confirm.addWidget(self.history_box)
        confirm.addStretch(1)
        decide = QHBoxLayout()
        self.decline_button = QPushButton("Decline")
        self.approve_button = QPushButton("Approve")
        decide.addStretch(1)
        decide.addWidget(self.decline_button)
        decide.addWidget(self.approve_button)
        confirm.addLayout(decide)

        # WORKING: approving or declining.
        _page, working = self._page()
        working.addWidget(_title("Linking"))
        self.progress_label = _text("Adding the device to your account…")
        working.addWidget(self.progress_label)
        working.addWidget(_busy_bar("Linking the new device"))
        working.addStretch(1)

        # DONE: linked, or declined.
        _page, done = self._page()
        self.done_title = _title("Linked")
        done.addWidget(self.done_title)
        self.done_label = _text()
        done.addWidget(self.done_label)
        # The history transfer, when one was asked for (hidden otherwise).
        self.history_panel = QWidget()
        history = QVBoxLayout(self.history_panel)
        history.setContentsMargins(0, 12, 0, 0)
        self.history_label = _text("Sending your message history…")
        history.addWidget(self.history_label)
        self.history_bar = QProgressBar()
        self.history_bar.setRange(0, 0)  # until the first count arrives
        self.history_bar.setTextVisible(False)
        self.history_bar.setMaximumHeight(10)
        self.history_bar.setAccessibleName("Message history sent")
        history.addWidget(self.history_bar)
        self.history_note = _text(
            "You can close this window: the history keeps being sent in the background.",
            style=NOTE_STYLE,
        )
        history.addWidget(self.history_note)
        self.history_panel.hide()
        done.addWidget(self.history_panel)
        self.history_transfer: Future[int] | None = None
        self.history_state: HistoryProgress | None = None
        self._history_wanted = False
        done.addStretch(1)
        self.close_button = QPushButton("Close")
        done_row = QHBoxLayout()
        done_row.addStretch(1)
        done_row.addWidget(self.close_button)
        done.addLayout(done_row)

        self._failed_page("The device was not linked", "Close")

        self._progress.connect(self.progress_label.setText)
        self._history_ended.connect(self._history_settled)
        self.enter_cancel.clicked.connect(self.reject)
        self.failed_cancel.clicked.connect(self.reject)
        self.close_button.clicked.connect(self.accept)
        self.continue_button.clicked.connect(self._continue)
        self.code_edit.returnPressed.connect(self._continue)
        self.picture_button.clicked.connect(self._choose_picture)
        self.approve_button.clicked.connect(self.approve)
        self.decline_button.clicked.connect(self.decline)
        self.start_again_button.clicked.connect(self.start_again)

    # ---- the code -----------------------------------------------------------------
    def _choose_picture(self) -> None:
        """The file picker, without blocking the window (QFileDialog.open)."""
        folder = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
        dialog = QFileDialog(self, "Open a picture of the code", folder)
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        dialog.setNameFilter("Pictures (*.png *.jpg *.jpeg *.bmp *.gif *.webp);;All files (*)")
        dialog.fileSelected.connect(lambda name: self.open_picture(Path(name)) if name else None)
        self.file_dialog = dialog
        dialog.open()

    def open_picture(self, path: Path) -> None:
        """Reads the QR code in the picture at `path` (off the UI thread: a photo
        can be large) and continues with it, or says why it could not."""
        self.enter_error.setText("Reading the picture…")
        self.picture_button.setEnabled(False)
        self.continue_button.setEnabled(False)

        def read(text: str) -> None:
            self.code_edit.setText(text)
            self._continue()

        def unreadable(error: BaseException) -> None:
            self._enter_ready()
            if isinstance(error, PictureError):
                self.enter_error.setText(str(error))
            else:
                self.enter_error.setText(f"The picture could not be read: {describe(error)}")

        self._run(lambda: read_qr_code(path), read, unreadable)

    def _enter_ready(self) -> None:
        self.picture_button.setEnabled(True)
        self.continue_button.setEnabled(True)

    def _continue(self) -> None:
        text = self.code_edit.text().strip()
        if not text:
            self.enter_error.setText("Type or paste the code shown on the new computer.")
            return
        self.enter_error.setText("Checking the code…")
        self.picture_button.setEnabled(False)
        self.continue_button.setEnabled(False)
        client = self.client
        profile_path = Path(client.messenger.profile)

        def work() -> tuple[ExistingDeviceLinking, RelayClient]:
            # A connection of its own: the link's long polls must not hold up the
            # client's, and closing it when the link ends leaves the client's alone.
            relay = Profile.load(profile_path).relay()
            linking = ExistingDeviceLinking(client, relay)
            try:
                linking.start(text)
            except BaseException:
                relay.close()
                raise
            return linking, relay

        self._run(work, self._started, self._refused_code)

    def _refused_code(self, error: BaseException) -> None:
        self._enter_ready()
        self.enter_error.setText(describe(error))

    def _started(self, result: tuple[ExistingDeviceLinking, RelayClient]) -> None:
        self.linking, self.relay = result
        self._enter_ready()
        self.enter_error.clear()
        self.pages.setCurrentIndex(self.WAITING)
        self._run(self.linking.wait_for_new_device, self._heard, self.show_failure)

    def _heard(self, result: tuple[str, str]) -> None:
        self.device_name, self.confirmation_code = result
        self.confirm_title.setText(f"Link {_quoted(self.device_name)}?")
        self.confirmation_label.setText(self.confirmation_code)
        self.history_box.setText(f"Also send my message history to {_quoted(self.device_name)}")
        self.pages.setCurrentIndex(self.CONFIRM)
        self.decline_button.setDefault(False)
        self.approve_button.setDefault(True)

    # ---- the decision -------------------------------------------------------------
    def approve(self) -> None:
        linking = self.linking
        if linking is None:
            return
        self.progress_label.setText("Adding the device to your account…")
        self.pages.setCurrentIndex(self.WORKING)
        name = self.device_name
        send_history = self.history_box.isChecked()
        # From here on: the transfer starts inside `approve`, on the client's
        # threads, so its first counts can arrive before `linked` runs.
        self._history_wanted = send_history

        def linked(_result: object) -> None:
            self._release()
            self.done_title.setText("<h2>Linked</h2>")
            self.done_label.setText(f"Linked. {_quoted(name)} now receives your messages.")
            if linking.history_transfer is not None:
                self._follow_history(linking.history_transfer)
            self.pages.setCurrentIndex(self.DONE)
            self.close_button.setDefault(True)
            self.linked.emit(name)

        self._run(
            lambda: linking.approve(progress=self._progress.emit, transfer_history=send_history),
            linked,
            self.show_failure,
        )

    # ---- the history transfer -------------------------------------------------------
    def _follow_history(self, transfer: Future[int]) -> None:
        self.history_transfer = transfer
        self.history_panel.show()
        if self.history_state is not None:
            self._show_history(self.history_state)

        def settled(finished: Future[int]) -> None:
            # On a client thread; the signal takes it to the UI thread.
            outcome: object = (
                finished.exception() if finished.exception() is not None else finished.result()
            )
            if shiboken6.isValid(self):
                self._history_ended.emit(outcome)

        transfer.add_done_callback(settled)

    @Slot(object)
    def show_history_progress(self, progress: HistoryProgress) -> None:
        """A `HistoryProgress` event from the client (the bridge's signal)."""
        if not progress.sending or not self._history_wanted:
            return
        self.history_state = progress
        if self.history_transfer is not None:
            self._show_history(progress)

    def _show_history(self, progress: HistoryProgress) -> None:
        if progress.finished:
            self.history_label.setText(f"Done: {progress.done_messages:,} messages sent.")
            self.history_bar.setRange(0, 1)
            self.history_bar.setValue(1)
            self.history_note.hide()
            return
        self.history_label.setText(
            f"Sending your message history… {progress.done_messages:,} of "
            f"{progress.total_messages:,} messages"
        )
        if progress.total_messages > 0:
            self.history_bar.setRange(0, progress.total_messages)
            self.history_bar.setValue(progress.done_messages)

    @Slot(object)
    def _history_settled(self, outcome: object) -> None:
        """The transfer's end as its future tells it: the count when no final event
        came through, else why it stopped."""
        if isinstance(outcome, int):
            if self.history_state is None or not self.history_state.finished:
                self._show_history(HistoryProgress(outcome, outcome, True, True))
            return
        self.history_note.hide()
        self.history_bar.setRange(0, 1)
        self.history_bar.setValue(0)
        if isinstance(outcome, HistoryTransferCancelled):
            # Stopped by the app closing: the client resumes it at its next start.
            self.history_label.setText(
                "Sending your message history stopped; it carries on the next time "
                "Cipherline starts here."
            )
        elif isinstance(outcome, BaseException):
            self.history_label.setText(f"Your message history was not sent: {describe(outcome)}")

    def decline(self) -> None:
        linking = self.linking
        if linking is None:
            return
        self.progress_label.setText("Telling the new computer…")
        self.pages.setCurrentIndex(self.WORKING)
        name = self.device_name

        def declined(_result: object) -> None:
            self._release()
            self.done_title.setText("<h2>Declined</h2>")
            self.done_label.setText(
                f"{_quoted(name)} was not linked and got nothing from your account."
            )
            self.pages.setCurrentIndex(self.DONE)

        self._run(linking.refuse, declined, self.show_failure)

    # ---- endings ------------------------------------------------------------------
    def start_again(self) -> None:
        self._abandon()
        self._enter_ready()
        self.enter_error.clear()
        self.code_edit.selectAll()
        self.pages.setCurrentIndex(self.ENTER)
        self.code_edit.setFocus()

    def show_failure(self, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else describe(error)
        self.failure_label.setText(sentence(text))
        self.pages.setCurrentIndex(self.FAILED)
        self._abandon()

    def _release(self) -> None:
        """The link is over: its connection is closed once no worker uses it."""
        self.linking = None
        relay, self.relay = self.relay, None
        if relay is not None:
            self._when_idle(relay.close)

    def _abandon(self) -> None:
        """Ends the link in flight: a wait is cancelled; a new computer that has
        answered but was neither approved nor declined is told it was declined,
        rather than left waiting until the code expires."""
        self._attempt += 1
        linking = self.linking
        if linking is not None:
            linking.cancel()
            if self.pages.currentIndex() == self.CONFIRM:
                self._when_idle(lambda: _in_background(linking.refuse))
        self._release()

    def reject(self) -> None:
        if self.pages.currentIndex() == self.WORKING:
            return  # approving or declining: it finishes in a moment either way
        self._abandon()
        super().reject()


def _ignore(_value: object) -> None:
    """For a worker's result that nobody uses."""


def _in_background(step: Callable[[], object]) -> None:
    """A best-effort step nobody waits for (closing a mailbox, a late refusal):
    the relay drops an abandoned mailbox at expiry anyway."""
    run_in_pool(step, _ignore, _ignore)


# ---- this device was removed ----------------------------------------------------------


class UnlinkedScreen(QWidget):
    """Covers the main window once another device removed this one: nothing here
    can be sent or received any more, so there is no way back in from it."""

    quit_requested = Signal()

    def __init__(self, reason: str = "") -> None:
        super().__init__()
        self.reason = reason
        # A column of fixed width: wrapped labels placed with an alignment flag
        # are not given the height their wrapped text needs, and overlap.
        column = QWidget()
        column.setFixedWidth(540)
        inner = QVBoxLayout(column)
        title = QLabel("<h2>This device is no longer linked</h2>")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        inner.addWidget(title)
        self.message = _text(
            "This device was removed from your account on another device. It no longer "
            "receives your messages and has been signed out. The history already on this "
            "computer stays here, encrypted."
        )
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        inner.addWidget(self.message)
        self.hint = _text(
            "To use your account here again, start Cipherline with a new profile "
            "(cipherline --profile NAME), choose “Link to an existing account” and "
            "approve it on your other device.",
            style=NOTE_STYLE,
        )
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        inner.addWidget(self.hint)
        inner.addSpacing(12)
        self.quit_button = QPushButton("Quit Cipherline")
        button_row = QHBoxLayout()
        button_row.addStretch(1)
        button_row.addWidget(self.quit_button)
        button_row.addStretch(1)
        inner.addLayout(button_row)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(column)
        row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        layout.addLayout(row)
        layout.addStretch(1)
        self.quit_button.clicked.connect(self.quit_requested)
