"""The Chat page's inspector: the five-bar law gauge and the decision path of one token.

While a reply streams it follows the newest token; hovering a token shows it; clicking pins it
(:meth:`ChatInspector.show_token` with the mode). A token is judged against its own reply's
thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QLabel, QVBoxLayout, QWidget

from .gauge import MUTED, LawGauge
from .heatmap import DecisionPathHeatmap

#: what the line under the gauge says in each mode
MODE_HINTS = {"Newest token": "Following the newest token. Click a token to pin it.",
              "Last token": "Last token of the reply. Click any token to inspect it.",
              "Selected": "Pinned. Click another token to inspect it.",
              "Hover": "Hovering."}


class ChatInspector(QWidget):
    """Gauge (five law bars against their thresholds) above the per-layer decision path."""

    def __init__(self, constitution: Any) -> None:
        super().__init__()
        self.setObjectName("inspector")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)  # a QWidget subclass paints its style sheet only so
        self.setStyleSheet("#inspector { background: #fbfcfd; border-left: 1px solid #dde3ea; }")
        col = QVBoxLayout(self)
        col.setContentsMargins(14, 12, 14, 12)
        col.setSpacing(10)
        self.gauge = LawGauge(constitution)
        col.addWidget(self.gauge)
        self.mode = QLabel("")
        self.mode.setWordWrap(True)  # a narrow inspector wraps it instead of cutting it
        self.mode.setStyleSheet(f"color: {MUTED.name()}; font-size: 8.5pt;")
        col.addWidget(self.mode)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setStyleSheet("color: #dde3ea;")
        col.addWidget(line)
        self.heatmap = DecisionPathHeatmap(constitution)
        col.addWidget(self.heatmap, 1)
        self.setMinimumWidth(300)

    def set_thresholds(self, thresholds: Sequence[float]) -> None:
        self.gauge.set_thresholds(thresholds)
        self.heatmap.set_thresholds(thresholds)

    def show_token(self, info: Any, mode: str) -> None:
        """Show one token (a :class:`~kala_app.widgets.chat_bubbles.TokenInfo`); ``mode`` is a key of MODE_HINTS."""
        text = info.text.replace("\n", "⏎")
        shown = text.strip() or text
        self.set_thresholds(info.reply.thresholds())  # judged against its reply's thresholds
        self.gauge.set_scores(info.law_scores, f"{mode}: “{shown}”  (#{info.index})")
        self.heatmap.set_path(info.layer_scores, info.law_scores, f"Decision path of #{info.index} “{shown}” per layer")
        self.mode.setText(MODE_HINTS.get(mode, ""))

    def wait_for_tokens(self) -> None:
        self.gauge.set_scores(None)
        self.gauge.set_placeholder("Waiting for the first token…")
        self.heatmap.set_path(None)

    def clear(self) -> None:
        self.gauge.set_placeholder("Hover or click a token to see its law scores")
        self.gauge.set_scores(None)
        self.heatmap.set_path(None)
        self.mode.setText("")


__all__ = ["MODE_HINTS", "ChatInspector"]
