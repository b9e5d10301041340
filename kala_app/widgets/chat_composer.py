"""The Chat page's composer: the per-chat settings, the message box, Send and Stop, a status line.

Settings: the threshold ("model default" = the model's calibrated per-law thresholds, else one
value for all five laws), temperature, top-p and the longest reply. They wrap onto a second
line in a narrow window instead of cutting labels and numbers. The composer only asks; the page
sends (``send_requested``), stops (``stop_requested``) and stores the settings
(``settings_changed``, not emitted while :meth:`ChatComposer.apply_settings` fills the boxes).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QFlowLayout

from ..chat_store import DEFAULT_SETTINGS
from .gauge import MUTED
from .threshold_choice import ThresholdChoice


def _spin(lo: float, hi: float, step: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setDecimals(2)
    box.setToolTip(tip)
    return box


class ChatComposer(QFrame):
    """Settings row, message box with Send / Stop, and the page's status line."""

    send_requested = Signal()
    stop_requested = Signal()
    settings_changed = Signal()

    def __init__(self, default_threshold: float) -> None:
        super().__init__()
        self._loading = False
        self.setObjectName("composer")
        self.setStyleSheet("#composer { border-top: 1px solid #dde3ea; }")
        col = QVBoxLayout(self)
        col.setContentsMargins(12, 8, 12, 10)
        col.setSpacing(6)
        col.addLayout(self._settings_row(default_threshold))
        row = QHBoxLayout()
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("Message KALA…  (Ctrl+Enter to send)")
        self.input.setFixedHeight(64)
        row.addWidget(self.input, 1)
        buttons = QVBoxLayout()
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.setStyleSheet(
            "QPushButton { background: #2f6fb0; color: white; border-radius: 6px; padding: 6px 16px; font-weight: 600; }"
            "QPushButton:disabled { background: #a9bdd3; }")
        self.send_button.clicked.connect(lambda: self.send_requested.emit())  # not clicked(bool)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the reply now (what was written so far is kept)")
        self.stop_button.clicked.connect(lambda: self.stop_requested.emit())
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        row.addLayout(buttons)
        col.addLayout(row)
        self.status = QLabel("")
        self.status.setStyleSheet(f"color: {MUTED.name()}; font-size: 9pt;")
        col.addWidget(self.status)
        QShortcut(QKeySequence("Ctrl+Return"), self.input, activated=lambda: self.send_requested.emit())

    def _settings_row(self, default_threshold: float) -> QFlowLayout:
        self.threshold = ThresholdChoice(
            default_threshold, spin_tip="Stop when a law's score falls under this value (all five laws)")
        self.threshold.changed.connect(self._changed)
        self.threshold_spin, self.calibrated_check = self.threshold.threshold_spin, self.threshold.calibrated_check
        self.temperature_spin = _spin(0.0, 2.0, 0.05, "0 = greedy (always the likeliest token)")
        self.top_p_spin = _spin(0.05, 1.0, 0.05, "Nucleus sampling: keep the likeliest tokens up to this probability")
        self.max_tokens_spin = QSpinBox()
        self.max_tokens_spin.setRange(1, 4096)
        self.max_tokens_spin.setToolTip("Longest reply, in tokens")
        for box in (self.temperature_spin, self.top_p_spin, self.max_tokens_spin):
            box.valueChanged.connect(self._changed)
        flow = QFlowLayout()
        flow.setContentsMargins(0, 0, 0, 0)
        flow.setSpacing(4)
        for label, widgets in (("Threshold", (self.threshold,)),
                               ("Temperature", (self.temperature_spin,)),
                               ("Top-p", (self.top_p_spin,)), ("Max tokens", (self.max_tokens_spin,))):
            group = QWidget()  # a label and its control(s) wrap together
            gl = QHBoxLayout(group)
            gl.setContentsMargins(0, 0, 8, 0)
            gl.setSpacing(6)
            lab = QLabel(label)
            lab.setStyleSheet(f"color: {MUTED.name()};")
            lab.setMinimumWidth(lab.sizeHint().width())
            gl.addWidget(lab)
            for w in widgets:
                if w is not self.threshold:  # it sizes its own parts (its spin box comes and goes)
                    w.setMinimumWidth(w.sizeHint().width())
                gl.addWidget(w)
            flow.addWidget(group)
        return flow

    def settings(self) -> dict[str, Any]:
        """The per-chat settings; ``threshold`` None = the model's calibrated thresholds."""
        return {"threshold": self.threshold.value(),
                "temperature": round(self.temperature_spin.value(), 4),
                "top_p": round(self.top_p_spin.value(), 4),
                "max_tokens": int(self.max_tokens_spin.value())}

    def apply_settings(self, s: dict[str, Any]) -> None:
        """Fill the boxes from stored settings (missing keys: the defaults); emits nothing."""
        self._loading = True
        try:
            self.threshold.set_value(s.get("threshold"))
            self.temperature_spin.setValue(float(s.get("temperature", DEFAULT_SETTINGS["temperature"])))
            self.top_p_spin.setValue(float(s.get("top_p", DEFAULT_SETTINGS["top_p"])))
            self.max_tokens_spin.setValue(int(s.get("max_tokens", DEFAULT_SETTINGS["max_tokens"])))
        finally:
            self._loading = False

    def _changed(self, *_a: Any) -> None:
        if not self._loading:
            self.settings_changed.emit()


__all__ = ["ChatComposer"]
