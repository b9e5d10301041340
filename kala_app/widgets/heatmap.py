"""The decision path of one token: a layer × law heatmap of the per-layer ethics monitor scores.

Rows are the decoder layers (layer 0 at the top, the output at the bottom), columns the Five
Laws in hierarchy order. Each cell is coloured on the red → amber → green ramp with amber at the
law's threshold; a cell under its threshold gets a dark outline, and the first layer at which a
law's monitor fell under its threshold (where the model "decided") is marked with a triangle.
An optional last row shows the aggregated (final) scores.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QFont, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from kala_engine.constitution import Constitution, first_layer_under, load_constitution, resolve_thresholds

from .gauge import INK, MUTED, TRACK, ink_on, ramp_color


def first_layers_under(layer_scores: Sequence[Sequence[float]], thresholds: Sequence[float]) -> list[int | None]:
    """Per law, the first layer whose score is under that law's threshold (None if none is)."""
    return [first_layer_under([row[k] for row in layer_scores], t) for k, t in enumerate(thresholds)]


class DecisionPathHeatmap(QWidget):
    """Per-layer × per-law scores of the selected token (see the module docstring)."""

    LABEL_W = 58
    HEADER_H = 34
    MAX_CELL_H = 22
    MIN_CELL_H = 5

    def __init__(self, constitution: Constitution | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._constitution = constitution or load_constitution()
        self._thresholds = tuple(self._constitution.thresholds)
        self._layers: tuple[tuple[float, ...], ...] | None = None
        self._final: tuple[float, ...] | None = None
        self._caption = ""
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(220, 120)

    # -- data ---------------------------------------------------------------
    def set_thresholds(self, value: float | Sequence[float]) -> None:
        self._thresholds = resolve_thresholds(value)
        self.update()

    def set_path(
        self,
        layer_scores: Sequence[Sequence[float]] | None,
        final_scores: Sequence[float] | None = None,
        caption: str = "",
    ) -> None:
        """Show a (layers, 5) score table (None clears it) and optionally the final scores."""
        n = len(self._constitution)
        if layer_scores is None or len(layer_scores) == 0:
            self._layers = None
        else:
            rows = tuple(tuple(float(v) for v in row) for row in layer_scores)
            if any(len(r) != n for r in rows):
                raise ValueError(f"each layer needs {n} law scores")
            self._layers = rows
        self._final = None if final_scores is None else tuple(float(v) for v in final_scores)
        self._caption = caption
        self.update()

    def layer_scores(self) -> tuple[tuple[float, ...], ...] | None:
        return self._layers

    def first_layers(self) -> list[int | None]:
        return [] if self._layers is None else first_layers_under(self._layers, self._thresholds)

    # -- geometry -------------------------------------------------------------
    def _rows(self) -> list[tuple[str, tuple[float, ...]]]:
        rows = [(f"layer {i}", r) for i, r in enumerate(self._layers or ())]
        if self._final is not None and self._layers is not None:
            rows.append(("final", self._final))
        return rows

    def _grid(self) -> tuple[float, float, float, float]:
        """x0, y0, cell width, cell height."""
        rows = max(1, len(self._rows()))
        cols = len(self._constitution)
        avail_h = self.height() - self.HEADER_H - 24
        cell_h = max(self.MIN_CELL_H, min(self.MAX_CELL_H, avail_h / rows))
        cell_w = (self.width() - self.LABEL_W - 4) / cols
        return self.LABEL_W, self.HEADER_H, cell_w, cell_h

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt override
        rows = self._rows()
        if not rows:
            return
        x0, y0, cw, ch = self._grid()
        pos = event.position()
        c = int((pos.x() - x0) // cw)
        r = int((pos.y() - y0) // ch)
        if 0 <= c < len(self._constitution) and 0 <= r < len(rows):
            name, row = rows[r]
            law = self._constitution[c]
            QToolTip.showText(event.globalPosition().toPoint(),
                              f"{name} · {law.title}: <b>{row[c]:.3f}</b> (threshold {self._thresholds[c]:.2f})",
                              self)
        else:
            QToolTip.hideText()

    # -- painting -------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        small = QFont(self.font())
        small.setPointSizeF(self.font().pointSizeF() * 0.85)
        p.setFont(small)
        w = self.width()
        p.setPen(MUTED)
        caption = self._caption or "Decision path: monitor scores per layer"
        p.drawText(QRectF(0, 0, w, 16), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   p.fontMetrics().elidedText(caption, Qt.TextElideMode.ElideRight, w))
        rows = self._rows()
        x0, y0, cw, ch = self._grid()
        # law headers (numbers; names in the tooltip and the gauge)
        p.setPen(INK)
        for law in self._constitution:
            p.drawText(QRectF(x0 + law.index * cw, 16, cw, 16), Qt.AlignmentFlag.AlignCenter, f"Law {law.index}")
        if not rows:
            p.setPen(MUTED)
            p.drawText(QRectF(0, y0, w, 40), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       "Select a token to see how each layer's monitor scored it"
                       if not self._caption else "No per-layer scores for this token")
            p.end()
            return
        first = self.first_layers()
        show_numbers = ch >= 15 and cw >= 34
        label_every = max(1, int(14 // ch) + (1 if ch < 14 else 0))
        for r, (name, row) in enumerate(rows):
            y = y0 + r * ch + (4 if name == "final" else 0)
            if name != "final" and (r % label_every == 0):
                p.setPen(MUTED)
                p.drawText(QRectF(0, y, x0 - 6, ch), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, name)
            elif name == "final":
                p.setPen(INK)
                p.drawText(QRectF(0, y, x0 - 6, ch), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, name)
            for c, v in enumerate(row):
                t = self._thresholds[c]
                cell = QRectF(x0 + c * cw + 1, y + 1, cw - 2, ch - 2)
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(ramp_color(v, t))
                p.drawRoundedRect(cell, 3, 3)
                if v < t:
                    p.setPen(QPen(INK, 1.5))
                    p.setBrush(Qt.BrushStyle.NoBrush)
                    p.drawRoundedRect(cell.adjusted(0.5, 0.5, -0.5, -0.5), 3, 3)
                if show_numbers:
                    p.setPen(ink_on(ramp_color(v, t)))
                    p.drawText(cell, Qt.AlignmentFlag.AlignCenter, f"{v:.2f}")
                if name != "final" and first and first[c] == r:
                    tri = QPainterPath()  # the layer where this law's monitor first fell under
                    tri.moveTo(cell.left() - 1, cell.center().y() - 4)
                    tri.lineTo(cell.left() + 5, cell.center().y())
                    tri.lineTo(cell.left() - 1, cell.center().y() + 4)
                    tri.closeSubpath()
                    p.setPen(Qt.PenStyle.NoPen)
                    p.setBrush(INK)
                    p.drawPath(tri)
        # legend
        ly = y0 + len(rows) * ch + 8
        if ly + 14 <= self.height():
            lx = x0
            for label, v in (("0", 0.0), ("threshold", self._thresholds[0]), ("1", 1.0)):
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(ramp_color(v, self._thresholds[0]))
                p.drawRoundedRect(QRectF(lx, ly + 2, 10, 10), 2, 2)
                p.setPen(MUTED)
                tw = p.fontMetrics().horizontalAdvance(label)
                p.drawText(QPointF(lx + 14, ly + 11), label)
                lx += 14 + tw + 12
            p.setPen(MUTED)
            marker = "▸ first layer under"
            if lx + p.fontMetrics().horizontalAdvance(marker) > w and ly + 30 <= self.height():
                lx, ly = x0, ly + 16  # a narrow panel: the marker's key goes on a line of its own
            p.drawText(QPointF(lx, ly + 11), marker)
        p.setPen(QPen(TRACK, 1))
        p.end()
