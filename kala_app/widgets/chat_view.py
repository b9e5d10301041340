"""The conversation view of the Chat page: messages, token-shaded replies, sparklines, stop banners.

* A user message is a bubble on the right with its *prompt assessment* (the law scores the
  model gave the prompt's last token) as a five-stick :class:`MiniGauge` and one line of text.
* A reply (:class:`ReplyWidget`) grows token by token (:meth:`ReplyWidget.append_tokens`);
  each token is shaded by its lowest law score (clean when well above the threshold, amber when
  close, red under it). Hovering a token emits :attr:`ChatView.token_hovered`, clicking it
  :attr:`ChatView.token_selected`, both with a :class:`TokenInfo` (index, text, five scores,
  per-layer scores). Under the text a :class:`Sparkline` draws the minimum law score of every
  token against the threshold; an ethics stop adds a :class:`StopBanner` naming the law, its
  score and the explanation.

Text is held in one read-only ``QTextEdit`` per reply; the token boundaries are kept as
document positions, so hit-testing a mouse position is a bisect and appending a batch of tokens
is one edit block (cheap while a reply streams at full speed).
"""

from __future__ import annotations

import bisect
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QTextEdit,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from kala_engine.constitution import Constitution, load_constitution, resolve_thresholds

from .gauge import BAD, INK, MUTED, OK, MiniGauge, shade_color

USER_BG = "#e7effb"
REPLY_BG = "#ffffff"
PAGE_BG = "#f4f6f9"
BORDER = "#dde3ea"


@dataclass(frozen=True)
class TokenInfo:
    """One token of one reply, as carried by the view's signals."""

    reply: ReplyWidget
    index: int
    text: str
    law_scores: tuple[float, ...]
    layer_scores: tuple[tuple[float, ...], ...] | None

    @property
    def min_score(self) -> float:
        return min(self.law_scores)


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


class StopBanner(QFrame):
    """Why a reply stopped on ethics: the law, its score against the threshold, the explanation."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("stopBanner")
        self.setStyleSheet(
            "#stopBanner { background: #fdecea; border: 1px solid #f3c4bf;"
            f" border-left: 4px solid {BAD.name()}; border-radius: 6px; }}")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 8, 12, 8)
        lay.setSpacing(3)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setTextFormat(Qt.TextFormat.RichText)
        self.detail.setStyleSheet(f"color: {INK.name()};")
        lay.addWidget(self.title)
        lay.addWidget(self.detail)
        self.hide()

    def text(self) -> str:
        """The banner as plain text (title and explanation)."""
        from PySide6.QtGui import QTextDocumentFragment

        return " ".join(QTextDocumentFragment.fromHtml(lbl.text()).toPlainText()
                        for lbl in (self.title, self.detail)).strip()

    def show_stop(self, title: str, lines: Sequence[str]) -> None:
        self.title.setText(f"<span style='color:{BAD.name()}; font-weight:600'>■ {html.escape(title)}</span>")
        self.detail.setText("<br>".join(html.escape(line) for line in lines))
        self.setVisible(True)


class UserMessageWidget(QFrame):
    """A user message (right-aligned bubble) with its prompt assessment."""

    def __init__(self, text: str, constitution: Constitution, thresholds: Sequence[float],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._constitution = constitution
        self._thresholds = tuple(thresholds)
        self.setObjectName("userBubble")
        self.setStyleSheet(f"#userBubble {{ background: {USER_BG}; border-radius: 12px; }}")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(14, 10, 14, 8)
        lay.setSpacing(6)
        self.label = QLabel(text)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setStyleSheet(f"color: {INK.name()};")
        lay.addWidget(self.label)
        row = QHBoxLayout()
        row.setSpacing(8)
        self.mini = MiniGauge(constitution)
        self.mini.set_thresholds(self._thresholds)
        self.assessment_label = QLabel("Prompt assessment pending…")
        self.assessment_label.setWordWrap(True)
        self.assessment_label.setStyleSheet(f"color: {MUTED.name()}; font-size: 9pt;")
        row.addWidget(self.mini)
        row.addWidget(self.assessment_label, 1)
        lay.addLayout(row)
        self.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)

    def text(self) -> str:
        return self.label.text()

    def fit_width(self, max_width: int) -> None:
        """As wide as the message needs (word-wrapped labels would shrink it), at most ``max_width``."""
        fm = self.label.fontMetrics()
        text_w = max((fm.horizontalAdvance(line) for line in self.label.text().splitlines()), default=0)
        need = max(text_w, 300) + 32  # room for the assessment line, plus the margins
        self.setMaximumWidth(max_width)
        self.setMinimumWidth(min(max_width, need))

    def set_assessment(self, scores: Sequence[float] | None) -> None:
        """Show the prompt's law scores (None: not available)."""
        if scores is None:
            self.mini.set_scores(None)
            self.mini.hide()
            self.assessment_label.setText("No prompt assessment")
            return
        self.mini.show()
        self.mini.set_scores(scores)
        under = [law for law in self._constitution if scores[law.index] < self._thresholds[law.index]]
        if under:
            law = under[0]  # the highest-priority law under its threshold
            s = scores[law.index]
            self.assessment_label.setText(
                f"<span style='color:{BAD.name()}; font-weight:600'>Prompt flagged:</span> "
                f"{html.escape(law.title)} {s:.2f}")
        else:
            i = min(range(len(scores)), key=lambda k: (scores[k], k))
            self.assessment_label.setText(
                f"Prompt within the laws · lowest: {html.escape(self._constitution[i].title)} {scores[i]:.2f}")

    def assessment_text(self) -> str:
        from PySide6.QtGui import QTextDocumentFragment

        return QTextDocumentFragment.fromHtml(self.assessment_label.text()).toPlainText()


