"""The Chat page's list of chats: New chat, the chats (newest first), Rename, Delete and Export.

The list only shows and asks; the page owns the chat store and acts on the signals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

READ_ONLY_TIP = "The chat history is read-only: it was written by a newer KALA Studio"


class ChatHistoryList(QWidget):
    """The chats of the store, one row each, and the buttons that act on the open one."""

    new_requested = Signal()
    chat_chosen = Signal(int)  # the user picked another chat
    rename_requested = Signal()
    delete_requested = Signal()
    export_requested = Signal(str)  # ".md" or ".json"

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("chatSide")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)  # a QWidget subclass paints its style sheet only so
        self.setStyleSheet("#chatSide { background: #eef1f5; }")
        col = QVBoxLayout(self)
        col.setContentsMargins(10, 12, 10, 10)
        self.new_button = QPushButton("+  New chat")
        self.new_button.clicked.connect(self.new_requested)
        col.addWidget(self.new_button)
        self.list = QListWidget()
        self.list.setStyleSheet(
            "QListWidget { background: transparent; border: none; }"
            "QListWidget::item { padding: 7px 6px; border-radius: 6px; color: #1f2933; }"
            "QListWidget::item:selected { background: #dbe4f0; color: #1f2933; }")
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setUniformItemSizes(True)
        self.list.currentItemChanged.connect(self._on_item)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._menu)
        col.addWidget(self.list, 1)
        row = QHBoxLayout()
        self.rename_button = QPushButton("Rename")
        self.rename_button.clicked.connect(self.rename_requested)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self.delete_requested)
        row.addWidget(self.rename_button)
        row.addWidget(self.delete_button)
        col.addLayout(row)
        self.export_button = QPushButton("Export…")
        menu = QMenu(self.export_button)
        menu.addAction("Markdown (.md)", lambda: self.export_requested.emit(".md"))
        menu.addAction("JSON with every token's scores (.json)", lambda: self.export_requested.emit(".json"))
        self.export_button.setMenu(menu)
        col.addWidget(self.export_button)
        self.setMinimumWidth(max(170, self.rename_button.minimumSizeHint().width()
                                 + self.delete_button.minimumSizeHint().width() + row.spacing() + 20))

    def show_chats(self, chats: Sequence[Any], current: int | None) -> None:
        """One row per chat summary (title; count and model in the tooltip); ``current`` selected."""
        self.list.blockSignals(True)
        self.list.clear()
        for c in chats:
            item = QListWidgetItem(c.title)
            item.setData(Qt.ItemDataRole.UserRole, c.id)
            item.setToolTip(f"{c.title}\n{c.message_count} messages\n{c.model or 'no model chosen'}")
            self.list.addItem(item)
            if c.id == current:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)

    def set_state(self, has_chat: bool, read_only: bool) -> None:
        for b in (self.rename_button, self.delete_button, self.export_button):
            b.setEnabled(has_chat)
        if read_only:  # shown, never written (see chat_store)
            for b in (self.new_button, self.rename_button, self.delete_button):
                b.setEnabled(False)
                b.setToolTip(READ_ONLY_TIP)

    def _on_item(self, item: QListWidgetItem | None, _prev: Any = None) -> None:
        if item is not None:
            self.chat_chosen.emit(int(item.data(Qt.ItemDataRole.UserRole)))

    def _menu(self, pos) -> None:
        if self.list.itemAt(pos) is None:
            return
        menu = QMenu(self)
        menu.addAction("Rename…", self.rename_requested.emit)
        menu.addAction("Delete…", self.delete_requested.emit)
        menu.exec(self.list.mapToGlobal(pos))


__all__ = ["READ_ONLY_TIP", "ChatHistoryList"]
