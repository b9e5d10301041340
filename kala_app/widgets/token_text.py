"""The text of one reply, token by token: :class:`TokenText` (token-shaded, hit-testable) and the
:class:`Sparkline` of each token's lowest law score under it.

Text is held in one read-only ``QTextEdit`` per reply; the token boundaries are kept as
document positions, so hit-testing a mouse position is a bisect and appending a batch of tokens
is one edit block (cheap while a reply streams at full speed).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PySide6.QtCore import QPoint, QPointF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QPainter,
    QPainterPath,
    QPen,
    QTextCharFormat,
    QTextCursor,
    QTextFormat,
    QTextOption,
)
from PySide6.QtWidgets import QFrame, QSizePolicy, QTextEdit, QToolTip, QWidget

from .gauge import BAD, INK, MUTED, OK, shade_color


def _utf16_len(s: str) -> int:
    """Length of ``s`` in QTextDocument positions (UTF-16 code units)."""
    return len(s.encode("utf-16-le")) // 2


# ---------------------------------------------------------------- sparkline


class Sparkline(QWidget):
    """The minimum law score of every token of a reply, with the threshold as a dashed line."""

    clicked = Signal(int)

    def __init__(self, threshold: float = 0.5, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._values: list[float] = []
        self._threshold = threshold
        self._selected: int | None = None
        self.setFixedHeight(30)
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Lowest law score of each token; the dashed line is the threshold")

    def values(self) -> list[float]:
        return list(self._values)

    def append(self, values: Iterable[float], repaint: bool = True) -> None:
        self._values.extend(float(v) for v in values)
        if repaint:
            self.update()

    def set_selected(self, index: int | None) -> None:
        self._selected = index
        self.update()

    def _index_at(self, x: float) -> int | None:
        n = len(self._values)
        if n == 0:
            return None
        span = max(1, n - 1)
        return max(0, min(n - 1, round((x - 4) / max(1.0, self.width() - 8) * span)))

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt override
        i = self._index_at(event.position().x())
        if i is not None:
            self.clicked.emit(i)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt override
        i = self._index_at(event.position().x())
        if i is not None:
            QToolTip.showText(event.globalPosition().toPoint(), f"token {i}: lowest score {self._values[i]:.2f}", self)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width() - 8, self.height() - 6
        x0, y0 = 4.0, 3.0
        ty = y0 + h * (1.0 - self._threshold)
        pen = QPen(MUTED, 1)
        pen.setStyle(Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.drawLine(QPointF(x0, ty), QPointF(x0 + w, ty))
        n = len(self._values)
        if n == 0:
            p.end()
            return
        # one point per pixel column at most: keep the minimum of each column (dips matter)
        vals = np.asarray(self._values, dtype=np.float32)
        cols = max(1, min(n, int(w)))
        edges = (np.arange(cols) * n) // cols
        if cols < n:
            lows = np.minimum.reduceat(vals, edges)
            offs = np.array([int(np.argmin(vals[a:b])) for a, b in zip(edges, list(edges[1:]) + [n], strict=True)]) \
                if cols <= 64 else None
            idx = edges + offs if offs is not None else edges
        else:
            lows, idx = vals, np.arange(n)
        xs = x0 + (w * idx / (n - 1) if n > 1 else np.full(len(idx), w / 2))
        ys = y0 + h * (1.0 - np.clip(lows, 0.0, 1.0))
        pts = list(zip(xs.tolist(), ys.tolist(), lows.tolist(), strict=True))
        path = QPainterPath()
        path.moveTo(pts[0][0], pts[0][1])
        for x, y, _ in pts[1:]:
            path.lineTo(x, y)
        fill = QPainterPath(path)
        fill.lineTo(pts[-1][0], y0 + h)
        fill.lineTo(pts[0][0], y0 + h)
        fill.closeSubpath()
        tint = QColor(OK)
        tint.setAlpha(35)
        p.fillPath(fill, tint)
        p.setPen(QPen(QColor("#5b7089"), 1.4))
        p.drawPath(path)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(BAD)
        for x, y, v in pts:  # dots where a token fell under the threshold
            if v < self._threshold:
                p.drawEllipse(QPointF(x, y), 2.5, 2.5)
        if self._selected is not None and 0 <= self._selected < n:
            i = self._selected
            x = x0 + (w * (i / (n - 1)) if n > 1 else w / 2)
            p.setPen(QPen(INK, 1))
            p.drawLine(QPointF(x, y0), QPointF(x, y0 + h))
        p.end()


# ---------------------------------------------------------------- the token text


class TokenText(QTextEdit):
    """Read-only text of one reply, built token by token, that knows where each token lies."""

    hovered = Signal(int)  # token index, -1 when the mouse leaves the tokens
    clicked = Signal(int)

    def __init__(self, thresholds: Sequence[float], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._thresholds = tuple(thresholds)
        self._starts: list[int] = []  # document position where token i starts (its text, leading spaces too)
        self._ends: list[int] = []
        self._lead: list[int] = []  # leading-whitespace length of token i (left unshaded)
        self._formats: dict[int, QTextCharFormat] = {}
        self._plain = QTextCharFormat()
        self._hover = -1
        self.setReadOnly(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setLineWrapMode(QTextEdit.LineWrapMode.WidgetWidth)
        self.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.viewport().setMouseTracking(True)
        self.viewport().setCursor(Qt.CursorShape.PointingHandCursor)
        self.setStyleSheet("QTextEdit { background: transparent; }")
        self.document().setDocumentMargin(2)
        self.document().documentLayout().documentSizeChanged.connect(self._fit_height)
        self._fit_height()

    # -- building -------------------------------------------------------------
    def _format_for(self, score: float) -> QTextCharFormat | None:
        bucket = round(max(0.0, min(1.0, score)) * 50)  # 0.02 steps: a few formats, reused
        if bucket not in self._formats:
            color = shade_color(bucket / 50, min(self._thresholds))
            if color is None:
                self._formats[bucket] = self._plain
            else:
                f = QTextCharFormat()
                f.setBackground(color)
                self._formats[bucket] = f
        return self._formats[bucket]

    def append_tokens(self, tokens: Sequence[tuple[str, float]]) -> None:
        """Append (text, lowest law score) pairs as one edit."""
        if not tokens:
            return
        cur = QTextCursor(self.document())
        cur.movePosition(QTextCursor.MoveOperation.End)
        cur.beginEditBlock()
        pos = cur.position()
        for text, low in tokens:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            body = text.lstrip(" \t\n")
            lead = text[: len(text) - len(body)]
            if pos == 0:  # a reply does not start with blank space
                text, lead = body, ""
            self._starts.append(pos)
            self._lead.append(_utf16_len(lead))
            if lead:
                cur.insertText(lead, self._plain)
            if body:
                cur.insertText(body, self._format_for(low))
            pos += _utf16_len(text)
            self._ends.append(pos)
        cur.endEditBlock()

    def token_count(self) -> int:
        return len(self._starts)

    # -- geometry -------------------------------------------------------------
    def _fit_height(self, *args: Any) -> None:
        h = int(self.document().size().height()) + 2 * self.frameWidth() + 2
        if h != self.height():
            self.setFixedHeight(h)

    def token_at(self, point: QPoint | QPointF) -> int | None:
        """Index of the token under a viewport position, or None."""
        if not self._starts:
            return None
        pt = QPointF(point) + QPointF(self.horizontalScrollBar().value(), self.verticalScrollBar().value())
        pos = self.document().documentLayout().hitTest(pt, Qt.HitTestAccuracy.ExactHit)
        if pos < 0:
            return None
        # ExactHit gives the nearest cursor position: the character under the point is the one
        # after it, unless the point lies left of that position (then it is the one before).
        cur = QTextCursor(self.document())
        cur.setPosition(pos)
        if point.x() < self.cursorRect(cur).x() and pos > 0:
            pos -= 1
        i = bisect.bisect_right(self._starts, pos) - 1
        if i < 0 or pos >= self._ends[i]:
            return None
        return i

    def token_point(self, index: int) -> QPoint:
        """A viewport position inside token ``index`` (its first visible character)."""
        cur = QTextCursor(self.document())
        cur.setPosition(self._starts[index] + self._lead[index])
        r = self.cursorRect(cur)
        return QPoint(r.x() + 3, r.center().y())

    def token_background(self, index: int) -> QColor | None:
        """The tint token ``index`` is drawn with (None: unshaded)."""
        cur = QTextCursor(self.document())
        cur.setPosition(min(self._starts[index] + self._lead[index] + 1, self._ends[index]))
        brush = cur.charFormat().background()
        return None if brush.style() == Qt.BrushStyle.NoBrush else QColor(brush.color())

    def select_token(self, index: int | None) -> None:
        """Outline token ``index`` (None: no selection)."""
        if index is None or not (0 <= index < len(self._starts)):
            self.setExtraSelections([])
            return
        sel = QTextEdit.ExtraSelection()
        cur = QTextCursor(self.document())
        cur.setPosition(self._starts[index] + self._lead[index])
        cur.setPosition(self._ends[index], QTextCursor.MoveMode.KeepAnchor)
        sel.cursor = cur
        fmt = QTextCharFormat()
        fmt.setUnderlineStyle(QTextCharFormat.UnderlineStyle.SingleUnderline)
        fmt.setUnderlineColor(INK)
        fmt.setFontWeight(QFont.Weight.DemiBold)
        fmt.setProperty(QTextFormat.Property.FullWidthSelection, False)
        sel.format = fmt
        self.setExtraSelections([sel])

    # -- mouse ----------------------------------------------------------------
    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().mouseMoveEvent(event)
        i = self.token_at(event.position())
        i = -1 if i is None else i
        if i != self._hover:
            self._hover = i
            self.hovered.emit(i)

    def leaveEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().leaveEvent(event)
        if self._hover != -1:
            self._hover = -1
            self.hovered.emit(-1)

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().mousePressEvent(event)
        if event.button() == Qt.MouseButton.LeftButton:
            i = self.token_at(event.position())
            if i is not None:
                self.clicked.emit(i)


# ---------------------------------------------------------------- banners and bubbles


__all__ = ["Sparkline", "TokenText"]