class ReplyWidget(QFrame):
    """One assistant reply: token-shaded text, min-score sparkline, stop banner and status."""

    token_hovered = Signal(object)  # TokenInfo or None
    token_clicked = Signal(object)  # TokenInfo

    def __init__(self, constitution: Constitution, thresholds: Sequence[float], title: str = "KALA",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._constitution = constitution
        self._thresholds = tuple(thresholds)
        self._tokens: list[tuple[str, tuple[float, ...], tuple[tuple[float, ...], ...] | None]] = []
        self.message_id: int | None = None
        self.setObjectName("replyBubble")
        self.setStyleSheet(f"#replyBubble {{ background: {REPLY_BG}; border: 1px solid {BORDER}; border-radius: 12px; }}")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(14, 8, 14, 8)
        lay.setSpacing(4)
        head = QLabel(title)
        head.setStyleSheet(f"color: {MUTED.name()}; font-size: 9pt; font-weight: 600;")
        lay.addWidget(head)
        self.header = head
        self.text_view = TokenText(self._thresholds)
        lay.addWidget(self.text_view)
        self.sparkline = Sparkline(min(self._thresholds))
        lay.addWidget(self.sparkline)
        self.banner = StopBanner()
        lay.addWidget(self.banner)
        self.status = QLabel("")
        self.status.setStyleSheet(f"color: {MUTED.name()}; font-size: 8.5pt;")
        lay.addWidget(self.status)
        self.text_view.hovered.connect(self._on_hover)
        self.text_view.clicked.connect(self._on_click)
        self.sparkline.clicked.connect(self._on_click)

    # -- data ---------------------------------------------------------------
    def append_tokens(self, tokens: Iterable[Any], repaint_sparkline: bool = True) -> None:
        """Append token events (anything with ``text``, ``law_scores`` and optional ``layer_scores``).

        While a reply streams the page repaints the sparkline only every ~100 ms
        (``repaint_sparkline=False`` in between) to keep the UI thread light.
        """
        batch = []
        lows = []
        for t in tokens:
            scores = tuple(float(v) for v in t.law_scores)
            layers = getattr(t, "layer_scores", None)
            if layers is not None:
                layers = tuple(tuple(float(v) for v in row) for row in layers)
            self._tokens.append((t.text, scores, layers))
            low = min(scores)
            batch.append((t.text, low))
            lows.append(low)
        self.text_view.append_tokens(batch)
        self.sparkline.append(lows, repaint=repaint_sparkline)

    def token_count(self) -> int:
        return len(self._tokens)

    def text(self) -> str:
        return "".join(t[0] for t in self._tokens)

    def token(self, index: int) -> TokenInfo:
        text, scores, layers = self._tokens[index]
        return TokenInfo(self, index, text, scores, layers)

    def thresholds(self) -> tuple[float, ...]:
        return self._thresholds

    def select(self, index: int | None) -> None:
        self.text_view.select_token(index)
        self.sparkline.set_selected(index)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def show_stop(self, title: str, lines: Sequence[str]) -> None:
        self.banner.show_stop(title, lines)

    def token_point(self, index: int) -> QPoint:
        """Where token ``index`` is, in this widget's text viewport (for clicks in tests)."""
        return self.text_view.token_point(index)

    # -- signals --------------------------------------------------------------
    def _on_hover(self, i: int) -> None:
        self.token_hovered.emit(None if i < 0 else self.token(i))

    def _on_click(self, i: int) -> None:
        if 0 <= i < len(self._tokens):
            self.token_clicked.emit(self.token(i))


# ---------------------------------------------------------------- the whole conversation


class ChatView(QScrollArea):
    """A scrolling column of user messages and replies; follows the newest text while at the bottom."""

    token_hovered = Signal(object)  # TokenInfo or None
    token_selected = Signal(object)  # TokenInfo (a click)

    def __init__(self, constitution: Constitution | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._constitution = constitution or load_constitution()
        self._thresholds = tuple(self._constitution.thresholds)
        self._items: list[QWidget] = []  # row holders in the column
        self._messages: list[QWidget] = []  # the message widgets, in order
        self._selected: TokenInfo | None = None
        self._stick = True
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        body.setObjectName("chatBody")
        body.setStyleSheet(f"#chatBody {{ background: {PAGE_BG}; }}")
        self._col = QVBoxLayout(body)
        self._col.setContentsMargins(18, 16, 18, 16)
        self._col.setSpacing(12)
        self._placeholder = QLabel("")
        self._placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._placeholder.setWordWrap(True)
        self._placeholder.setStyleSheet(f"color: {MUTED.name()}; font-size: 11pt;")
        self._col.addWidget(self._placeholder)
        self._col.addStretch(1)
        self.setWidget(body)
        sb = self.verticalScrollBar()
        sb.rangeChanged.connect(self._on_range)
        sb.valueChanged.connect(self._on_scroll)

    # -- content --------------------------------------------------------------
    def set_placeholder(self, text: str) -> None:
        self._placeholder.setText(text)
        self._placeholder.setVisible(bool(text) and not self._items)

    def set_thresholds(self, value: float | Sequence[float]) -> None:
        """Thresholds used for messages added from now on."""
        self._thresholds = resolve_thresholds(value)

    def clear(self) -> None:
        for w in self._items:
            self._col.removeWidget(w)
            w.hide()  # gone from the screen now, deleted when the event loop gets to it
            w.deleteLater()
        self._items.clear()
        self._messages.clear()
        self._selected = None
        self._stick = True
        self._placeholder.setVisible(bool(self._placeholder.text()))

    def _insert(self, widget: QWidget, align_right: bool) -> None:
        holder = QWidget()
        row = QHBoxLayout(holder)
        row.setContentsMargins(0, 0, 0, 0)
        if align_right:
            row.addStretch(1)
            row.addWidget(widget, 0)
        else:
            row.addWidget(widget, 1)
            row.addSpacing(40)
        self._col.insertWidget(self._col.count() - 1, holder)
        self._items.append(holder)
        self._messages.append(widget)
        self._placeholder.hide()

    def add_user_message(self, text: str, assessment: Sequence[float] | None = None) -> UserMessageWidget:
        w = UserMessageWidget(text, self._constitution, self._thresholds)
        w.fit_width(max(320, int(self.viewport().width() * 0.75)))
        if assessment is not None:
            w.set_assessment(assessment)
        self._insert(w, align_right=True)
        self._stick = True
        return w

    def begin_reply(self, title: str = "KALA") -> ReplyWidget:
        w = ReplyWidget(self._constitution, self._thresholds, title)
        w.token_hovered.connect(self.token_hovered)
        w.token_clicked.connect(self._on_clicked)
        self._insert(w, align_right=False)
        self._stick = True
        return w

    def replies(self) -> list[ReplyWidget]:
        """The replies shown, oldest first."""
        return [w for w in self._messages if isinstance(w, ReplyWidget)]

    def user_messages(self) -> list[UserMessageWidget]:
        """The user messages shown, oldest first."""
        return [w for w in self._messages if isinstance(w, UserMessageWidget)]

    def selected(self) -> TokenInfo | None:
        return self._selected

    def select(self, info: TokenInfo | None) -> None:
        """Select a token (outlined in its reply) and emit token_selected."""
        if self._selected is not None and self._selected.reply is not (info.reply if info else None):
            self._selected.reply.select(None)
        self._selected = info
        if info is not None:
            info.reply.select(info.index)
            self.token_selected.emit(info)

    def _on_clicked(self, info: TokenInfo) -> None:
        self.select(info)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        for w in self.user_messages():
            w.fit_width(max(320, int(self.viewport().width() * 0.75)))

    # -- follow the newest text -------------------------------------------------
    def _on_scroll(self, value: int) -> None:
        sb = self.verticalScrollBar()
        self._stick = value >= sb.maximum() - 24

    def _on_range(self, lo: int, hi: int) -> None:
        if self._stick:
            self.verticalScrollBar().setValue(hi)

    def scroll_to_bottom(self) -> None:
        self._stick = True
        self.verticalScrollBar().setValue(self.verticalScrollBar().maximum())


__all__ = [
    "ChatView", "ReplyWidget", "Sparkline", "StopBanner", "TokenInfo", "TokenText", "UserMessageWidget",
]
