"""Attachments in the chat window (issue #24): the staging bar over the composer
(picked, dropped or pasted files wait there with a caption until Send), the
thumbnails an image is sent with and the cache that decodes them for the
bubbles, dropping files on the chat, the in-app image viewer, and the folders
file dialogs start in.

Images are read, scaled and encoded with QImage on pool threads (QImage, unlike
QPixmap, is safe off the GUI thread); widgets only ever get the small results.
Nothing here writes a file: a pasted image and every thumbnail stay in memory
until the services encrypt them into the profile.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import (
    QBuffer,
    QByteArray,
    QEvent,
    QIODevice,
    QMimeData,
    QObject,
    QSize,
    QStandardPaths,
    Qt,
    QThreadPool,
    Signal,
)
from PySide6.QtGui import (
    QColor,
    QDragEnterEvent,
    QDropEvent,
    QImage,
    QImageReader,
    QPainter,
    QPixmap,
)
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.protocol.content import MAX_THUMBNAIL_BYTES, MAX_THUMBNAIL_SIDE
from app.services.views import Thumbnail
from app.sizes import format_size
from app.ui.workers import run_in_pool

# How big a thumbnail is drawn in a bubble, at most (it is sent at up to 256 px).
BUBBLE_IMAGE_SIDE = 240
# The staging bar's preview of each file.
PREVIEW_SIDE = 56
# Larger pictures are read scaled down by the decoder (QImageReader.setScaledSize)
# rather than whole: a 50-megapixel photo never sits in memory at full size.
_READ_SIDE = 2 * MAX_THUMBNAIL_SIDE


# ---- making thumbnails (pool threads) -------------------------------------------
def make_thumbnail(image: QImage) -> Thumbnail | None:
    """`image` as a JPEG of at most MAX_THUMBNAIL_SIDE a side and MAX_THUMBNAIL_BYTES,
    transparency flattened onto white; smaller and blurrier until it fits."""
    if image.isNull():
        return None
    side = MAX_THUMBNAIL_SIDE
    while side >= 32:
        scaled = image
        if image.width() > side or image.height() > side:
            scaled = image.scaled(
                side,
                side,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
        flat = QImage(scaled.size(), QImage.Format.Format_RGB32)
        flat.fill(QColor("white"))
        painter = QPainter(flat)
        painter.drawImage(0, 0, scaled)
        painter.end()
        for quality in (80, 65, 50, 35):
            data = _encode(flat, "JPEG", quality)
            if 0 < len(data) <= MAX_THUMBNAIL_BYTES:
                return Thumbnail(data, flat.width(), flat.height())
        side = side * 3 // 4
    return None


def _encode(image: QImage, kind: str, quality: int = -1) -> bytes:
    array = QByteArray()
    buffer = QBuffer(array)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    # PySide6 takes the format as str at run time, whatever its stubs say.
    image.save(buffer, kind, quality)  # type: ignore[call-overload]
    buffer.close()
    return bytes(array.data())


@dataclass(frozen=True)
class StagedFile:
    """A file waiting in the staging bar: a path, or the bytes of a pasted image."""

    name: str
    size: int
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    thumbnail: Thumbnail | None = None


def _read_image(reader: QImageReader) -> QImage:
    reader.setAutoTransform(True)  # a phone photo's EXIF rotation
    size = reader.size()
    if size.isValid() and max(size.width(), size.height()) > _READ_SIDE:
        reader.setScaledSize(
            size.scaled(_READ_SIDE, _READ_SIDE, Qt.AspectRatioMode.KeepAspectRatio)
        )
    return reader.read()


def prepare_file(path: Path) -> StagedFile:
    """Size and, for an image, thumbnail of `path` (a pool thread's work)."""
    size = path.stat().st_size
    thumbnail = None
    mime = mimetypes.guess_type(path.name)[0] or ""
    reader = QImageReader(str(path))
    if mime.startswith("image/") or reader.canRead():
        thumbnail = make_thumbnail(_read_image(reader))
    return StagedFile(path.name, size, path=path, thumbnail=thumbnail)


def prepare_pasted(image: QImage) -> StagedFile:
    """A pasted image as a PNG in memory, named by when it was pasted."""
    data = _encode(image, "PNG")
    name = dt.datetime.now().strftime("Pasted image %Y-%m-%d %H.%M.%S.png")
    return StagedFile(name, len(data), data=data, thumbnail=make_thumbnail(image))


def image_files(mime: QMimeData) -> list[Path]:
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]


