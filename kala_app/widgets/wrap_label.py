"""A word-wrapped label that always gets the height its text needs.

A wrapping ``QLabel`` inside a form in a scroll area is sized from its one-line size hint, so
its second and third lines are cut off. This one raises its minimum height to what its text
needs at its current width whenever it is resized or given a new text.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QSizePolicy


class WrapLabel(QLabel):
    def __init__(self, text: str = "", parent=None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.MinimumExpanding)

    def _fit(self) -> None:
        if self.width() <= 0:
            return
        need = self.heightForWidth(self.width()) if self.text() else 0
        if need > 0 and need != self.minimumHeight():
            self.setMinimumHeight(need)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        super().setText(text)
        self._fit()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._fit()
