"""Painting of conversation rows and message bubbles.

Sizes come from the same text layout that paints, so rows never clip; the
palette decides the colours, so the system's dark or light theme just works.
"""

from __future__ import annotations

import datetime as dt
import zlib

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from app.services.views import ConversationView, MessageStatus, MessageView
from app.sizes import format_size
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
    MessageStatus.READ: "✓✓",
    MessageStatus.FAILED: "⚠ Not sent — click to retry",
    MessageStatus.RECEIVED: "",
}
ACCENT = QColor("#2c6bed")


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
        painter.drawText(
            preview_rect,
            int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
            QFontMetrics(body_font).elidedText(
                preview, Qt.TextElideMode.ElideRight, preview_rect.width()
            ),
        )
        painter.restore()


class MessageDelegate(QStyledItemDelegate):
    """Bubbles: outgoing right in the accent colour, incoming left; a day header
    above the first message of each day; time and delivery marks under the text."""

    MARGIN = 8
    PADDING = 10
    DAY_HEIGHT = 34
    MAX_FRACTION = 0.68

    def __init__(self, model: MessageListModel, *, group: bool = False) -> None:
        super().__init__()
        self._model = model
        self.group = group

    def _needs_day_header(self, index: ModelIndex, view: MessageView) -> bool:
        previous = self._model.previous_of(index.row())
        if previous is None:
            return True
        day = dt.datetime.fromtimestamp(view.sent_at_ms / 1000).date()
        return day != dt.datetime.fromtimestamp(previous.sent_at_ms / 1000).date()

    def _show_sender(self, view: MessageView) -> bool:
        return self.group and not view.outgoing and not view.system

    def _text(self, view: MessageView) -> str:
        if view.attachment is not None:
            size = format_size(view.attachment.size)
            label = f"▣ {view.attachment.filename} ({size})"
            if not view.attachment.ready:
                label += " — downloading…"
            return f"{label}\n{view.body}" if view.body else label
        return view.body

    def footer(self, view: MessageView) -> str:
        """The meta line under a bubble: time, a disappearing message's time left,
        and (outgoing) the delivery mark."""
        time_text = dt.datetime.fromtimestamp(view.sent_at_ms / 1000).strftime("%H:%M")
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

    def sizeHint(self, option: QStyleOptionViewItem, index: ModelIndex) -> QSize:
        view = index.data(VIEW_ROLE)
        if not isinstance(view, MessageView):
            return QSize(0, 0)
        metrics = QFontMetrics(option.font)
        inner = self._bubble_width(option) - 2 * self.PADDING
        text_height = self._text_rect(metrics, self._text(view), inner).height()
        height = text_height + metrics.height() + 2 * self.PADDING + self.MARGIN
        if self._show_sender(view):
            height += metrics.height()
        if self._needs_day_header(index, view):
            height += self.DAY_HEIGHT
        return QSize(option.rect.width(), height)

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
        top = rect.top()
        if self._needs_day_header(index, view):
            label = format_day(view.sent_at_ms)
            width = metrics.horizontalAdvance(label) + 24
            pill = QRectF(rect.center().x() - width / 2, top + 6, width, 22)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(palette.color(QPalette.ColorRole.AlternateBase))
            painter.drawRoundedRect(pill, 11, 11)
            painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(pill, Qt.AlignmentFlag.AlignCenter, label)
            top += self.DAY_HEIGHT

        text = self._text(view)
        inner = self._bubble_width(option) - 2 * self.PADDING
        text_rect = self._text_rect(metrics, text, inner)
        footer = self.footer(view)
        sender_height = metrics.height() if self._show_sender(view) else 0
        content_width = max(
            text_rect.width(),
            metrics.horizontalAdvance(footer),
            metrics.horizontalAdvance(view.sender) if sender_height else 0,
        )
        bubble_width = content_width + 2 * self.PADDING
        bubble_height = text_rect.height() + metrics.height() + sender_height + 2 * self.PADDING
        if view.system:
            left = rect.center().x() - bubble_width / 2
        elif view.outgoing:
            left = rect.right() - bubble_width - 12
        else:
            left = rect.left() + 12
        bubble = QRectF(left, top + 2, bubble_width, bubble_height)
        dark = _is_dark(palette)
        if view.system:
            fill, ink = (
                palette.color(QPalette.ColorRole.AlternateBase),
                palette.color(QPalette.ColorRole.PlaceholderText),
            )
        elif view.outgoing:
            fill, ink = (
                (ACCENT if view.status != MessageStatus.FAILED else QColor("#b3261e")),
                QColor("white"),
            )
        else:
            fill = QColor("#3b3b3d") if dark else QColor("#e9e9eb")
            ink = palette.color(QPalette.ColorRole.Text)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(fill)
        painter.drawRoundedRect(bubble, 14, 14)
        x = int(bubble.left()) + self.PADDING
        y = int(bubble.top()) + self.PADDING
        if sender_height:
            sender_font = QFont(font)
            sender_font.setBold(True)
            painter.setFont(sender_font)
            painter.setPen(sender_color(view.sender, dark=dark))
            painter.drawText(QRect(x, y, content_width, sender_height), 0, view.sender)
            y += sender_height
            painter.setFont(font)
        painter.setPen(ink)
        flags = int(Qt.TextFlag.TextWordWrap | Qt.TextFlag.TextWrapAnywhere)
        painter.drawText(QRect(x, y, inner, text_rect.height()), flags, text)
        y += text_rect.height()
        footer_color = QColor(ink)
        footer_color.setAlpha(170)
        if view.outgoing and view.status == MessageStatus.READ:
            footer_color = QColor("#b8e0ff")
        painter.setPen(footer_color)
        small = QFont(font)
        small.setPointSizeF(font.pointSizeF() * 0.85)
        painter.setFont(small)
        painter.drawText(
            QRect(x, y, content_width, metrics.height()),
            int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
            footer,
        )
        painter.restore()