# ---- the staging bar --------------------------------------------------------------
class _Chip(QFrame):
    """One staged file: its preview, name and size."""

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("stagedChip")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 4, 8, 4)
        self.preview = QLabel("…")
        self.preview.setFixedSize(PREVIEW_SIDE, PREVIEW_SIDE)
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setStyleSheet("background: palette(alternate-base); border-radius: 4px;")
        self.preview.setAccessibleName(f"Preview of {name}")
        texts = QVBoxLayout()
        self.name_label = QLabel(name)
        self.name_label.setTextFormat(Qt.TextFormat.PlainText)
        self.name_label.setStyleSheet("font-weight: bold;")
        self.size_label = QLabel("…")
        self.size_label.setStyleSheet("color: palette(placeholder-text);")
        texts.addWidget(self.name_label)
        texts.addWidget(self.size_label)
        layout.addWidget(self.preview)
        layout.addLayout(texts)

    def fill(self, staged: StagedFile) -> None:
        self.size_label.setText(format_size(staged.size))
        self.setAccessibleName(f"{staged.name}, {format_size(staged.size)}")
        if staged.thumbnail is not None:
            image = QImage.fromData(staged.thumbnail.data)
            self.preview.setPixmap(
                QPixmap.fromImage(image).scaled(
                    PREVIEW_SIDE,
                    PREVIEW_SIDE,
                    Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation,
                )
            )
        else:
            self.preview.setText("▣")


class StagingBar(QFrame):
    """Files about to be sent, over the composer (Signal's attachment preview):
    each with its name, size and, for an image, a thumbnail; a caption that goes
    with the first; Send, and × to drop them all. In the window, never modal."""

    send_requested = Signal(list, str)  # list[StagedFile], caption
    cancelled = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("stagingBar")
        self.setAccessibleName("Attachments to send")
        self.setStyleSheet("#stagingBar { border-top: 1px solid palette(mid); }")
        self.staged: list[StagedFile | None] = []
        self.chips: list[_Chip] = []
        self._generation = 0  # results of a cancelled staging are dropped
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(8, 6, 8, 0)
        top = QHBoxLayout()
        self.chip_row = QHBoxLayout()
        self.chip_row.setContentsMargins(0, 0, 0, 0)
        chips = QWidget()
        chips.setLayout(self.chip_row)
        scroll = QScrollArea()
        scroll.setWidget(chips)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setFixedHeight(PREVIEW_SIDE + 24)
        scroll.setAccessibleName("Staged files")
        top.addWidget(scroll, 1)
        self.cancel_button = QToolButton()
        self.cancel_button.setText("×")
        self.cancel_button.setToolTip("Remove the attachments")
        self.cancel_button.setAccessibleName("Remove the attachments")
        self.cancel_button.clicked.connect(self.cancel)
        top.addWidget(self.cancel_button, 0, Qt.AlignmentFlag.AlignTop)
        outer.addLayout(top)
        bottom = QHBoxLayout()
        self.caption = QLineEdit()
        self.caption.setPlaceholderText("Add a caption…")
        self.caption.setAccessibleName("Caption")
        self.caption.returnPressed.connect(self.submit)
        self.send_button = QPushButton("Send")
        self.send_button.setAccessibleName("Send attachments")
        self.send_button.clicked.connect(self.submit)
        bottom.addWidget(self.caption, 1)
        bottom.addWidget(self.send_button)
        outer.addLayout(bottom)
        self.hide()

    @property
    def ready(self) -> bool:
        return bool(self.staged) and all(item is not None for item in self.staged)

    def stage_files(self, paths: list[Path]) -> None:
        for path in paths:
            self._stage(path.name, lambda path=path: prepare_file(path))

    def stage_image(self, image: QImage) -> None:
        """A pasted image (no file): encoded to PNG in memory on a pool thread."""
        image = image.copy()  # the clipboard's may change under the worker
        self._stage("Pasted image", lambda: prepare_pasted(image))

    def _stage(self, name: str, prepare: object) -> None:
        index = len(self.staged)
        generation = self._generation
        self.staged.append(None)
        chip = _Chip(name)
        self.chips.append(chip)
        self.chip_row.insertWidget(index, chip)
        self.send_button.setEnabled(False)
        self.show()
        self.caption.setFocus()

        def done(staged: StagedFile) -> None:
            if generation != self._generation:
                return
            self.staged[index] = staged
            chip.name_label.setText(staged.name)
            chip.fill(staged)
            self.send_button.setEnabled(self.ready)

        def failed(error: BaseException) -> None:
            if generation != self._generation:
                return
            chip.size_label.setText("Cannot be read")
            chip.setAccessibleName(f"{name} cannot be read")
            # Dropped from what is sent; the rest may still go.
            self.staged[index] = StagedFile(name, -1)
            self.send_button.setEnabled(any(s is not None and s.size >= 0 for s in self.staged))

        run_in_pool(prepare, done, failed, self.pool)  # type: ignore[arg-type]

    def submit(self) -> None:
        if not self.send_button.isEnabled() or not self.staged:
            return
        files = [item for item in self.staged if item is not None and item.size >= 0]
        caption = self.caption.text().strip()
        self._clear()
        if files:
            self.send_requested.emit(files, caption)

    def cancel(self) -> None:
        if self.staged:
            self._clear()
            self.cancelled.emit()

    def _clear(self) -> None:
        self._generation += 1
        self.staged = []
        for chip in self.chips:
            chip.deleteLater()
        self.chips = []
        self.caption.clear()
        self.hide()


