"""The Train page's method selector (constitutional SFT, DPO, ORPO, SimPO) and its live plot.

:class:`TrainMethod` holds the method, its settings (beta, SimPO's gamma) and a hint of what the
method needs; :attr:`TrainMethod.plot` draws what a preference method logs - the reward margin
and the preference accuracy, per step and on the held-out pairs - and is shown only for those
methods. The engine side is ``kala align`` (kala_engine.train.align); the page passes
:meth:`TrainMethod.settings` into the run's config, and the engine's job factory picks
``align_job`` for a preference method. :func:`method_text` says the same for the Runs page.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QWidget

from kala_engine.train.config import ALIGN_LEARNING_RATE, TrainConfig

from .live_plot import LivePlot

#: (method, label in the selector, what it needs)
METHODS = [
    ("sft", "Constitutional SFT", "LM loss on ethical replies + λ·ethics loss (kala train). Data: a KALA data set."),
    ("dpo", "DPO (preference pairs)",
     "Direct preference optimisation against a reference (LoRA: adapters off; else a frozen copy). "
     "Data: a pair file (kala data generate --pairs); base: a trained KALA model."),
    ("orpo", "ORPO (no reference)", "Odds-ratio preference loss plus NLL of the chosen reply; no reference model. "
                                    "Data: a pair file; base: a trained KALA model."),
    ("simpo", "SimPO (no reference)", "Length-normalised preference loss with a target margin; no reference model. "
                                      "Data: a pair file; base: a trained KALA model."),
]
MARGIN_COLOR, ACCURACY_COLOR, VAL_COLOR = "#1f77b4", "#2ca02c", "#000000"


def method_text(config: dict) -> str:
    """'DPO (beta 0.1)' for a run's config; 'constitutional SFT' for kala train's runs."""
    method = config.get("method") or "sft"
    if method == "sft":
        return "constitutional SFT"
    extra = f", gamma {config.get('simpo_gamma'):g}" if method == "simpo" and config.get("simpo_gamma") is not None else ""
    beta = config.get("beta")
    return f"{method.upper()} (beta {beta:g}{extra})" if isinstance(beta, (int, float)) else method.upper()


class TrainMethod(QWidget):
    """The method combo with beta / gamma; emits ``method_changed(method)``."""

    method_changed = Signal(str)

    def __init__(self, settings=None, parent: QWidget | None = None):
        super().__init__(parent)
        self.settings_store = settings
        d = {f.name: f.default for f in TrainConfig.__dataclass_fields__.values()}
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setObjectName("trainMethod")
        for key, label, tip in METHODS:
            self.combo.addItem(label, key)
            self.combo.setItemData(self.combo.count() - 1, tip, 3)  # Qt.ToolTipRole
        self.beta = QDoubleSpinBox()
        self.beta.setRange(0.001, 100.0)
        self.beta.setDecimals(3)
        self.beta.setSingleStep(0.05)
        self.beta.setValue(d["beta"])
        self.beta.setToolTip("β: how far the model may move from the reference (DPO, SimPO); ORPO: odds-ratio weight.")
        self.gamma = QDoubleSpinBox()
        self.gamma.setRange(0.0, 100.0)
        self.gamma.setDecimals(2)
        self.gamma.setSingleStep(0.1)
        self.gamma.setValue(d["simpo_gamma"])
        self.gamma.setToolTip("SimPO's target reward margin γ.")
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #666;")
        form.addRow("Method", self.combo)
        form.addRow("β", self.beta)
        form.addRow("SimPO γ", self.gamma)
        form.addRow(self.hint)
        self.plot = LivePlot("Preference: reward margin and accuracy", "", phase_ms=50)
        self.plot.setObjectName("preferencePlot")
        self.plot.add_curve("margin", "reward margin", MARGIN_COLOR, width=2)
        self.plot.add_curve("accuracy", "preference accuracy", ACCURACY_COLOR)
        self.plot.add_points("margin_val", "held-out margin", VAL_COLOR)
        self.plot.add_points("accuracy_val", "held-out accuracy", ACCURACY_COLOR, symbol="t")
        if settings is not None:
            i = self.combo.findData(settings.value("train/method", "sft"))
            self.combo.setCurrentIndex(max(0, i))
        self.combo.currentIndexChanged.connect(self._changed)
        self._changed()

    def method(self) -> str:
        return self.combo.currentData()

    def set_method(self, method: str) -> None:
        self.combo.setCurrentIndex(max(0, self.combo.findData(method)))

    def settings(self) -> dict:
        """The config fields of the chosen method."""
        return {"method": self.method(), "beta": self.beta.value(), "simpo_gamma": self.gamma.value()}

    def default_learning_rate(self) -> float | None:
        """kala align's learning rate for a preference method (None: SFT keeps the page's)."""
        return None if self.method() == "sft" else ALIGN_LEARNING_RATE

    def _changed(self, *_args) -> None:
        m = self.method()
        self.beta.setEnabled(m != "sft")
        self.gamma.setEnabled(m == "simpo")
        self.hint.setText(next(tip for key, _, tip in METHODS if key == m))
        self.plot.setVisible(m != "sft")
        if self.settings_store is not None:
            self.settings_store.setValue("train/method", m)
        self.method_changed.emit(m)

    # ------------------------------------------------------------ live data

    def add_step(self, m: dict) -> None:
        x = m.get("step")
        if x is None or "reward_margin" not in m:
            return
        self.plot.setVisible(True)
        self.plot.append("margin", x, m["reward_margin"])
        self.plot.append("accuracy", x, m["preference_accuracy"])

    def add_validation(self, m: dict) -> None:
        x = m.get("step")
        if x is None or "reward_margin" not in m:
            return
        self.plot.append("margin_val", x, m["reward_margin"])
        self.plot.append("accuracy_val", x, m["preference_accuracy"])
