"""The conversation view of the Chat page (the transcript): a scrolling column of messages.

User messages and replies are :mod:`kala_app.widgets.chat_bubbles`; a reply's token-shaded text
and sparkline are :mod:`kala_app.widgets.token_text`. Hovering a token emits
:attr:`ChatView.token_hovered`, clicking it :attr:`ChatView.token_selected`, both with a
:class:`~kala_app.widgets.chat_bubbles.TokenInfo` (index, text, five scores, per-layer scores).
The view follows the newest text while it is scrolled to the bottom.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from kala_engine.constitution import Constitution, load_constitution, resolve_thresholds

from .chat_bubbles import ReplyWidget, StopBanner, TokenInfo, UserMessageWidget
from .gauge import MUTED
from .token_text import Sparkline, TokenText

PAGE_BG = "#f4f6f9"
#: the column's left and right margins (px): a message is never wider than what is left
COLUMN_MARGIN = 18


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
        self._col.setContentsMargins(COLUMN_MARGIN, 16, COLUMN_MARGIN, 16)
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

    def show_hint(self, model_chosen: bool) -> None:
        """The empty chat's hint: pick a model first, or (one is chosen) just write."""
        first = "Send a message below." if model_chosen else "Pick a model above and send a message."
        self.set_placeholder(first + "\nEvery token of the reply is scored against the Five Laws.")

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

    def message_width(self) -> int:
        """The widest a user message may be: three quarters of the view, at least 320 px, but
        never wider than the column (a narrow window wraps the message instead of cutting it)."""
        column = self.viewport().width() - 2 * COLUMN_MARGIN
        return max(120, min(column, max(320, int(self.viewport().width() * 0.75))))

    def add_user_message(self, text: str, assessment: Sequence[float] | None = None) -> UserMessageWidget:
        w = UserMessageWidget(text, self._constitution, self._thresholds)
        w.fit_width(self.message_width())
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

    def viewportEvent(self, event) -> bool:  # noqa: N802 - Qt override
        # the viewport, not the view: it also narrows when the vertical scroll bar appears
        if event.type() == QEvent.Type.Resize:
            for w in self.user_messages():
                w.fit_width(self.message_width())
        return super().viewportEvent(event)

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
