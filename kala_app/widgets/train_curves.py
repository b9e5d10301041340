"""The Train page's loss curves: the LM loss and the ethics loss (total and one curve per law, each
hidden from the legend) with validation points, the learning rate, smoothing, and the overlay of an
earlier run (dashed, grey). Metrics lines (live events or a run's metrics.jsonl) go in through
:meth:`TrainCurves.add_step` / :meth:`TrainCurves.add_validation`, which also feed the ``extra``
parts (the method's and the ethics weights' plots)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider

from ..runs import load_curves
from .elided_combo import ElidedComboBox
from .live_plot import LivePlot
from .train_parts import ETHICS_COLOR, LAW_COLORS, LM_COLOR, OVERLAY_COLOR, VAL_COLOR


class TrainCurves(QObject):
    """Owns the plots and the bar above them (``bar``: smoothing and "Compare with")."""

    def __init__(self, law_titles: list[str], settings, extra=()) -> None:
        super().__init__()
        self.law_titles = list(law_titles)
        self.settings = settings
        self.extra = list(extra)
        self.lm_plot = LivePlot("Language-modeling loss", "loss")
        self.lm_plot.add_curve("lm", "train", LM_COLOR)
        self.lm_plot.add_points("lm_val", "validation", VAL_COLOR)
        self.ethics_plot = LivePlot("Ethics loss (click a legend entry to hide it)", "loss", phase_ms=33,
                                    legend_columns=2)
        self.ethics_plot.add_curve("ethics", "total", ETHICS_COLOR, width=2)
        for k, title in enumerate(self.law_titles):
            self.ethics_plot.add_curve(f"law{k}", title, LAW_COLORS[k % len(LAW_COLORS)])
        self.ethics_plot.add_points("ethics_val", "validation", VAL_COLOR)
        self.lr_plot = LivePlot("Learning rate", "lr", phase_ms=66)
        self.lr_plot.add_curve("lr", "learning rate", "#444", smooth=False)
        self.plots = [self.lm_plot, self.ethics_plot, self.lr_plot]
        self._build_bar()

    def _build_bar(self) -> None:
        self.smooth_slider = QSlider(Qt.Orientation.Horizontal)
        self.smooth_slider.setRange(0, 99)
        self.smooth_slider.setValue(int(float(self.settings.value("train/smoothing", 60))))
        self.smooth_slider.setToolTip("Exponential moving average of the loss curves (0: raw values).")
        self.smooth_slider.valueChanged.connect(self.set_smoothing)
        self.smooth_label = QLabel()
        self.overlay_combo = ElidedComboBox()
        self.overlay_combo.setObjectName("overlayCombo")
        self.overlay_combo.setToolTip("Draw an earlier run's curves (dashed, grey) under this one.")
        self.overlay_combo.setMinimumWidth(220)
        self.overlay_combo.activated.connect(lambda i: self.set_overlay(self.overlay_combo.itemData(i)))
        self.bar = QHBoxLayout()
        self.bar.addWidget(QLabel("Smoothing"))
        self.bar.addWidget(self.smooth_slider, 1)
        self.bar.addWidget(self.smooth_label)
        self.bar.addSpacing(16)
        self.bar.addWidget(QLabel("Compare with"))
        self.bar.addWidget(self.overlay_combo, 1)
        self.set_smoothing(self.smooth_slider.value())

    def add_step(self, m: dict) -> None:
        x = m.get("step")
        if x is None:
            return
        if (v := m.get("lm_loss")) is not None:
            self.lm_plot.append("lm", x, v)
        if (v := m.get("ethics_loss")) is not None:
            self.ethics_plot.append("ethics", x, v)
        for k in range(len(self.law_titles)):
            if (v := m.get(f"law_loss_{k}")) is not None:
                self.ethics_plot.append(f"law{k}", x, v)
        if (v := m.get("lr")) is not None:
            self.lr_plot.append("lr", x, v)
        for part in self.extra:
            part.add_step(m)

    def add_validation(self, m: dict) -> None:
        x = m.get("step")
        lm = m.get("lm_loss", m.get("val_lm_loss"))
        eth = m.get("ethics_loss", m.get("val_ethics_loss"))
        if x is None:
            return
        if lm is not None:
            self.lm_plot.append("lm_val", x, lm)
        if eth is not None:
            self.ethics_plot.append("ethics_val", x, eth)
        for part in self.extra:
            if hasattr(part, "add_validation"):
                part.add_validation(m)

    def load_run(self, run_dir: str | Path) -> None:
        """Every line of a run's metrics.jsonl (a resumed run's curves so far)."""
        train, val = load_curves(run_dir)
        for m in train:
            self.add_step(m)
        for m in val:
            self.add_validation(m)

    def set_smoothing(self, value: int) -> None:
        alpha = value / 100.0
        self.smooth_label.setText(f"{alpha:.2f}")
        for p in (self.lm_plot, self.ethics_plot):
            p.set_smoothing(alpha)

    def set_overlay(self, run_dir: str | Path | None) -> int:
        """Draw ``run_dir``'s curves dashed under the live ones (None removes them). Returns points."""
        for p in (self.lm_plot, self.ethics_plot):
            for k in [k for k in p.series if k.startswith("ov_")]:
                p.remove(k)
        if not run_dir:
            return 0
        train, val = load_curves(run_dir)
        name = Path(run_dir).name
        dash = Qt.PenStyle.DashLine
        self.lm_plot.add_curve("ov_lm", f"{name}", OVERLAY_COLOR, style=dash)
        self.ethics_plot.add_curve("ov_ethics", f"{name}", OVERLAY_COLOR, style=dash)
        xs = [m["step"] for m in train if "step" in m and m.get("lm_loss") is not None]
        self.lm_plot.extend("ov_lm", xs, [m["lm_loss"] for m in train if "step" in m and m.get("lm_loss") is not None])
        xe = [m["step"] for m in train if "step" in m and m.get("ethics_loss") is not None]
        self.ethics_plot.extend("ov_ethics", xe,
                                [m["ethics_loss"] for m in train if "step" in m and m.get("ethics_loss") is not None])
        for p in (self.lm_plot, self.ethics_plot):
            p.set_smoothing(p.smoothing)
            p.redraw()
        i = self.overlay_combo.findData(str(run_dir))
        if i >= 0:
            self.overlay_combo.setCurrentIndex(i)
        return len(xs)
