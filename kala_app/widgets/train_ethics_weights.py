"""The Train page's ethics-weight, per-layer and distillation controls, and their curves (issue 18).

:class:`EthicsWeightsBox` holds the settings of TrainConfig's issue-18 block (lambda schedule,
per-law weighting, the layers whose constitutional parts train, "constitutional parts only") and
an optional teacher: with one, Start distils the teacher into the chosen base (the student).
Two plots follow a run: the weights (lambda and every law's pull, per step) and, for a
distillation, its four loss terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QSpinBox,
    QToolButton,
    QWidget,
)
from superqt import QCollapsible

from kala_engine.train.config import LAMBDA_SCHEDULES, LAW_WEIGHTINGS, TrainConfig

from .live_plot import LivePlot

LAW_COLORS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
DISTILL_TERMS = [("kd_loss", "KL to teacher", "#1f77b4"), ("score_loss", "law scores", "#2ca02c"),
                 ("layer_loss", "layer monitors", "#9467bd"), ("label_loss", "data labels", "#7f7f7f")]


def parse_layers(text: str) -> list[int] | None:
    """'2,3' -> [2, 3]; '' or 'all' -> None; ValueError naming the fix otherwise."""
    t = text.strip().lower()
    if t in ("", "all"):
        return None
    try:
        out = [int(x) for x in t.replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"ethics layers {text!r}: write layer numbers separated by commas, e.g. 2,3 (or all)") from None
    if not out or min(out) < 0:
        raise ValueError(f"ethics layers {text!r}: layer numbers start at 0")
    return out


class EthicsWeightsBox(QGroupBox):
    """Settings for TrainConfig's issue-18 fields and a teacher for distillation (module docstring)."""

    def __init__(self, law_titles: list[str], parent: QWidget | None = None) -> None:
        super().__init__("Ethics weights, layers, distillation", parent)
        self.setObjectName("ethicsWeightsBox")
        tc = {f.name: f.default for f in fields(TrainConfig)}
        form = QFormLayout(self)
        self.schedule = QComboBox()
        self.schedule.addItems(LAMBDA_SCHEDULES)
        self.schedule.setToolTip("How λ moves over the run: constant; warmup (linear from 0); cosine (warm-up, "
                                 "then down to λ·min ratio).")
        self.warmup = QSpinBox()
        self.warmup.setRange(0, 1_000_000)
        self.warmup.setValue(tc["lambda_warmup_steps"])
        self.warmup.setToolTip("Steps over which λ rises from 0 (warmup, cosine).")
        self.weighting = QComboBox()
        self.weighting.addItems(LAW_WEIGHTINGS)
        self.weighting.setToolTip("Per-law weights on top of the constitution's priorities: fixed; uncertainty "
                                  "(Kendall et al. 2018: a law with a larger loss pulls less); validation (a law "
                                  "with a larger validation error pulls more, bounded).")
        self.bound = QDoubleSpinBox()
        self.bound.setRange(1.0, 100.0)
        self.bound.setDecimals(1)
        self.bound.setValue(tc["adaptive_bound"])
        self.bound.setToolTip("Adaptive weights stay within [1/B, B] times the priority.")
        self.layers = QLineEdit()
        self.layers.setPlaceholderText("all")
        self.layers.setToolTip("Layers whose constitutional parts train, e.g. 2,3 (empty: all).")
        self.const_only = QCheckBox("Constitutional parts only (freeze the base)")
        self.const_only.setToolTip("Only the value heads, monitors, gates and aggregator train; every base weight "
                                   "stays as it was - the cheapest way to give a large Pythia its ethics.")
        self.teacher = QLineEdit()
        self.teacher.setObjectName("teacherEdit")
        self.teacher.setPlaceholderText("none: train")
        self.teacher.setToolTip("A trained KALA model folder (RUN/final): Start distils it into the base above.")
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose the teacher's folder.")
        browse.clicked.connect(self._browse_teacher)
        trow = QHBoxLayout()
        trow.addWidget(self.teacher, 1)
        trow.addWidget(browse)
        self.student_layers = QSpinBox()
        self.student_layers.setRange(0, 256)
        self.student_layers.setSpecialValueText("as the base")
        self.student_layers.setToolTip("Layers of the student (evenly spaced layers of the base, the last kept).")
        form.addRow("λ schedule", self.schedule)
        form.addRow("λ warm-up steps", self.warmup)
        form.addRow("Law weighting", self.weighting)
        form.addRow("Bound", self.bound)
        form.addRow("Ethics layers", self.layers)
        form.addRow(self.const_only)
        form.addRow("Distil from", trow)
        form.addRow("Student layers", self.student_layers)

        self.weights_plot = LivePlot("Ethics weights per step (λ and each law's pull)", "weight", legend_columns=2)
        self.weights_plot.add_curve("lambda", "λ", "#000000", width=2, smooth=False)
        for k, title in enumerate(law_titles):
            self.weights_plot.add_curve(f"w{k}", title, LAW_COLORS[k % len(LAW_COLORS)], smooth=False)
        self.distill_plot = LivePlot("Distillation terms", "loss", legend_columns=2)
        for key, label, color in DISTILL_TERMS:
            self.distill_plot.add_curve(key, label, color)
        for p in (self.weights_plot, self.distill_plot):
            p.setMinimumHeight(70)  # they live in the Train page's small tabbed panel
        self.n_laws = len(law_titles)

    def folded(self) -> QCollapsible:
        """This box inside a fold (closed at start: the Train page's left column fits 640 px)."""
        fold = QCollapsible("Ethics weights, layers, distillation")
        fold.setObjectName("ethicsFold")
        fold.setDuration(0)
        fold.addWidget(self)
        return fold

    def _browse_teacher(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Teacher model folder (RUN/final)")
        if d:
            self.teacher.setText(d)

    def values(self) -> dict[str, Any]:
        """The TrainConfig fields these controls set; ValueError with the fix for bad input."""
        return {"lambda_schedule": self.schedule.currentText(), "lambda_warmup_steps": self.warmup.value(),
                "law_weighting": self.weighting.currentText(), "adaptive_bound": self.bound.value(),
                "ethics_layers": parse_layers(self.layers.text()), "constitutional_only": self.const_only.isChecked()}

    def job_for(self, config) -> Callable | None:
        """A distillation job when a teacher is set (the config's base is the student), else None."""
        teacher = self.teacher.text().strip()
        if not teacher:
            return None
        from kala_engine.train.distill import DistillConfig, distill_job, student_config

        layers = self.student_layers.value() or None
        return distill_job(student_config(config, teacher, layers), DistillConfig(teacher=teacher))

    def add_step(self, m: dict) -> None:
        """One metrics line: the weights, and the distillation terms when it has them."""
        x = m.get("step")
        if x is None:
            return
        if (v := m.get("lambda")) is not None:
            self.weights_plot.append("lambda", x, v)
        for k in range(self.n_laws):
            if (v := m.get(f"law_weight_{k}")) is not None:
                self.weights_plot.append(f"w{k}", x, v)
        for key, _label, _color in DISTILL_TERMS:
            if (v := m.get(key)) is not None:
                self.distill_plot.append(key, x, v)

    def clear(self) -> None:
        self.weights_plot.clear_data()
        self.distill_plot.clear_data()
