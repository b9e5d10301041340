"""The Train page (being built)."""

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget


class TrainPage(QWidget):
    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        QVBoxLayout(self).addWidget(QLabel("Train"))
