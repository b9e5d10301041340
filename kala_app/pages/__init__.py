"""The pages of the main window, one module each: data, train, chat, evaluate, runs.

Every page is a QWidget constructed as ``Page(ctx)`` with the shared
:class:`kala_app.context.AppContext`.
"""

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget


class PlaceholderPage(QWidget):
    """Shown for a page whose module is not installed (yet)."""

    def __init__(self, ctx, title: str):
        super().__init__()
        self.ctx = ctx
        lay = QVBoxLayout(self)
        label = QLabel(f"The {title} page is not available in this build.")
        label.setObjectName("placeholder")
        lay.addWidget(label)
        lay.addStretch(1)
