"""A non-blocking banner for what start-up repaired (a damaged file moved aside, a read-only store).

The main window feeds it ``AppContext.notices`` and the chat store's notices; it stays until the
user dismisses it. Nothing here blocks (no modal dialog), so the app starts whatever happened.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QStyle, QVBoxLayout

#: notices shown at once (the rest are counted; all of them are copied by "Copy")
SHOWN = 4


class NoticeBanner(QFrame):
    """A yellow banner listing notices; hidden while there are none."""

    dismissed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("noticeBanner")
        self.setStyleSheet(
            "#noticeBanner { background: #fff8e1; border: 1px solid #f0c36d; border-radius: 6px; }"
        )
        self.notices: list[str] = []
        lay = QHBoxLayout(self)
        icon = QLabel()
        icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning).pixmap(28, 28))
        lay.addWidget(icon, 0, Qt.AlignmentFlag.AlignTop)
        self.label = QLabel()
        self.label.setObjectName("noticeText")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.label, 1)
        buttons = QVBoxLayout()
        copy = QPushButton("Copy")
        copy.setToolTip("Copy every notice (with the paths of the files that were kept aside)")
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText("\n".join(self.notices)))
        close = QPushButton("Dismiss")
        close.clicked.connect(self.dismiss)
        buttons.addWidget(copy)
        buttons.addWidget(close)
        buttons.addStretch(1)
        lay.addLayout(buttons)
        self.setVisible(False)

    def add(self, notice: str) -> None:
        if not notice or notice in self.notices:
            return
        self.notices.append(notice)
        lines = self.notices[-SHOWN:]
        more = len(self.notices) - len(lines)
        self.label.setText("\n".join(lines) + (f"\n(and {more} more; Copy copies them all)" if more else ""))
        self.setVisible(True)

    def dismiss(self) -> None:
        self.setVisible(False)
        self.dismissed.emit()
