"""Parts of the Train page: the memory-estimate bar, the resume offer, and the curve colours."""

from __future__ import annotations

import math

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from kala_engine.units import format_duration

from ..runs import RunInfo
from .wrap_label import WrapLabel

#: Colours of the five law curves (index = law index), the LM loss and the total ethics loss.
LAW_COLORS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
LM_COLOR = "#1f77b4"
ETHICS_COLOR = "#2ca02c"
VAL_COLOR = "#000000"
OVERLAY_COLOR = "#9a9a9a"

GiB = 1024**3


class MemoryBar(QWidget):
    """Estimated memory against available memory, green when it fits, red when it does not."""

    def __init__(self) -> None:
        super().__init__()
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(True)
        self.bar.setFormat("no estimate yet")
        self.bar.setValue(0)
        self.reason = WrapLabel("")
        self.reason.setObjectName("fitReason")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.bar)
        lay.addWidget(self.reason)
        self.fits: bool | None = None

    def set_estimate(self, estimate: float, available: float, fits: bool | None, reason: str = "",
                     base_problem: str = "") -> None:
        """Show the estimate; ``base_problem`` (the base is not here) qualifies a "fits"."""
        self.fits = fits
        if math.isnan(estimate) or math.isnan(available) or available <= 0:
            self.bar.setValue(0)
            self.bar.setFormat("memory estimate unavailable")
        else:
            self.bar.setValue(min(1000, int(1000 * estimate / available)))
            verdict = "fits" if fits else "does not fit"
            if base_problem:
                verdict += "*"  # the line under the bar says: but the base is not available
            self.bar.setFormat(f"{estimate / GiB:.2f} of {available / GiB:.1f} GiB — {verdict}")
        color = ("#3a9d3a" if fits and not base_problem else "#d08a1a" if fits
                 else ("#c0392b" if fits is False else "#999"))
        self.bar.setStyleSheet(f"QProgressBar::chunk {{ background: {color}; }}")
        lines = []
        if base_problem:
            lines.append(f"* {'Fits' if fits else 'Would not fit anyway'}, but the base is not available: "
                         "see the note under Base.")
        if reason and not fits:
            lines.append(reason)
        why = "\n".join(lines)
        self.reason.setText(why)
        self.reason.setVisible(bool(why))


class ResumeBanner(QFrame):
    """Offers to resume an interrupted run."""

    resume_clicked = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("resumeBanner")
        self.setStyleSheet("#resumeBanner { background: #fff4e0; border: 1px solid #f0c070; border-radius: 6px; }")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(8, 4, 8, 4)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.button = QPushButton("Resume")
        self.dismiss = QPushButton("Dismiss")
        lay.addWidget(self.label, 1)
        lay.addWidget(self.button)
        lay.addWidget(self.dismiss)
        self.run: RunInfo | None = None
        self.button.clicked.connect(lambda: self.resume_clicked.emit(self.run))
        self.dismiss.clicked.connect(self.hide)
        self.hide()

    def offer(self, run: RunInfo | None) -> None:
        self.run = run
        if run is None:
            self.hide()
            return
        self.label.setText(
            f"Run <b>{run.name}</b> ({run.base or 'unknown base'}) stopped at step {run.steps_done}"
            f"{f' of {run.total_steps}' if run.total_steps else ''} without finishing. "
            f"Resume it from its last checkpoint ({run.last_checkpoint.name})?"
        )
        self.show()


class StepStats(QWidget):
    """Step, epoch, elapsed, ETA, tokens/s and learning rate of the newest step, in a row."""

    FIELDS = [("step", "Step"), ("epoch", "Epoch"), ("elapsed", "Elapsed"), ("eta", "ETA"),
              ("tokens_per_s", "Tokens/s"), ("lr", "LR")]

    def __init__(self) -> None:
        super().__init__()
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        self.labels = {k: QLabel("–") for k, _ in self.FIELDS}
        for i, (k, title) in enumerate(self.FIELDS):
            t = QLabel(title)
            t.setStyleSheet("color: #666;")
            grid.addWidget(t, 0, i)
            self.labels[k].setObjectName(f"stat_{k}")
            grid.addWidget(self.labels[k], 1, i)

    def clear(self) -> None:
        for lab in self.labels.values():
            lab.setText("–")

    def show_step(self, m: dict, step: int, total: int, elapsed: float, eta: float | None) -> None:
        def number(key: str, fmt: str) -> str:
            v = m.get(key)
            return format(v, fmt) if isinstance(v, (int, float)) else "–"

        self.labels["step"].setText(f"{step}" + (f" / {total}" if total else ""))
        self.labels["epoch"].setText(number("epoch", ".2f"))
        self.labels["elapsed"].setText(format_duration(elapsed))
        self.labels["eta"].setText(format_duration(eta))
        self.labels["tokens_per_s"].setText(number("tokens_per_s", ",.0f"))
        self.labels["lr"].setText(number("lr", ".2e"))
