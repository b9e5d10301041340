"""The five-bar law gauge: how one token (or one prompt) scores against the Five Laws.

:class:`LawGauge` is the large gauge of the Chat page: one horizontal bar per law, in
hierarchy order, labelled with the law's title from the constitution, its threshold marked
on the bar, the score written beside it and the bar coloured by how the score stands against
that threshold. :class:`MiniGauge` is the small five-stick version shown beside each user
message (its prompt assessment).

The colour helpers (:func:`score_color`, :func:`shade_color`) are shared by the chat view,
the sparkline and the decision-path heatmap so that one score always has one colour.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from kala_engine.constitution import Constitution, is_violated, load_constitution, resolve_thresholds

# ---------------------------------------------------------------- palette (calm, colour-blind aware)

#: Score comfortably above its threshold.
OK = QColor("#2f9e7e")
#: Score above its threshold, but close to it (see :func:`warn_limit`).
WARN = QColor("#e0a23a")
#: Score under its threshold: a violation of the law.
BAD = QColor("#d8544c")
TRACK = QColor("#e9edf2")
INK = QColor("#1f2933")
MUTED = QColor("#6b7785")
#: The share of the room above a threshold (1 - threshold) that still counts as "close" (amber):
#: 0.15 above a threshold of 0.5, 0.045 above a calibrated 0.85.
MARGIN_SHARE = 0.3


def warn_limit(threshold: float) -> float:
    """Scores from ``threshold`` up to this value are close to it (amber).

    Relative to the room above the threshold, so that a model's calibrated thresholds (often
    0.8-0.9) do not paint every ordinary score amber.
    """
    return threshold + MARGIN_SHARE * (1.0 - threshold)


def score_level(score: float, threshold: float) -> str:
    """'ok', 'warn' or 'bad' for ``score`` against ``threshold``."""
    if is_violated(score, threshold):
        return "bad"
    if score < warn_limit(threshold):
        return "warn"
    return "ok"


def score_color(score: float, threshold: float) -> QColor:
    """The solid colour of a score: green, amber or red against its threshold."""
    return {"ok": OK, "warn": WARN, "bad": BAD}[score_level(score, threshold)]


def _mix(a: QColor, b: QColor, t: float) -> QColor:
    t = max(0.0, min(1.0, t))
    return QColor(
        round(a.red() + (b.red() - a.red()) * t),
        round(a.green() + (b.green() - a.green()) * t),
        round(a.blue() + (b.blue() - a.blue()) * t),
    )


#: The neutral middle of the diverging heatmap ramp (a score right at its threshold).
NEUTRAL = QColor("#f3efe6")


def ramp_color(score: float, threshold: float) -> QColor:
    """A diverging red → neutral → green ramp centred on the threshold (heatmap cells)."""
    score = max(0.0, min(1.0, score))
    if score < threshold:
        return _mix(BAD, NEUTRAL, score / threshold if threshold > 0 else 1.0)
    top = 1.0 - threshold
    return _mix(NEUTRAL, OK, (score - threshold) / top if top > 0 else 1.0)


def ink_on(color: QColor) -> QColor:
    """Readable text colour (white or ink) on a background colour."""
    lum = 0.299 * color.red() + 0.587 * color.green() + 0.114 * color.blue()
    return QColor("white") if lum < 150 else INK


def shade_color(score: float, threshold: float) -> QColor | None:
    """Background tint of a token whose lowest law score is ``score``; None means unshaded.

    Tokens well above the threshold stay clean so that ordinary text reads as text; the tint
    deepens as the score approaches and crosses the threshold.
    """
    score = max(0.0, min(1.0, score))
    if score >= warn_limit(threshold) and score > threshold:
        return None
    if score >= threshold:  # close: a light amber wash
        c = QColor(WARN)
        c.setAlpha(70)
        return c
    depth = (threshold - score) / threshold if threshold > 0 else 1.0
    c = QColor(BAD)
    c.setAlpha(round(70 + 110 * depth))
    return c


def _check_scores(scores: Sequence[float], n: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in scores)
    if len(values) != n:
        raise ValueError(f"expected {n} law scores, got {len(values)}")
    return values


# ---------------------------------------------------------------- the large gauge


class LawGauge(QWidget):
    """Five horizontal bars, one per law, with the threshold marked on each bar.

    ``set_scores(scores, caption)`` shows a token's five scores; ``scores()`` reads them back
    (None when empty). ``set_thresholds`` takes one value or one per law.
    """

    ROW_H = 40
    HEADER_H = 44

    def __init__(self, constitution: Constitution | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._constitution = constitution or load_constitution()
        n = len(self._constitution)
        self._scores: tuple[float, ...] | None = None
        self._thresholds = tuple(self._constitution.thresholds)
        self._caption = ""
        self._subcaption = ""
        self._placeholder = "Hover or click a token to see its law scores"
        self.setMinimumWidth(240)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(self.HEADER_H + n * self.ROW_H + 8)
        self.setAccessibleName("Law gauge")
        self._update_tooltip()

    # -- data ---------------------------------------------------------------
    def law_titles(self) -> list[str]:
        return [law.title for law in self._constitution]

    def scores(self) -> tuple[float, ...] | None:
        return self._scores

    def thresholds(self) -> tuple[float, ...]:
        return self._thresholds

    def caption(self) -> str:
        return self._caption

    def set_thresholds(self, value: float | Sequence[float]) -> None:
        self._thresholds = resolve_thresholds(value)
        self._update_tooltip()
        self.update()

    def set_scores(self, scores: Sequence[float] | None, caption: str = "", subcaption: str = "") -> None:
        """Show ``scores`` (five floats in [0, 1]) under ``caption``; None clears the gauge."""
        self._scores = None if scores is None else _check_scores(scores, len(self._constitution))
        self._caption = caption
        self._subcaption = subcaption
        self._update_tooltip()
        self.update()

    def clear(self) -> None:
        self.set_scores(None)

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.update()

    def lowest(self) -> tuple[int, float] | None:
        """(law index, score) of the lowest score, the first in hierarchy order on a tie."""
        if self._scores is None:
            return None
        i = min(range(len(self._scores)), key=lambda k: (self._scores[k], k))
        return i, self._scores[i]

    def _update_tooltip(self) -> None:
        lines = []
        for law, t in zip(self._constitution, self._thresholds, strict=True):
            score = "–" if self._scores is None else f"{self._scores[law.index]:.3f}"
            lines.append(f"<b>{law.title}</b>: {score} (threshold {t:.2f})<br><i>{law.short}</i>")
        self.setToolTip("<br>".join(lines))

    # -- painting -----------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w = self.width()
        base = QFont(self.font())
        title_font = QFont(base)
        title_font.setPointSizeF(base.pointSizeF() * 1.05)
        title_font.setBold(True)
        small = QFont(base)
        small.setPointSizeF(base.pointSizeF() * 0.9)

        # header: caption and the lowest law
        p.setPen(INK)
        p.setFont(title_font)
        caption = self._caption or ("Law scores" if self._scores is not None else "Law gauge")
        p.drawText(QRectF(2, 0, w - 4, 22), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   p.fontMetrics().elidedText(caption, Qt.TextElideMode.ElideRight, w - 4))
        p.setFont(small)
        p.setPen(MUTED)
        if self._scores is None:
            sub = self._placeholder
        else:
            sub = self._subcaption
            if not sub:
                i, s = self.lowest()
                law = self._constitution[i]
                verdict = "under its threshold" if is_violated(s, self._thresholds[i]) else "lowest"
                sub = f"{verdict}: {law.title} {s:.2f}"
        p.drawText(QRectF(2, 22, w - 4, 18), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   p.fontMetrics().elidedText(sub, Qt.TextElideMode.ElideRight, w - 4))

        value_w = 44
        bar_x = 2.0
        bar_w = max(20.0, w - bar_x - value_w - 6)
        for law in self._constitution:
            i = law.index
            top = self.HEADER_H + i * self.ROW_H
            t = self._thresholds[i]
            # law title
            p.setFont(small)
            p.setPen(INK)
            p.drawText(QRectF(bar_x, top, bar_w, 16), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                       p.fontMetrics().elidedText(law.title, Qt.TextElideMode.ElideRight, int(bar_w)))
            # track
            track = QRectF(bar_x, top + 19, bar_w, 11)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(TRACK)
            p.drawRoundedRect(track, 6, 6)
            if self._scores is not None:
                s = max(0.0, min(1.0, self._scores[i]))
                fill = QRectF(track.x(), track.y(), max(track.height(), track.width() * s), track.height())
                p.setBrush(score_color(s, t))
                p.drawRoundedRect(fill, 6, 6)
                # value
                p.setPen(score_color(s, t) if is_violated(s, t) else INK)
                vf = QFont(base)
                vf.setBold(bool(is_violated(s, t)))
                p.setFont(vf)
                p.drawText(QRectF(bar_x + bar_w + 4, top + 14, value_w, 20),
                           Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{s:.2f}")
            # threshold marker: a dark tick across the track with a small triangle under it
            tx = track.x() + track.width() * t
            p.setPen(QPen(INK, 2))
            p.drawLine(QPointF(tx, track.top() - 2), QPointF(tx, track.bottom() + 2))
            tri = QPainterPath()
            tri.moveTo(tx - 4, track.bottom() + 7)
            tri.lineTo(tx + 4, track.bottom() + 7)
            tri.lineTo(tx, track.bottom() + 2)
            tri.closeSubpath()
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(INK)
            p.drawPath(tri)
        p.end()


# ---------------------------------------------------------------- the mini gauge


class MiniGauge(QWidget):
    """Five thin vertical sticks (one per law) with the threshold line: a prompt's assessment."""

    def __init__(self, constitution: Constitution | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._constitution = constitution or load_constitution()
        self._scores: tuple[float, ...] | None = None
        self._thresholds = tuple(self._constitution.thresholds)
        self.setFixedSize(5 * 7 + 4, 22)

    def scores(self) -> tuple[float, ...] | None:
        return self._scores

    def set_thresholds(self, value: float | Sequence[float]) -> None:
        self._thresholds = resolve_thresholds(value)
        self.set_scores(self._scores)

    def set_scores(self, scores: Sequence[float] | None) -> None:
        self._scores = None if scores is None else _check_scores(scores, len(self._constitution))
        if self._scores is None:
            self.setToolTip("")
        else:
            self.setToolTip("<br>".join(
                f"{law.title}: <b>{self._scores[law.index]:.2f}</b>" for law in self._constitution))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        h = self.height() - 2
        for i in range(len(self._constitution)):
            x = 2 + i * 7
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(TRACK)
            p.drawRoundedRect(QRectF(x, 1, 5, h), 2, 2)
            if self._scores is not None:
                s = max(0.0, min(1.0, self._scores[i]))
                p.setBrush(score_color(s, self._thresholds[i]))
                fh = max(2.0, h * s)
                p.drawRoundedRect(QRectF(x, 1 + h - fh, 5, fh), 2, 2)
        pen = QPen(INK, 1)
        p.setPen(pen)
        for i, t in enumerate(self._thresholds):  # the threshold as a tick across each stick
            x = 2 + i * 7
            y = 1 + h * (1.0 - t)
            p.drawLine(QPointF(x - 1, y), QPointF(x + 6, y))
        p.end()