# ---- dropping files on the chat ---------------------------------------------------
class FileDropFilter(QObject):
    """Makes a widget (the whole chat) take dropped files: emits `files_dropped`."""

    files_dropped = Signal(list)  # list[Path]

    def __init__(self, target: QWidget) -> None:
        super().__init__(target)
        target.setAcceptDrops(True)
        target.installEventFilter(self)
        self.enabled = True

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove):
            assert isinstance(event, QDragEnterEvent | QDropEvent)
            if self.enabled and image_files(event.mimeData()):
                event.acceptProposedAction()
                return True
        elif kind == QEvent.Type.Drop:
            assert isinstance(event, QDropEvent)
            files = image_files(event.mimeData())
            if self.enabled and files:
                event.acceptProposedAction()
                self.files_dropped.emit(files)
                return True
        return False


# ---- thumbnails in the bubbles ----------------------------------------------------
def bubble_size(thumbnail: Thumbnail) -> QSize:
    """The box a thumbnail is drawn in: its announced size, fitted to
    BUBBLE_IMAGE_SIDE (known without decoding, so rows are laid out at once)."""
    width = max(1, thumbnail.width)
    height = max(1, thumbnail.height)
    scale = min(1.0, BUBBLE_IMAGE_SIDE / width, BUBBLE_IMAGE_SIDE / height)
    return QSize(max(24, round(width * scale)), max(24, round(height * scale)))


def _decode(data: bytes, size: QSize) -> QImage:
    image = QImage.fromData(data)
    if image.isNull():
        raise ValueError("not an image")
    # Drawn at exactly this size, whatever the sender's bytes decode to: painting
    # is then a copy, never a scale on the GUI thread.
    return image.scaled(
        size, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation
    ).convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)


class ThumbnailCache(QObject):
    """Decoded thumbnails by attachment id, decoded on a pool thread on first
    sight; `ready` says a row can repaint. The oldest are forgotten past LIMIT."""

    ready = Signal(int)  # attachment id
    LIMIT = 400

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._images: OrderedDict[int, QImage | None] = OrderedDict()
        self._pending: set[int] = set()
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)

    def image(self, attachment_id: int, thumbnail: Thumbnail) -> QImage | None:
        """The decoded thumbnail, or None while it is decoded (or undecodable)."""
        if attachment_id in self._images:
            self._images.move_to_end(attachment_id)
            return self._images[attachment_id]
        if attachment_id not in self._pending:
            self._pending.add(attachment_id)
            data, size = thumbnail.data, bubble_size(thumbnail)
            run_in_pool(
                lambda: _decode(data, size),
                lambda image: self._store(attachment_id, image),
                lambda _error: self._store(attachment_id, None),
                self.pool,
            )
        return None

    def _store(self, attachment_id: int, image: QImage | None) -> None:
        self._pending.discard(attachment_id)
        self._images[attachment_id] = image
        while len(self._images) > self.LIMIT:
            self._images.popitem(last=False)
        self.ready.emit(attachment_id)

    def idle(self) -> bool:
        return not self._pending


# ---- the image viewer -------------------------------------------------------------
class ImageViewer(QDialog):
    """ "Open" on an image: the picture, decrypted into memory only (a file handed to
    another program would be plaintext on disk), decoded on a pool thread."""

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(name)
        self.setAccessibleName(f"Image {name}")
        self.resize(800, 600)
        layout = QVBoxLayout(self)
        self.label = QLabel("Opening…")
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setAccessibleName(name)
        layout.addWidget(self.label, 1)
        self.image = QImage()

    def show_data(self, data: bytes) -> None:
        def decode() -> QImage:
            reader_buffer = QBuffer()
            reader_buffer.setData(QByteArray(data))
            reader_buffer.open(QIODevice.OpenModeFlag.ReadOnly)
            reader = QImageReader(reader_buffer)
            reader.setAutoTransform(True)
            size = reader.size()
            if size.isValid() and max(size.width(), size.height()) > 4096:
                reader.setScaledSize(size.scaled(4096, 4096, Qt.AspectRatioMode.KeepAspectRatio))
            return reader.read()

        run_in_pool(decode, self._decoded, lambda _e: self.label.setText("Cannot show this image."))

    def _decoded(self, image: QImage) -> None:
        if image.isNull():
            self.label.setText("Cannot show this image.")
            return
        self.image = image
        self.label.setPixmap(
            QPixmap.fromImage(image).scaled(
                self.label.size(),
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
        )


# ---- where file dialogs start -----------------------------------------------------
def start_folder(last: Path | None, *kinds: QStandardPaths.StandardLocation) -> Path:
    """The folder a file dialog opens in: the last one used, else the first of
    `kinds` that exists (Pictures, Downloads…), else home; never the working
    directory, which for a desktop app is wherever it was launched from."""
    if last is not None and last.is_dir():
        return last
    for kind in (*kinds, QStandardPaths.StandardLocation.HomeLocation):
        location = QStandardPaths.writableLocation(kind)
        if location and Path(location).is_dir():
            return Path(location)
    return Path.home()
