"""An error dialog: the message for the user, and the traceback behind a "Details" toggle."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QStyle,
    QVBoxLayout,
    QWidget,
)


class ErrorDialog(QDialog):
    """Shows ``message``; ``traceback`` (if any) is hidden until "Show details" is clicked."""

    def __init__(self, title: str, message: str, traceback: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setObjectName("errorDialog")
        self.message = message
        self.traceback = traceback

        icon = QLabel()
        icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical).pixmap(40, 40))
        self.message_label = QLabel(message)
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        top = QHBoxLayout()
        top.addWidget(icon, 0)
        top.addWidget(self.message_label, 1)

        self.details = QPlainTextEdit(traceback)
        self.details.setReadOnly(True)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        self.details.setFont(mono)
        self.details.setVisible(False)
        self.details.setMinimumHeight(220)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok)
        buttons.accepted.connect(self.accept)
        self.details_button = QPushButton("Show details")
        self.details_button.setCheckable(True)
        self.details_button.toggled.connect(self._toggle)
        copy = QPushButton("Copy")
        copy.clicked.connect(self._copy)
        buttons.addButton(copy, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(self.details_button, QDialogButtonBox.ButtonRole.ActionRole)
        # after addButton, which shows the button: nothing to show behind it without a traceback
        self.details_button.setVisible(bool(traceback))

        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.details, 1)
        lay.addWidget(buttons)
        self.resize(560, 180)

    def _toggle(self, on: bool) -> None:
        self.details.setVisible(on)
        self.details_button.setText("Hide details" if on else "Show details")
        self.resize(self.width(), 480 if on else 180)

    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(self.message + ("\n\n" + self.traceback if self.traceback else ""))


def show_error(parent: QWidget | None, title: str, message: str, traceback: str = "") -> ErrorDialog:
    """Open an :class:`ErrorDialog` without blocking (window-modal); returns it."""
    dlg = ErrorDialog(title, message, traceback, parent)
    dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
    dlg.open()
    return dlg
