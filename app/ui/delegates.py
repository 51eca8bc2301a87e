"""Painting of conversation rows and message bubbles.

Sizes come from the same text layout that paints, so rows never clip; the
palette decides the colours, so the system's dark or light theme just works.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette, QPen
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from app.services.views import ConversationView, MessageStatus, MessageView
from app.sizes import format_size
from app.ui.attachments import ThumbnailCache, bubble_size
from app.ui.models import (
    VIEW_ROLE,
    MessageListModel,
    format_day,
    format_remaining,
    format_time,
)

ModelIndex = QModelIndex | QPersistentModelIndex

STATUS_MARKS = {
    MessageStatus.SENDING: "◷",
    MessageStatus.SENT: "✓",
    MessageStatus.DELIVERED: "✓✓",
    # Heavy checks in their own colour (READ_INK): told apart from "delivered" by
    # shape as well as colour, for those who do not see the difference in hue.
    MessageStatus.READ: "✔✔",
    MessageStatus.FAILED: "⚠ Not sent — click to retry",
    MessageStatus.RECEIVED: "",
}
# What the marks say to a screen reader: models.STATUS_WORDS.
ACCENT = QColor("#2c6bed")
READ_INK = QColor("#9be7ff")


def _is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def stable_hue(name: str) -> int:
    """A hue (0-359) that is the same for `name` on every launch and machine.

    Python's `hash()` of a str is salted per process, so colours picked from it
    changed at every start; CRC-32 is unsalted and plenty to spread names."""
    return zlib.crc32(name.encode("utf-8")) % 360


def avatar_color(name: str) -> QColor:
    return QColor.fromHsl(stable_hue(name), 120, 140)


def sender_color(name: str, *, dark: bool) -> QColor:
    return QColor.fromHsl(stable_hue(name), 150, 170 if dark else 110)


class ConversationDelegate(QStyledItemDelegate):
    HEIGHT = 64

    def sizeHint(self, option: QStyleOptionViewItem, index: ModelIndex) -> QSize:
        # No width of its own: the list stretches rows to its viewport and the
        # painting elides, so a narrower list never grows a horizontal scrollbar
        # (a width taken from `option.rect` stuck at the list's earlier width).
        return QSize(0, self.HEIGHT)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: ModelIndex) -> None:
        view = index.data(VIEW_ROLE)
        if not isinstance(view, ConversationView):
            return
        painter.save()
        palette = option.palette
        rect: QRect = option.rect
        state = option.state
        if state & QStyle.StateFlag.State_Selected:
            painter.fillRect(
                rect,
                palette.color(QPalette.ColorRole.Highlight).lighter(170)
                if not _is_dark(palette)
                else palette.color(QPalette.ColorRole.Highlight),
            )
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        avatar = QRectF(rect.left() + 10, rect.top() + 10, 44, 44)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(avatar_color(view.title))
        painter.drawEllipse(avatar)
        painter.setPen(QColor("white"))
        initial_font = QFont(option.font)
        initial_font.setBold(True)
        initial_font.setPointSizeF(initial_font.pointSizeF() * 1.3)
        painter.setFont(initial_font)
        initial = "#" if view.kind == "group" else (view.title[:1].upper() or "?")
        painter.drawText(avatar, Qt.AlignmentFlag.AlignCenter, initial)

        text_left = rect.left() + 64
        title_font = QFont(option.font)
        title_font.setBold(True)
        painter.setFont(title_font)
        painter.setPen(palette.color(QPalette.ColorRole.Text))
        time_text = format_time(view.last_time_ms)
        metrics = QFontMetrics(title_font)
        time_width = metrics.horizontalAdvance(time_text) + 12
        title_rect = QRect(text_left, rect.top() + 10, rect.right() - text_left - time_width, 22)
        title = view.title + (" ✔" if view.verified else "")
        painter.drawText(
            title_rect,
            int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
            metrics.elidedText(title, Qt.TextElideMode.ElideRight, title_rect.width()),
        )
        body_font = QFont(option.font)
        painter.setFont(body_font)
        painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
        painter.drawText(
            QRect(rect.right() - time_width, rect.top() + 10, time_width - 8, 22),
            int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
            time_text,
        )
        badge_width = 0
        if view.unread:
            badge_text = str(view.unread) if view.unread < 1000 else "999+"
            badge_width = max(22, QFontMetrics(body_font).horizontalAdvance(badge_text) + 12)
            badge = QRectF(rect.right() - badge_width - 8, rect.top() + 34, badge_width, 20)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(ACCENT)
            painter.drawRoundedRect(badge, 10, 10)
            painter.setPen(QColor("white"))
            painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, badge_text)
            painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
        preview_rect = QRect(
            text_left, rect.top() + 34, rect.right() - text_left - badge_width - 16, 20
        )
        preview = view.last_text.replace("\n", " ")
        if view.identity_changed:
            preview = "⚠ Safety number changed"
        elif view.blocked:
            preview = "Blocked"
        elif view.request:
            preview = f"Message request · {preview}" if preview else "Message request"
        painter.drawText(
            preview_rect,
            int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
            QFontMetrics(body_font).elidedText(
                preview, Qt.TextElideMode.ElideRight, preview_rect.width()
            ),
        )
        painter.restore()


@dataclass(frozen=True)
class BubbleLayout:
    """Where a bubble's parts go in its row: one computation for painting, sizing
    and telling what a click hit."""

    day: bool
    bubble: QRectF
    sender_height: int
    quote: QRect | None  # the quoted message's box, clickable
    text: QRect
    footer: QRect
    reactions: QRectF | None  # the pill under the bubble
    height: int
    # An attachment's thumbnail or file chip: the only part a click opens.
    attachment: QRect | None = None


def reactions_text(view: MessageView) -> str:
    return "  ".join(f"{emoji} {count}" if count > 1 else emoji for emoji, count in view.reactions)


class MessageDelegate(QStyledItemDelegate):
    """Bubbles: outgoing right in the accent colour, incoming left; a day header
    above the first message of each day; a reply's quote over its text; time and
    delivery marks under the text; reactions in a pill under the bubble."""

    MARGIN = 8
    PADDING = 10
    DAY_HEIGHT = 34
    MAX_FRACTION = 0.68
    QUOTE_LINES = 2
    REACTION_HEIGHT = 24

    def __init__(self, model: MessageListModel, *, group: bool = False, own_name: str = "") -> None:
        super().__init__()
        self._model = model
        self.group = group
        # A quote of the user's own message says "You", as Signal's do.
        self.own_name = own_name
        # Thumbnails decode on a pool thread; the view repaints on `ready`.
        self.thumbnails = ThumbnailCache(self)
        # Row heights by message id, each with what it was computed from. The list
        # lays every loaded row out again whenever a page of older messages is
        # prepended, so at 1,000 image rows recomputing each bubble's layout was
        # the longest stall while scrolling; a hit costs a lookup instead. An
        # update replaces the row's MessageView, so `is` tells a stale entry.
        self._heights: dict[int, tuple[MessageView, int, bool, bool, int]] = {}
        model.modelReset.connect(self._heights.clear)

    def _needs_day_header(self, index: ModelIndex, view: MessageView) -> bool:
        previous = self._model.previous_of(index.row())
        if previous is None:
            return True
        day = dt.datetime.fromtimestamp(view.sent_at_ms / 1000).date()
        return day != dt.datetime.fromtimestamp(previous.sent_at_ms / 1000).date()

    def _show_sender(self, view: MessageView) -> bool:
        return self.group and not view.outgoing and not view.system

    def _text(self, view: MessageView) -> str:
        # An attachment's text is its caption; the file is drawn above it.
        return view.body

    def attachment_label(self, view: MessageView) -> str:
        """A file chip's line, or a thumbnail's status; "" for a ready thumbnail."""
        attachment = view.attachment
        assert attachment is not None
        size = format_size(attachment.size)
        if attachment.on_request:
            status = f"↓ Download ({size})"
        elif not attachment.ready:
            status = "Downloading…"
        else:
            status = ""
        if attachment.thumbnail is not None:
            return status
        label = f"▣ {attachment.filename} ({size})"
        return f"{label} — {status}" if status else label

    def _attachment_size(self, view: MessageView, metrics: QFontMetrics, inner: int) -> QSize:
        attachment = view.attachment
        assert attachment is not None
        if attachment.thumbnail is not None:
            return bubble_size(attachment.thumbnail)
        width = metrics.horizontalAdvance(self.attachment_label(view)) + 16
        return QSize(min(inner, width), metrics.height() + 10)

    def footer(self, view: MessageView) -> str:
        """The meta line under a bubble: time, a disappearing message's time left,
        and (outgoing) the delivery mark."""
        time_text = dt.datetime.fromtimestamp(view.sent_at_ms / 1000).strftime("%H:%M")
        if view.edited:
            time_text = f"edited  {time_text}"
        if view.expires_at_ms is not None:
            time_text += f"  {format_remaining(view.expires_at_ms)}"
        if view.outgoing:
            return f"{time_text}  {STATUS_MARKS[view.status]}".rstrip()
        return time_text

    def _bubble_width(self, option: QStyleOptionViewItem) -> int:
        return max(120, int(option.rect.width() * self.MAX_FRACTION))

    def _text_rect(self, metrics: QFontMetrics, text: str, width: int) -> QRect:
        flags = int(Qt.TextFlag.TextWordWrap | Qt.TextFlag.TextWrapAnywhere)
        return metrics.boundingRect(QRect(0, 0, width, 100_000), flags, text)

    def layout(self, option: QStyleOptionViewItem, index: ModelIndex) -> BubbleLayout | None:
        view = index.data(VIEW_ROLE)
        if not isinstance(view, MessageView):
            return None
        rect: QRect = option.rect
        metrics = QFontMetrics(option.font)
        day = self._needs_day_header(index, view)
        top = rect.top() + (self.DAY_HEIGHT if day else 0)
        inner = self._bubble_width(option) - 2 * self.PADDING
        text = self._text(view)
        text_rect = self._text_rect(metrics, text, inner) if text else QRect(0, 0, 0, 0)
        chip = self._attachment_size(view, metrics, inner) if view.attachment is not None else None
        chip_height = chip.height() + (6 if text else 0) if chip is not None else 0
        sender_height = metrics.height() if self._show_sender(view) else 0
        content_width = max(
            text_rect.width(),
            metrics.horizontalAdvance(self.footer(view)),
            metrics.horizontalAdvance(view.sender) if sender_height else 0,
            chip.width() if chip is not None else 0,
        )
        quote_height = 0
        if view.quote is not None:
            quote_height = metrics.height() * (1 + self.QUOTE_LINES) + 8
            content_width = max(content_width, min(inner, 180))
        bubble_width = content_width + 2 * self.PADDING
        bubble_height = (
            text_rect.height()
            + chip_height
            + metrics.height()
            + sender_height
            + quote_height
            + 2 * self.PADDING
        )
        if view.system:
            left = rect.center().x() - bubble_width / 2
        elif view.outgoing:
            left = rect.right() - bubble_width - 12
        else:
            left = rect.left() + 12
        bubble = QRectF(left, top + 2, bubble_width, bubble_height)
        x = int(bubble.left()) + self.PADDING
        y = int(bubble.top()) + self.PADDING + sender_height
        quote = None
        if view.quote is not None:
            quote = QRect(x, y, content_width, quote_height - 6)
            y += quote_height
        attachment = None
        if chip is not None:
            attachment = QRect(x, y, chip.width(), chip.height())
            y += chip_height
        text_box = QRect(x, y, inner, text_rect.height())
        y += text_rect.height()
        footer = QRect(x, y, content_width, metrics.height())
        height = int(bubble.bottom()) - rect.top() + self.MARGIN
        reactions = None
        if view.reactions:
            width = metrics.horizontalAdvance(reactions_text(view)) + 20
            pill_left = bubble.right() - width - 6 if view.outgoing else bubble.left() + 6
            reactions = QRectF(pill_left, bubble.bottom() - 4, width, self.REACTION_HEIGHT)
            height += self.REACTION_HEIGHT - 4
        return BubbleLayout(
            day,
            bubble,
            sender_height,
            quote,
            text_box,
            footer,
            reactions,
            max(height, 0),
            attachment,
        )

    def quote_at(self, option: QStyleOptionViewItem, index: ModelIndex, x: int, y: int) -> bool:
        """Whether (x, y) in the view falls on the row's quote."""
        layout = self.layout(option, index)
        return layout is not None and layout.quote is not None and layout.quote.contains(x, y)

    def attachment_at(
        self, option: QStyleOptionViewItem, index: ModelIndex, x: int, y: int
    ) -> bool:
        """Whether (x, y) in the view falls on the row's thumbnail or file chip."""
        layout = self.layout(option, index)
        return (
            layout is not None
            and layout.attachment is not None
            and layout.attachment.contains(x, y)
        )

    def sizeHint(self, option: QStyleOptionViewItem, index: ModelIndex) -> QSize:
        view = index.data(VIEW_ROLE)
        if not isinstance(view, MessageView):
            return QSize(0, 0)
        width = option.rect.width()
        # The day header depends on the row above, which a prepended page changes.
        day = self._needs_day_header(index, view)
        cached = self._heights.get(view.message_id)
        if cached is not None:
            seen, seen_width, seen_day, seen_group, height = cached
            if (
                seen is view
                and seen_width == width
                and seen_day == day
                and seen_group == self.group
            ):
                return QSize(width, height)
        layout = self.layout(option, index)
        if layout is None:
            return QSize(0, 0)
        self._heights[view.message_id] = (view, width, day, self.group, layout.height)
        return QSize(width, layout.height)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: ModelIndex) -> None:
        view = index.data(VIEW_ROLE)
        if not isinstance(view, MessageView):
            return
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette: QPalette = option.palette
        rect: QRect = option.rect
        font: QFont = option.font
        metrics = QFontMetrics(font)
        if self._needs_day_header(index, view):
            label = format_day(view.sent_at_ms)
            width = metrics.horizontalAdvance(label) + 24
            pill = QRectF(rect.center().x() - width / 2, rect.top() + 6, width, 22)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(palette.color(QPalette.ColorRole.AlternateBase))
            painter.drawRoundedRect(pill, 11, 11)
            painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(pill, Qt.AlignmentFlag.AlignCenter, label)

        layout = self.layout(option, index)
        assert layout is not None
        text = self._text(view)
        footer = self.footer(view)
        bubble = layout.bubble
        dark = _is_dark(palette)
        if view.system:
            fill, ink = (
                palette.color(QPalette.ColorRole.AlternateBase),
                palette.color(QPalette.ColorRole.PlaceholderText),
            )
        elif view.outgoing and not view.deleted:
            fill, ink = (
                (ACCENT if view.status != MessageStatus.FAILED else QColor("#b3261e")),
                QColor("white"),
            )
        else:
            # A deleted message of one's own goes neutral too, as in Signal: the
            # blue says "your words", and none are left.
            fill = QColor("#3b3b3d") if dark else QColor("#e9e9eb")
            ink = palette.color(QPalette.ColorRole.Text)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(fill)
        painter.drawRoundedRect(bubble, 14, 14)
        if option.state & QStyle.StateFlag.State_HasFocus:
            # The keyboard's current message (the Menu key opens its menu): the
            # list selects nothing, so this ring is all that shows which one it is.
            painter.setPen(QPen(palette.color(QPalette.ColorRole.Highlight), 2))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRoundedRect(bubble.adjusted(-3, -3, 3, 3), 16, 16)
            painter.setPen(Qt.PenStyle.NoPen)
        x = layout.text.left()
        content_width = layout.footer.width()
        if layout.sender_height:
            sender_font = QFont(font)
            sender_font.setBold(True)
            painter.setFont(sender_font)
            painter.setPen(sender_color(view.sender, dark=dark))
            painter.drawText(
                QRect(x, int(bubble.top()) + self.PADDING, content_width, layout.sender_height),
                0,
                view.sender,
            )
            painter.setFont(font)
        if layout.quote is not None and view.quote is not None:
            self._paint_quote(painter, layout.quote, view, font, ink, dark=dark)
        if layout.attachment is not None:
            self._paint_attachment(painter, layout.attachment, view, ink, dark=dark)
        painter.setPen(ink)
        flags = int(Qt.TextFlag.TextWordWrap | Qt.TextFlag.TextWrapAnywhere)
        if view.deleted:
            # Told apart from a text that says the same: italic and faded, as Signal.
            gone = QFont(font)
            gone.setItalic(True)
            painter.setFont(gone)
            faded_ink = QColor(ink)
            faded_ink.setAlpha(190)
            painter.setPen(faded_ink)
        painter.drawText(layout.text, flags, text)
        painter.setFont(font)
        footer_color = QColor(ink)
        footer_color.setAlpha(170)
        small = QFont(font)
        small.setPointSizeF(font.pointSizeF() * 0.85)
        if view.outgoing and view.status == MessageStatus.READ and not view.deleted:
            footer_color = READ_INK
            small.setBold(True)
        painter.setPen(footer_color)
        painter.setFont(small)
        painter.drawText(
            layout.footer,
            int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
            footer,
        )
        if layout.reactions is not None:
            painter.setFont(font)
            painter.setPen(QPen(palette.color(QPalette.ColorRole.Base), 2))
            painter.setBrush(QColor("#4a4a4c") if dark else QColor("#f4f4f6"))
            painter.drawRoundedRect(layout.reactions, 11, 11)
            painter.setPen(palette.color(QPalette.ColorRole.Text))
            painter.drawText(layout.reactions, Qt.AlignmentFlag.AlignCenter, reactions_text(view))
        painter.restore()

    def _paint_attachment(
        self, painter: QPainter, box: QRect, view: MessageView, ink: QColor, *, dark: bool
    ) -> None:
        """The thumbnail (a placeholder until it is decoded) with a status pill
        while the file is not here yet; or the file chip."""
        attachment = view.attachment
        assert attachment is not None
        tint = QColor(0, 0, 0, 40) if view.outgoing or not dark else QColor(255, 255, 255, 30)
        label = self.attachment_label(view)
        painter.setPen(Qt.PenStyle.NoPen)
        if attachment.thumbnail is None:
            painter.setBrush(tint)
            painter.drawRoundedRect(QRectF(box), 6, 6)
            painter.setPen(ink)
            painter.drawText(
                box.adjusted(8, 0, -8, 0),
                int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                painter.fontMetrics().elidedText(
                    label, Qt.TextElideMode.ElideMiddle, box.width() - 16
                ),
            )
            return
        image = self.thumbnails.image(attachment.attachment_id, attachment.thumbnail)
        if image is not None:
            painter.drawImage(box.topLeft(), image)
        else:
            painter.setBrush(tint)
            painter.drawRoundedRect(QRectF(box), 6, 6)
        if label:
            width = painter.fontMetrics().horizontalAdvance(label) + 16
            pill = QRectF(box.left() + 6, box.bottom() - 28, min(width, box.width() - 12), 22)
            painter.setBrush(QColor(0, 0, 0, 150))
            painter.drawRoundedRect(pill, 11, 11)
            painter.setPen(QColor("white"))
            painter.drawText(pill, Qt.AlignmentFlag.AlignCenter, label)

    def _paint_quote(
        self,
        painter: QPainter,
        box: QRect,
        view: MessageView,
        font: QFont,
        ink: QColor,
        *,
        dark: bool,
    ) -> None:
        """The quoted message: a tinted box with a bar in its author's colour, the
        author, and up to QUOTE_LINES lines of the snippet."""
        assert view.quote is not None
        quote = view.quote
        tint = QColor(0, 0, 0, 40) if view.outgoing or not dark else QColor(255, 255, 255, 30)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(tint)
        painter.drawRoundedRect(QRectF(box), 6, 6)
        author = "You" if quote.author == self.own_name else quote.author
        bar = QColor("white") if view.outgoing else sender_color(quote.author, dark=dark)
        painter.setBrush(bar)
        painter.drawRect(QRectF(box.left(), box.top(), 3, box.height()))
        metrics = QFontMetrics(font)
        inner = box.adjusted(10, 3, -6, -3)
        bold = QFont(font)
        bold.setBold(True)
        painter.setFont(bold)
        painter.setPen(ink)
        painter.drawText(
            QRect(inner.left(), inner.top(), inner.width(), metrics.height()), 0, author
        )
        painter.setFont(font)
        snippet = quote.snippet.replace("\n", " ") or "Original message not found"
        # Elided to QUOTE_LINES lines: as much of the start as fits, then "…".
        limit = inner.width() * self.QUOTE_LINES - metrics.horizontalAdvance("…") * 2
        elided = metrics.elidedText(snippet, Qt.TextElideMode.ElideRight, max(limit, 10))
        faded = QColor(ink)
        faded.setAlpha(210)
        painter.setPen(faded)
        # Whole words (a third line, if the elision left one, is clipped by the box).
        flags = int(Qt.TextFlag.TextWordWrap)
        painter.drawText(
            QRect(
                inner.left(),
                inner.top() + metrics.height(),
                inner.width(),
                metrics.height() * self.QUOTE_LINES,
            ),
            flags,
            elided,
        )
