"""Which thresholds a reply or an evaluation is judged against: "[x] model default" - the model's
per-law thresholds, calibrated on its validation split when it was trained (the constitution's
where a law has none) - or, unticked, one value for all five laws. Used by Chat and Evaluate."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QHBoxLayout, QWidget


class ThresholdChoice(QWidget):
    """The "model default" check box and, once it is unticked, the one threshold for every law."""

    changed = Signal()  # the user changed the choice or the value (set_value emits nothing)

    def __init__(self, default: float, *, whose: str = "the model's", spin_tip: str = "") -> None:
        super().__init__()
        self._loading = False
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        self.calibrated_check = QCheckBox("model default")
        self.calibrated_check.setToolTip(
            f"Use {whose} per-law thresholds, calibrated on the validation split when it was trained\n"
            "(the constitution's where a law has none). Untick to use one value for all five laws.")
        self.calibrated_check.setChecked(True)
        self.calibrated_check.toggled.connect(self._on_toggled)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(default)
        self.threshold_spin.setToolTip(spin_tip)
        self.threshold_spin.valueChanged.connect(self._emit)
        for w in (self.calibrated_check, self.threshold_spin):
            w.setMinimumWidth(w.sizeHint().width())  # never cut: the row wraps instead
            lay.addWidget(w)
        self._show_spin(False)  # shown (and used) once "model default" is unticked

    def value(self) -> float | None:
        """None: each model's calibrated thresholds; else the one value for every law."""
        return None if self.calibrated_check.isChecked() else round(self.threshold_spin.value(), 4)

    def set_value(self, value: float | None) -> None:
        """Show a stored choice; emits nothing."""
        self._loading = True
        try:
            self.calibrated_check.setChecked(value is None)
            self._show_spin(value is not None)
            if value is not None:
                self.threshold_spin.setValue(float(value))
        finally:
            self._loading = False

    def _show_spin(self, on: bool) -> None:
        self.threshold_spin.setEnabled(on)
        self.threshold_spin.setVisible(on)

    def _on_toggled(self, on: bool) -> None:
        self._show_spin(not on)
        self._emit()

    def _emit(self, *_a) -> None:
        if not self._loading:
            self.changed.emit()


__all__ = ["ThresholdChoice"]
