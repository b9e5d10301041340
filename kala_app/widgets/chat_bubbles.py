"""The messages of a conversation: the user's bubble with its prompt assessment, and a reply.

* A user message (:class:`UserMessageWidget`) is a bubble on the right with its *prompt
  assessment* (the law scores the model gave the prompt's last token) as a five-stick
  :class:`~kala_app.widgets.gauge.MiniGauge` and one line of text (wrapped; never cut).
* A reply (:class:`ReplyWidget`) grows token by token (:meth:`ReplyWidget.append_tokens`);
  each token is shaded by its lowest law score. Under the text a
  :class:`~kala_app.widgets.token_text.Sparkline` draws the minimum law score of every token
  against the threshold; an ethics stop adds a :class:`StopBanner` naming the law, its score
  and the explanation (:meth:`ReplyWidget.show_outcome`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QPoint, Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget
from superqt import QElidingLabel

from kala_engine.constitution import Constitution

from .gauge import BAD, INK, MUTED, MiniGauge
from .token_text import Sparkline, TokenText

USER_BG = "#e7effb"
REPLY_BG = "#ffffff"
BORDER = "#dde3ea"
#: how a reply's status line words the way it ended (the stop kinds of kala_engine.generate.explain)
_ENDINGS = {"eos": "finished", "length": "reached the token limit", "cancelled": "stopped by you",
            "ethics": "stopped by the constitution", "error": "failed"}


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
            self.assessment_label.setToolTip("")
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
        self.assessment_label.setToolTip(self.assessment_text())  # the whole line, however narrow the bubble

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
        head = QElidingLabel(title)  # a long run name is elided (whole in the tooltip), never widens the reply
        head.setElideMode(Qt.TextElideMode.ElideMiddle)
        head.setToolTip(title)
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
        self.status.setWordWrap(True)  # wraps in a narrow transcript instead of widening the reply past it
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

    def show_outcome(self, status: str, stop: dict | None, explanation: dict | None, n: int,
                     elapsed: float | None = None) -> None:
        """Close the reply: its status line (tokens, how it ended, time) and, for an ethics stop,
        the banner naming the law, its score against the threshold and the explanation.

        ``stop`` / ``explanation`` are the stored dicts (``kala_app.pages.chat_outcome.Outcome``)."""
        stop = stop or {}
        kind = stop.get("kind") or ("ethics" if status == "stopped" else "eos")
        parts = [f"{n} tokens", _ENDINGS.get(kind, kind)]
        if status == "interrupted":
            parts[1] = "interrupted (the app closed while it was being written)"
        if elapsed:
            parts.append(f"{elapsed:.1f} s")
        self.set_status(" · ".join(parts))
        if kind == "ethics":
            self.show_stop(*self._stop_words(stop, explanation or {}))

    def _stop_words(self, stop: dict, expl: dict) -> tuple[str, list[str]]:
        law_i = stop.get("law")
        law = self._constitution[int(law_i)] if law_i is not None else None
        score, th = stop.get("score"), stop.get("threshold")
        if law is not None and score is not None and th is not None:
            title = f"Stopped: {law.title} fell to {float(score):.2f} < {float(th):.2f}"
        elif law is not None:
            title = f"Stopped: {law.title}"
        else:
            title = "Stopped by the constitution"
        lines = []
        if law is not None:
            lines.append(f"“{law.short}”: {law.text.split('.')[0]}.")
        for v in expl.get("violated", []):
            bits = [self._constitution[int(v["law"])].title]
            if v.get("score") is not None:
                bits.append(f"score {float(v['score']):.2f}")
            if v.get("first_layer") is not None:
                bits.append(f"first under the threshold at layer {int(v['first_layer'])}")
            lines.append("• " + ", ".join(bits))
        text = expl.get("text") or ""
        if text and not expl.get("violated"):
            lines.append(text)
        elif stop.get("message") and stop.get("message") not in title:
            lines.append(str(stop["message"]))
        return title, lines

    def token_point(self, index: int) -> QPoint:
        """Where token ``index`` is, in this widget's text viewport (for clicks in tests)."""
        return self.text_view.token_point(index)

    # -- signals --------------------------------------------------------------
    def _on_hover(self, i: int) -> None:
        self.token_hovered.emit(None if i < 0 else self.token(i))

    def _on_click(self, i: int) -> None:
        if 0 <= i < len(self._tokens):
            self.token_clicked.emit(self.token(i))


__all__ = ["ReplyWidget", "StopBanner", "TokenInfo", "UserMessageWidget"]
