"""A combo box whose closed face elides a long item text ("20261130-01…tiny · final") instead of
cutting it at the edge; the full text is its tooltip. Qt's own styles only clip it."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QComboBox, QStyle, QStyleOptionComboBox, QStylePainter


class ElidedComboBox(QComboBox):
    def __init__(self, parent=None, elide: Qt.TextElideMode = Qt.TextElideMode.ElideMiddle) -> None:
        super().__init__(parent)
        self._elide = elide
        self.currentIndexChanged.connect(self._update_tooltip)

    def _update_tooltip(self, _index: int = -1) -> None:
        tip = self.currentData(Qt.ItemDataRole.ToolTipRole)
        self.setToolTip(str(tip) if tip else self.currentText())

    def _option(self) -> QStyleOptionComboBox:
        opt = QStyleOptionComboBox()
        self.initStyleOption(opt)
        if self.currentIndex() < 0 and self.placeholderText():  # as QComboBox.paintEvent does
            opt.currentText = self.placeholderText()
            opt.palette.setColor(QPalette.ColorRole.ButtonText, opt.palette.color(QPalette.ColorRole.PlaceholderText))
        return opt

    def shown_text(self) -> str:
        """The text the closed combo shows (elided to its width)."""
        opt = self._option()
        rect = self.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                           QStyle.SubControl.SC_ComboBoxEditField, self)
        return self.fontMetrics().elidedText(opt.currentText, self._elide, max(0, rect.width() - 4))

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt override
        p = QStylePainter(self)
        opt = self._option()
        p.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, opt)
        opt.currentText = self.shown_text()
        p.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, opt)
