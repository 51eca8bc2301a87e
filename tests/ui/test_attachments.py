"""Attachments in the desktop chat (issue #24), offscreen, against a real relay:
the staging bar (name, size, thumbnail, caption, Send, ×), dropping files on the
chat, where file dialogs start, and what a click or right-click on an
attachment bubble does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication, QFileDialog, QStyleOptionViewItem
from pytestqt.qtbot import QtBot

from app.protocol.content import MAX_THUMBNAIL_BYTES, MAX_THUMBNAIL_SIDE
from app.services.views import MessageView
from app.sizes import format_size
from app.ui.attachments import ImageViewer, make_thumbnail
from app.ui.bridge import ClientBridge
from app.ui.main_window import MainWindow
from tests.services.helpers import Person, wait_for
from tests.support.components import RelayProcess
from tests.ui.test_accessibility import unnamed_controls


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    cast = {name: Person(tmp_path, name, relay) for name in ("alice", "bob")}
    yield cast
    for person in cast.values():
        person.stop()


def _rows(window: MainWindow) -> list[MessageView]:
    model = window.messages
    return [m for m in (model.message_at(r) for r in range(model.rowCount())) if m is not None]


def _picture(path: Path, width: int = 1200, height: int = 800) -> Path:
    image = QImage(width, height, QImage.Format.Format_RGB32)
    image.fill(QColor("#2c6bed"))
    for x in range(0, width, 40):
        for y in range(height):
            image.setPixelColor(x, y, QColor("orange"))
    assert image.save(str(path), "PNG")  # type: ignore[arg-type]
    return path


def _window(qtbot: QtBot, people: dict[str, Person]) -> MainWindow:
    alice = people["alice"]
    chat = alice.client.start_direct("bob").result(20)
    window = MainWindow(ClientBridge(alice.client))
    qtbot.addWidget(window)
    window.resize(1000, 760)
    window.show()
    window.open_conversation(chat.conversation_id)
    qtbot.waitUntil(lambda: window.chat_stack.currentIndex() == 1, timeout=15_000)
    return window


def _option(window: MainWindow, row: int) -> QStyleOptionViewItem:
    option = QStyleOptionViewItem()
    window.message_view.initViewItemOption(option)
    option.rect = window.message_view.visualRect(window.messages.index(row))
    return option


def _bob_attachment(bob: Person) -> MessageView | None:
    chats = [c for c in bob.client.conversations().result() if c.title == "alice"]
    if not chats:
        return None
    _view, messages = bob.client.open_conversation(chats[0].conversation_id).result()
    return next((m for m in messages if m.attachment is not None), None)


def test_thumbnails_are_small_jpegs_that_fit(tmp_path: Path) -> None:
    image = QImage(str(_picture(tmp_path / "big.png", 3000, 1000)))
    thumbnail = make_thumbnail(image)
    assert thumbnail is not None
    assert (thumbnail.width, thumbnail.height) == (MAX_THUMBNAIL_SIDE, 85)
    assert thumbnail.data.startswith(b"\xff\xd8") and len(thumbnail.data) <= MAX_THUMBNAIL_BYTES
    # Noise compresses badly: it still fits, smaller or blurrier.
    noise = QImage(2000, 2000, QImage.Format.Format_RGB32)
    noise_bytes = os.urandom(2000 * 2000 * 4)
    for y in range(0, 2000, 7):
        for x in range(0, 2000, 7):
            noise.setPixel(x, y, int.from_bytes(noise_bytes[(y * 2000 + x) * 4 :][:4], "big"))
    noisy = make_thumbnail(noise)
    assert noisy is not None and len(noisy.data) <= MAX_THUMBNAIL_BYTES


def test_staging_bar_caption_send_and_cancel(
    qtbot: QtBot, people: dict[str, Person], tmp_path: Path
) -> None:
    window = _window(qtbot, people)
    photo = _picture(tmp_path / "harbour.png")
    window.stage_files([photo])
    bar = window.staging_bar
    assert bar.isVisible()
    qtbot.waitUntil(lambda: bar.ready, timeout=10_000)
    chip = bar.chips[0]
    assert chip.name_label.text() == "harbour.png"
    assert chip.size_label.text() == format_size(photo.stat().st_size)
    pixmap = chip.preview.pixmap()
    assert not pixmap.isNull() and max(pixmap.width(), pixmap.height()) <= chip.preview.width()
    assert unnamed_controls(window) == []
    assert _rows(window) == [], "nothing is sent before Send"

    qtbot.keyClicks(bar.caption, "the harbour at dusk")
    qtbot.mouseClick(bar.send_button, Qt.MouseButton.LeftButton)
    assert not bar.isVisible()
    qtbot.waitUntil(lambda: len(_rows(window)) == 1, timeout=20_000)
    sent = _rows(window)[0]
    assert sent.body == "the harbour at dusk"
    assert sent.attachment is not None and sent.attachment.thumbnail is not None
    assert sent.attachment.filename == "harbour.png"
    bob = people["bob"]
    wait_for(lambda: _bob_attachment(bob), timeout=30, what="bob receives the picture")
    at_bob = _bob_attachment(bob)
    assert at_bob is not None and at_bob.body == "the harbour at dusk"
    assert at_bob.attachment is not None
    assert at_bob.attachment.thumbnail == sent.attachment.thumbnail

    # × drops what was staged: nothing goes out.
    window.stage_files([tmp_path / "harbour.png"])
    qtbot.waitUntil(lambda: bar.ready, timeout=10_000)
    qtbot.keyClicks(bar.caption, "never mind")
    qtbot.mouseClick(bar.cancel_button, Qt.MouseButton.LeftButton)
    assert not bar.isVisible() and bar.staged == [] and bar.caption.text() == ""
    qtbot.wait(500)
    assert len(_rows(window)) == 1


def test_dropping_files_on_the_chat_stages_them(
    qtbot: QtBot, people: dict[str, Person], tmp_path: Path
) -> None:
    window = _window(qtbot, people)
    document = tmp_path / "plan.txt"
    document.write_bytes(b"the plan " * 50)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(document))])
    target = window.chat_page
    point = QPointF(target.width() / 2, target.height() / 2)
    enter = QDragEnterEvent(
        point.toPoint(),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(target, enter)
    assert enter.isAccepted()
    drop = QDropEvent(
        point,
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(target, drop)
    assert drop.isAccepted()
    bar = window.staging_bar
    assert bar.isVisible()
    qtbot.waitUntil(lambda: bar.ready, timeout=10_000)
    assert bar.chips[0].name_label.text() == "plan.txt"
    assert bar.chips[0].size_label.text() == format_size(450)
    assert _rows(window) == []
    # Text is not a file: the chat does not take it.
    text = QMimeData()
    text.setText("just words")
    refused = QDragEnterEvent(
        point.toPoint(),
        Qt.DropAction.CopyAction,
        text,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(target, refused)
    assert not refused.isAccepted()


def test_the_attach_dialog_does_not_block_and_starts_outside_the_working_directory(
    qtbot: QtBot, people: dict[str, Person], tmp_path: Path
) -> None:
    window = _window(qtbot, people)
    qtbot.mouseClick(window.attach_button, Qt.MouseButton.LeftButton)
    dialog = window.file_dialog
    assert dialog is not None and dialog.isVisible()  # open() returned: not exec()
    assert Path(dialog.directory().absolutePath()) != Path.cwd()
    assert dialog.fileMode() == QFileDialog.FileMode.ExistingFiles
    photo = _picture(tmp_path / "pick.png", 300, 200)
    dialog.filesSelected.emit([str(photo)])
    dialog.close()
    assert window.staging_bar.isVisible()
    # The next one starts where this one was.
    qtbot.mouseClick(window.attach_button, Qt.MouseButton.LeftButton)
    again = window.file_dialog
    assert again is not None and again is not dialog
    assert Path(again.directory().absolutePath()) == tmp_path
    again.close()


def test_only_the_attachment_area_opens_and_right_click_offers_save_and_open(
    qtbot: QtBot, people: dict[str, Person], tmp_path: Path
) -> None:
    window = _window(qtbot, people)
    document = tmp_path / "notes.txt"
    document.write_bytes(b"notes " * 100)
    window.stage_files([_picture(tmp_path / "view.png", 600, 400), document])
    qtbot.waitUntil(lambda: window.staging_bar.ready, timeout=10_000)
    qtbot.keyClicks(window.staging_bar.caption, "a long caption under the picture")
    qtbot.keyClick(window.staging_bar.caption, Qt.Key.Key_Return)
    qtbot.waitUntil(
        lambda: (
            len(_rows(window)) == 2
            and all(m.attachment is not None and m.attachment.ready for m in _rows(window))
        ),
        timeout=20_000,
    )
    rows = _rows(window)
    picture_row = next(r for r, m in enumerate(rows) if m.attachment.filename == "view.png")  # type: ignore[union-attr]
    file_row = next(r for r, m in enumerate(rows) if m.attachment.filename == "notes.txt")  # type: ignore[union-attr]
    assert rows[picture_row].body == "a long caption under the picture"
    assert rows[file_row].body == ""  # the caption went with the first file only
    window.message_view.scrollToBottom()
    viewport = window.message_view.viewport()

    # The thumbnail is decoded off the GUI thread and then drawn.
    picture = rows[picture_row].attachment
    assert picture is not None and picture.thumbnail is not None
    qtbot.waitUntil(
        lambda: (
            window.message_delegate.thumbnails.image(picture.attachment_id, picture.thumbnail)
            is not None
        ),
        timeout=10_000,
    )

    for row in (picture_row, file_row):
        window.message_view.scrollTo(window.messages.index(row))
        layout = window.message_delegate.layout(_option(window, row), window.messages.index(row))
        assert layout is not None and layout.attachment is not None
        # The caption or footer: on the bubble, off the attachment. Nothing opens.
        elsewhere = QPoint(layout.attachment.left() + 2, layout.footer.center().y())
        assert layout.bubble.contains(QPointF(elsewhere))
        assert not layout.attachment.contains(elsewhere)
        qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=elsewhere)
        qtbot.wait(100)
        assert window.file_dialog is None and window.image_viewer is None

    # A click on the file chip: Save as…, without blocking, in Downloads (or home).
    window.message_view.scrollTo(window.messages.index(file_row))
    layout = window.message_delegate.layout(
        _option(window, file_row), window.messages.index(file_row)
    )
    assert layout is not None and layout.attachment is not None
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=layout.attachment.center())
    dialog = window.file_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.acceptMode() == QFileDialog.AcceptMode.AcceptSave
    assert Path(dialog.directory().absolutePath()) != Path.cwd()
    saved = tmp_path / "saved-notes.txt"
    dialog.fileSelected.emit(str(saved))
    dialog.close()
    qtbot.waitUntil(saved.exists, timeout=10_000)
    assert saved.read_bytes() == document.read_bytes()

    # A click on the thumbnail: the picture opens in the app, from memory.
    window.message_view.scrollTo(window.messages.index(picture_row))
    layout = window.message_delegate.layout(
        _option(window, picture_row), window.messages.index(picture_row)
    )
    assert layout is not None and layout.attachment is not None
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=layout.attachment.center())
    viewer = window.image_viewer
    assert isinstance(viewer, ImageViewer)
    qtbot.waitUntil(lambda: not viewer.image.isNull(), timeout=10_000)
    assert (viewer.image.width(), viewer.image.height()) == (600, 400)
    assert unnamed_controls(viewer) == []
    viewer.close()

    # Right-click: the message menu gains Save as… and Open.
    window.message_menu = None
    window.message_view.customContextMenuRequested.emit(layout.bubble.center().toPoint())
    qtbot.waitUntil(lambda: window.message_menu is not None, timeout=5_000)
    menu = window.message_menu
    assert menu is not None
    save, open_ = menu.action_named("Save as…"), menu.action_named("Open")
    assert save is not None and save.isEnabled()
    assert open_ is not None and open_.isEnabled()
    assert menu.action_named("Reply") is not None  # the existing entries stay
    menu.close()
    save.trigger()
    assert window.file_dialog is not None and window.file_dialog is not dialog
    assert window.file_dialog.acceptMode() == QFileDialog.AcceptMode.AcceptSave
    # The save dialog starts where the last one saved.
    assert Path(window.file_dialog.directory().absolutePath()) == tmp_path
    window.file_dialog.close()
