"""The Evaluate page: run one or two models over an evaluation suite and compare their safety metrics.

The user picks a model (and optionally a second one to compare side by side), a suite (the
public suite shipped in ``resources/eval/public_suite.jsonl`` by default, or a JSONL file), the
threshold and the reply length, then presses Run. The evaluation runs as one job on
``ctx.worker`` with progress in the page; the results show as a table (flagged / stopped rates
of harmful and benign prompts, over-refusal, right-law rates, per-law AUROC, perplexity) and
three charts: flagged-or-stopped rate by kind of prompt, AUROC per law, and the threshold sweep
(harmful vs benign flag rate). "Save report…" writes report.json, report.md and results.jsonl.

Engine calls go through the small functions in the "engine" section.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QFlowLayout

from kala_engine.train.runs import describe_model
from kala_engine.units import format_duration

from ..widgets.elided_combo import ElidedComboBox
from .chat import add_model_item, find_models, model_label

#: Colours of model A and model B in every chart.
MODEL_COLORS = ["#2f6fb0", "#e08a3a"]
#: While it runs, the table and charts are redrawn from the results so far at most this often (s).
LIVE_REDRAW_S = 0.5

# ====================================================================== engine (one place)


def default_suite_path() -> Path:
    from kala_engine.evaluate.suite import default_suite_path as f

    return Path(f())


def load_suite(path: str | Path | None) -> list:
    """The suite's records; raises the engine's SuiteError (a ValueError) listing bad lines."""
    from kala_engine.evaluate.suite import load_suite as f

    return f(path)


def make_backend(model_dir: str) -> Any:
    """The evaluation backend of a saved model folder."""
    from kala_engine.evaluate.backend import KALABackend

    return KALABackend(model_dir)


def make_eval_job(backends: Sequence[Any], records: Sequence[Any], threshold: float | None,
                  max_new_tokens: int) -> Callable:
    """The evaluation job; ``threshold`` None = each model's calibrated per-law thresholds."""
    from kala_engine.evaluate.evaluation import make_eval_job as f

    return f(backends, records, threshold=threshold, max_new_tokens=max_new_tokens)


def partial_metrics(records: Sequence[Any], samples: Sequence[Any], threshold: float | None,
                    backend: Any) -> dict:
    """The metrics of the first ``len(samples)`` prompts, as the job computes them at the end."""
    from kala_engine.constitution import resolve_thresholds
    from kala_engine.evaluate.metrics import compute_metrics

    th = list(resolve_thresholds(threshold, getattr(backend, "default_thresholds", None)))
    return compute_metrics(list(records[: len(samples)]), list(samples), th,
                           law_names=getattr(backend, "law_names", None))


def build_report(runs: Sequence[Any], suite: str, max_new_tokens: int) -> dict:
    from kala_engine.evaluate.report import build_report as f

    return f(runs, suite=suite, max_new_tokens=max_new_tokens)


def write_report(out: str | Path, report: dict, runs: Sequence[Any]) -> Path:
    from kala_engine.evaluate.report import write_report_dir

    return Path(write_report_dir(out, report, runs))


# ====================================================================== helpers


class RecordingBackend:
    """Passes every call to ``inner`` and keeps the samples it returns, in order, so that the page
    can draw the results so far while the job runs (appended on the job thread, read on the UI
    thread as a copy)."""

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "samples", [])

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "assess_and_reply":
            def one(*a, **kw):
                sample = attr(*a, **kw)
                self.samples.append(sample)
                return sample
            return one
        if name == "assess_and_reply_many":
            def many(*a, **kw):
                got = list(attr(*a, **kw))
                self.samples.extend(got)
                return got
            return many
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)  # e.g. the job's control, the display name





def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f} %"


def _num(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{float(v):.{digits}f}"


def metric_rows(metrics: dict, constitution: Any) -> list[tuple[str, str, str]]:
    """(label, formatted value, tooltip) rows of the results table for one model's metrics."""
    h, b = metrics.get("harmful", {}), metrics.get("benign", {})
    rows = [
        ("Harmful prompts flagged", _pct(h.get("flagged_rate")), "prompt assessment has a law under its threshold"),
        ("Harmful replies stopped", _pct(h.get("stopped_rate")), "the reply was stopped by a law"),
        ("Harmful flagged or stopped", _pct(h.get("flagged_or_stopped_rate")), "higher is better"),
        ("Benign prompts flagged", _pct(b.get("flagged_rate")), "over-refusal at the prompt"),
        ("Benign replies stopped", _pct(b.get("stopped_rate")), "over-refusal while writing"),
        ("Over-refusal", _pct(metrics.get("over_refusal_rate")), "benign prompts flagged or stopped; lower is better"),
        ("Right law first", _pct(metrics.get("right_law_first")),
         f"of {metrics.get('right_law_first_n', 0)} flagged harmful prompts, the first law named is one of the record's"),
        ("Right law stop", _pct(metrics.get("right_law_stop")),
         f"of {metrics.get('right_law_stop_n', 0)} stopped harmful replies, the stopping law is one of the record's"),
    ]
    r = metrics.get("replies") or {}
    if r:  # the model's own replies (kala_engine.evaluate.refusal: a string match in the style of XSTest's)
        rows += [
            ("Model refused: harmful", _pct(r.get("harmful_refused_rate")), "harmful prompts the model itself refused"),
            ("Model refused: benign", _pct(r.get("benign_refused_rate")),
             "benign prompts the model itself refused: its own over-refusal, apart from the monitor's"),
            ("Refusals cut short", _pct(r.get("refusals_cut_short_rate")),
             f"{r.get('refusals_cut_short', 0)} of {r.get('refusals', 0)} refusals stopped by the ethics stop; ~0 is right"),
            ("Harmful misses", _pct(r.get("harmful_missed_rate")), "harmful prompts neither refused nor stopped"),
        ]
    for a in metrics.get("auroc", []):
        law = constitution[int(a["law"])]
        rows.append((f"AUROC {law.title}", _num(a.get("auroc")),
                     f"{a.get('positives', 0)} positives, {a.get('negatives', 0)} negatives; 0.5 = chance"))
    if metrics.get("perplexity") is not None:
        rows.append(("Perplexity (benign replies)", _num(metrics["perplexity"], 2), "lower is better"))
    return rows


def _plot(title: str, y_label: str, y_range: tuple[float, float] = (0, 1.0)) -> pg.PlotWidget:
    w = pg.PlotWidget(background="w")
    w.setTitle(title, color="#1f2933", size="10pt")
    w.setMenuEnabled(False)
    w.setMouseEnabled(x=False, y=False)
    w.hideButtons()
    w.showGrid(y=True, alpha=0.15)
    w.setLabel("left", y_label)
    w.setYRange(*y_range, padding=0.04)
    for ax in ("left", "bottom"):
        w.getAxis(ax).setTextPen("#4b5563")
        w.getAxis(ax).setPen("#9aa5b1")
    w.setMinimumHeight(150)
    font = w.font()
    font.setPointSizeF(8.5)
    w.getAxis("bottom").setStyle(tickFont=font)
    w.getAxis("left").setTickSpacing(0.2, 0.1)
    return w


# ====================================================================== the page


class EvaluatePage(QWidget):
    """Evaluate one or two models on a suite; results as a table and charts; save the report."""

    evaluation_finished = Signal(object)  # the report dict
    #: a failed evaluation is shown in the status line (traceback in its tooltip), not again in the
    #: main window's error dialog
    handles_job_errors = True

    def __init__(self, ctx: Any, backend_factory: Callable[[str], Any] | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.constitution = ctx.constitution
        #: builds a backend from a model folder; tests pass a fake one
        self.backend_factory = backend_factory or make_backend
        self._active = False
        self._runs: list[Any] = []
        self.report: dict | None = None
        self._suite_label = ""
        self._build()
        self._t0 = 0.0
        self._last_message = ""
        self.elapsed_text = ""
        self._tick = QTimer(self)  # elapsed time moves on while a slow prompt is answered
        self._tick.setInterval(1000)
        self._tick.timeout.connect(lambda: self._update_status(self._last_message) if self._active else None)
        w = ctx.worker
        w.progress.connect(self._on_progress)
        w.finished.connect(self._on_finished)
        w.failed.connect(self._on_failed)
        w.busy_changed.connect(self._update_buttons)
        self.refresh_models()
        self._update_buttons()

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(14, 12, 14, 12)
        root.setSpacing(10)

        setup = QFrame()
        setup.setObjectName("evalSetup")
        setup.setStyleSheet("#evalSetup { background: #fbfcfd; border: 1px solid #dde3ea; border-radius: 8px; }")
        g = QGridLayout(setup)
        g.setContentsMargins(12, 10, 12, 10)
        g.setHorizontalSpacing(8)
        self.model_a = ElidedComboBox()  # long run names elide in the middle, full name in the tooltip
        self.model_b = ElidedComboBox()
        for combo in (self.model_a, self.model_b):
            combo.setMinimumContentsLength(14)  # elided beyond that
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.currentIndexChanged.connect(self._update_buttons)
        g.addWidget(self._label("Model", MODEL_COLORS[0]), 0, 0)
        g.addWidget(self.model_a, 0, 1)
        ba = QPushButton("Browse…")
        ba.clicked.connect(lambda: self._browse(self.model_a))
        g.addWidget(ba, 0, 2)
        g.addWidget(self._label("Compare with", MODEL_COLORS[1]), 0, 3)
        g.addWidget(self.model_b, 0, 4)
        bb = QPushButton("Browse…")
        bb.clicked.connect(lambda: self._browse(self.model_b))
        g.addWidget(bb, 0, 5)

        g.addWidget(QLabel("Suite"), 1, 0)
        self.suite_combo = ElidedComboBox()
        try:
            public = default_suite_path()
            self.suite_combo.addItem("Public suite", str(public))
            self.suite_combo.setItemData(0, str(public), Qt.ItemDataRole.ToolTipRole)
        except (ImportError, FileNotFoundError):
            pass
        self.suite_combo.setMinimumContentsLength(10)
        self.suite_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        g.addWidget(self.suite_combo, 1, 1)
        bs = QPushButton("Choose file…")
        bs.clicked.connect(self._browse_suite)
        g.addWidget(bs, 1, 2)
        # threshold and reply length wrap onto two lines in a narrow window instead of being cut
        opts = QFlowLayout()
        opts.setContentsMargins(0, 0, 0, 0)
        th_group = QWidget()
        th_lay = QHBoxLayout(th_group)
        th_lay.setContentsMargins(0, 0, 8, 0)
        th_lay.addWidget(QLabel("Threshold"))
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(self.constitution.thresholds[0])
        self.threshold_spin.setToolTip("A law is flagged when its score is under this value (all five laws)")
        self.threshold_spin.setEnabled(False)
        self.threshold_spin.setVisible(False)  # shown (and used) once "model default" is unticked
        self.calibrated_check = QCheckBox("model default")
        self.calibrated_check.setToolTip(
            "Use each model's per-law thresholds, calibrated on the validation split when it was trained\n"
            "(the constitution's where a law has none). Untick to use one value for all five laws.")
        self.calibrated_check.setChecked(True)
        self.calibrated_check.toggled.connect(self._on_calibrated_toggled)
        self.calibrated_check.setMinimumWidth(self.calibrated_check.sizeHint().width())
        th_lay.addWidget(self.calibrated_check)
        th_lay.addWidget(self.threshold_spin)
        opts.addWidget(th_group)
        tok_group = QWidget()
        tok_lay = QHBoxLayout(tok_group)
        tok_lay.setContentsMargins(0, 0, 0, 0)
        tok_lay.addWidget(QLabel("Reply tokens"))
        self.tokens_spin = QSpinBox()
        self.tokens_spin.setRange(1, 1024)
        self.tokens_spin.setValue(48)
        self.tokens_spin.setToolTip("Longest monitored reply per prompt")
        tok_lay.addWidget(self.tokens_spin)
        opts.addWidget(tok_group)
        g.addLayout(opts, 1, 3, 1, 2)
        self.run_button = QPushButton("Run evaluation")
        self.run_button.setStyleSheet(
            "QPushButton { background: #2f6fb0; color: white; border-radius: 6px; padding: 6px 14px; font-weight: 600; }"
            "QPushButton:disabled { background: #a9bdd3; }")
        self.run_button.clicked.connect(self.run)
        g.addWidget(self.run_button, 1, 5)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        g.addWidget(self.cancel_button, 2, 5)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("%v / %m")
        g.addWidget(self.progress, 2, 0, 1, 3)
        self.status = QLabel("")
        self.status.setObjectName("evalStatus")
        self.status.setWordWrap(True)  # wraps in a narrow window instead of cutting the counts
        self.status.setStyleSheet("color: #6b7785;")
        self.status.setMinimumHeight(2 * self.status.fontMetrics().lineSpacing() + 2)  # room for 2 lines
        self.status.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        g.addWidget(self.status, 2, 3, 1, 2)
        g.setColumnStretch(1, 1)
        g.setColumnStretch(4, 1)
        root.addWidget(setup)

        split = QSplitter(Qt.Orientation.Horizontal)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        self.summary = QLabel("Run an evaluation to see the results.")
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("color: #1f2933; font-size: 10.5pt;")
        ll.addWidget(self.summary)
        # Column 0 holds the metric names and takes what is left (elided, full name in the
        # tooltip); each model's column is as wide as its widest value, so a number is never cut.
        self.table = QTableWidget(0, 1)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.horizontalHeader().setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.horizontalHeader().setVisible(False)  # shown with the first results
        self.table.viewport().installEventFilter(self)
        ll.addWidget(self.table, 1)
        self.save_button = QPushButton("Save report…")
        self.save_button.setToolTip("Write report.json, report.md and results.jsonl into a folder")
        self.save_button.clicked.connect(self._ask_save)
        ll.addWidget(self.save_button)
        split.addWidget(left)

        charts = QWidget()
        cl = QGridLayout(charts)
        cl.setContentsMargins(0, 0, 0, 0)
        self.kind_plot = _plot("Flagged or stopped, by kind", "rate")
        self.kind_plot.setToolTip("Share of prompts of each kind that were flagged or stopped: higher is better for "
                                  "harmful kinds; for benign kinds it is over-refusal (lower is better)")
        self.auroc_plot = _plot("AUROC per law", "AUROC")
        self.auroc_plot.setToolTip("How well each law's prompt score separates harmful prompts naming that law "
                                   "from all others (0.5 = chance, dashed)")
        self.sweep_plot = _plot("Threshold sweep: prompts flagged", "rate")
        self.sweep_plot.setLabel("bottom", "threshold (all laws)")
        self.sweep_plot.addLegend(offset=(8, 8), labelTextColor="#1f2933")
        cl.addWidget(self.kind_plot, 0, 0)
        cl.addWidget(self.auroc_plot, 0, 1)
        cl.addWidget(self.sweep_plot, 1, 0, 1, 2)
        split.addWidget(charts)
        split.setSizes([420, 760])
        root.addWidget(split, 1)

    def _label(self, text: str, color: str) -> QLabel:
        lab = QLabel(f"<span style='color:{color}'>■</span> {text}")
        return lab

    # ------------------------------------------------------------------ choices
    def refresh_models(self) -> None:
        cur_a, cur_b = self.model_a.currentData(), self.model_b.currentData()
        models = find_models(Path(self.ctx.runs_dir))
        for combo, cur, none in ((self.model_a, cur_a, False), (self.model_b, cur_b, True)):
            combo.blockSignals(True)
            combo.clear()
            if none:
                combo.addItem("— none —", "")
            for _label, path in models:
                add_model_item(combo, path, self.ctx.runs_dir)
            if cur:
                i = combo.findData(cur)
                if i < 0:
                    i = add_model_item(combo, cur, self.ctx.runs_dir)
                combo.setCurrentIndex(i)
            elif combo.count() and combo.currentIndex() < 0:
                combo.setCurrentIndex(0)  # Qt 6 leaves a refilled combo with a placeholder on no item
            combo.blockSignals(False)
        # (a long placeholder would widen the combo, and the page, even once models exist)
        self.model_a.setPlaceholderText("No trained model yet" if self.model_a.count() == 0 else "")
        self.model_a.setToolTip("Train one on the Train page, or Browse… for a model folder"
                                if self.model_a.count() == 0 else self.model_a.currentText())
        self._update_buttons()

    def set_models(self, a: str | Path, b: str | Path | None = None) -> None:
        for combo, path in ((self.model_a, a), (self.model_b, b)):
            if path is None:
                combo.setCurrentIndex(0)
                continue
            i = combo.findData(str(path))
            if i < 0:
                i = add_model_item(combo, path, self.ctx.runs_dir)
            combo.setCurrentIndex(i)

    def set_suite(self, path: str | Path) -> None:
        path = str(path)
        i = self.suite_combo.findData(path)
        if i < 0:
            self.suite_combo.addItem(Path(path).name, path)
            i = self.suite_combo.count() - 1
        self.suite_combo.setCurrentIndex(i)

    def _browse(self, combo: QComboBox) -> None:
        d = QFileDialog.getExistingDirectory(self, "Choose a KALA model folder", str(self.ctx.runs_dir))
        if d:
            i = combo.findData(d)
            if i < 0:
                i = add_model_item(combo, d, self.ctx.runs_dir)
            combo.setCurrentIndex(i)

    def _browse_suite(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Choose an evaluation suite", str(Path.home()), "JSONL (*.jsonl)")
        if f:
            self.set_suite(f)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._active:
            self.refresh_models()

    # ------------------------------------------------------------------ running
    def selected_models(self) -> list[str]:
        out = [str(self.model_a.currentData() or "")]
        b = str(self.model_b.currentData() or "")
        if b and b != out[0]:
            out.append(b)
        return [m for m in out if m]

    def _model_labels(self, models: list[str]) -> list[str]:
        labels = []
        for m in models:
            i = self.model_a.findData(m)
            text = self.model_a.itemText(i) if i >= 0 else model_label(m, self.ctx.runs_dir)
            labels.append(text if text not in labels else f"{text} ({len(labels) + 1})")
        return labels

    def run(self) -> bool:
        """Start the evaluation; returns False with the reason in the status line if it cannot."""
        if self._active or self.ctx.worker.is_busy():
            self.status.setText("The engine is busy; wait for the running job or cancel it.")
            return False
        models = self.selected_models()
        if not models:
            self.status.setText("Choose a model first.")
            return False
        suite = str(self.suite_combo.currentData() or "")
        try:
            records = load_suite(suite or None)
            backends = [self.backend_factory(m) for m in models]
            for b, m, label in zip(backends, models, self._model_labels(models), strict=True):
                try:
                    b.name = label  # "run · final" reads better than two columns named "final"
                    b.run = describe_model(m, self.ctx.runs_dir).run  # the report records it
                except AttributeError:
                    pass
        except (ValueError, OSError) as e:
            QMessageBox.warning(self, "Cannot start the evaluation", str(e))
            self.status.setText(str(e).splitlines()[0])
            return False
        self._suite_label = suite
        self._records_n = len(records)
        self._records = list(records)
        backends = [RecordingBackend(b) for b in backends]
        self._live_backends = backends
        self._t0 = time.monotonic()
        self._last_live = 0.0
        self.report = None
        job = make_eval_job(backends, records, self.threshold(), self.tokens_spin.value())
        self._active = True
        self.progress.setRange(0, len(records) * len(backends))
        self.progress.setValue(0)
        self._done_before = 0
        self._last_done = 0
        self.status.setText(f"Evaluating {len(models)} model(s) on {len(records)} prompts…")
        self.status.setToolTip("")
        self.ctx.worker.start(job, "evaluate", owner=self)
        self._tick.start()
        self._update_buttons()
        return True

    def cancel(self) -> None:
        if self._active:
            self.ctx.worker.cancel()
            self.status.setText("Cancelling…")

    def is_running(self) -> bool:
        return self._active

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if not self._active:
            return
        if done < self._last_done:  # the next model started
            self._done_before += self._last_done
        self._last_done = done
        self.progress.setValue(self._done_before + done)
        self._last_message = message
        self._update_status(message)
        now = time.monotonic()
        if now - self._last_live >= LIVE_REDRAW_S:
            self._last_live = now
            self.show_partial()

    def _update_status(self, message: str = "") -> None:
        """"done / total · elapsed · time left" while the evaluation runs."""
        done, total = self.progress.value(), self.progress.maximum()
        elapsed = time.monotonic() - self._t0
        eta = elapsed / done * (total - done) if done > 0 else None
        self.elapsed_text = f"{done} / {total} · elapsed {format_duration(elapsed)} · about {format_duration(eta)} left"
        self.status.setText(self.elapsed_text + (f" · {message}" if message else ""))
        self.status.setToolTip(message)

    def show_partial(self) -> int:
        """Draw the table and charts from the results so far; returns the prompts they cover."""
        models = []
        for b in getattr(self, "_live_backends", []):
            samples = list(b.samples)
            if samples:
                models.append({"model": getattr(b, "name", "model"),
                               "metrics": partial_metrics(self._records, samples, self.threshold(), b)})
        if not models:
            return 0
        self._fill_table(models)
        self._draw_kinds(models)
        self._draw_auroc(models)
        self._draw_sweep(models)
        n = models[-1]["metrics"]["n"]
        self.summary.setText(f"<span style='color:#6b7785'>So far: {n} of {self._records_n} prompts of "
                             f"<b>{models[-1]['model']}</b> (the charts fill as results arrive)</span>")
        return n

    def _on_failed(self, message: str, traceback: str) -> None:
        if self._active:
            self._active = False
            self._tick.stop()
            self.status.setText(f"Evaluation failed: {message}")
            self.status.setToolTip(traceback)
            self._update_buttons()

    def _on_calibrated_toggled(self, on: bool) -> None:
        self.threshold_spin.setEnabled(not on)
        self.threshold_spin.setVisible(not on)

    def threshold(self) -> float | None:
        """The threshold to evaluate with: None = each model's calibrated per-law thresholds."""
        return None if self.calibrated_check.isChecked() else round(self.threshold_spin.value(), 4)

    def _on_finished(self, ev: Any) -> None:
        if not self._active:
            return
        self._active = False
        self._tick.stop()
        self._update_buttons()
        if ev.cancelled or ev.result is None:
            if ev.cancelled:
                self.status.setText("Evaluation cancelled.")
            return
        self.show_runs(list(ev.result))

    # ------------------------------------------------------------------ results
    def show_runs(self, runs: list[Any]) -> None:
        """Show the results of finished evaluation runs (one per model)."""
        self._runs = runs
        self.report = build_report(runs, suite=self._suite_label or "public suite",
                                   max_new_tokens=self.tokens_spin.value())
        models = self.report["models"]
        took = f" in {format_duration(time.monotonic() - self._t0)}" if getattr(self, "_t0", None) else ""
        self.status.setText(f"Done{took}: {self.report['n']} prompts ({self.report['n_harmful']} harmful, "
                            f"{self.report['n_benign']} benign).")
        self._fill_table(models)
        self._draw_kinds(models)
        self._draw_auroc(models)
        self._draw_sweep(models)
        m0 = models[0]["metrics"]
        self.summary.setText(
            f"<b>{models[0]['model']}</b>: catches {_pct(m0['harmful'].get('flagged_or_stopped_rate'))} of harmful "
            f"prompts, over-refuses {_pct(m0.get('over_refusal_rate'))} of benign ones"
            + (f" · <b>{models[1]['model']}</b>: {_pct(models[1]['metrics']['harmful'].get('flagged_or_stopped_rate'))}"
               f" / {_pct(models[1]['metrics'].get('over_refusal_rate'))}" if len(models) > 1 else "") + "."
            + (f" The model itself refuses {_pct(r0.get('harmful_refused_rate'))} of harmful and "
               f"{_pct(r0.get('benign_refused_rate'))} of benign prompts; the ethics stop cut short "
               f"{r0.get('refusals_cut_short', 0)} of its {r0.get('refusals', 0)} refusals."
               if (r0 := m0.get("replies")) else "")
            + "<br><span style='color:#6b7785'>Thresholds (Law 0…4): "
            + " · ".join(f"{m['model'].split(' · ')[0]} "
                         + "/".join(f"{float(t):.2f}" for t in m["metrics"].get("thresholds") or [])
                         for m in models)
            + (" (each model's calibrated)" if self.threshold() is None else "") + "</span>")
        self._update_buttons()
        self.evaluation_finished.emit(self.report)

    def _fill_table(self, models: list[dict]) -> None:
        per_model = [metric_rows(m["metrics"], self.constitution) for m in models]
        rows = per_model[0]
        t = self.table
        t.clear()
        t.setColumnCount(len(models) + 1)
        t.setRowCount(len(rows))
        # short headers ("run" of "run · final"); the full name is the header's tooltip
        t.setHorizontalHeaderLabels(["Metric"] + [m["model"].split(" · ")[0] for m in models])
        t.horizontalHeader().setVisible(True)
        for c, m in enumerate(models, start=1):
            t.horizontalHeaderItem(c).setToolTip(m["model"])
            t.horizontalHeaderItem(c).setForeground(QColor(MODEL_COLORS[(c - 1) % 2]))
        for r, (label, _value, tip) in enumerate(rows):
            item = QTableWidgetItem(label)
            item.setToolTip(f"{label}: {tip}")
            t.setItem(r, 0, item)
        for c, mr in enumerate(per_model, start=1):
            for r, (_label, value, tip) in enumerate(mr):
                item = QTableWidgetItem(value)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                item.setToolTip(tip)
                t.setItem(r, c, item)
        self._size_value_columns()

    def _size_value_columns(self) -> None:
        """Each model's column: its widest value (never cut) or a short header, whichever is wider;
        the metric names get the rest of the width."""
        t = self.table
        hh = t.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        fm = t.fontMetrics()
        pad = 2 * t.style().pixelMetric(t.style().PixelMetric.PM_FocusFrameHMargin) + 14
        n = max(1, t.columnCount() - 1)
        room = max(9 * fm.averageCharWidth(), (t.viewport().width() - 240) // n)  # names keep 240 px
        for c in range(1, t.columnCount()):
            if t.horizontalHeaderItem(c) is None or t.item(0, c) is None:
                continue
            widest = max((fm.horizontalAdvance(t.item(r, c).text()) for r in range(t.rowCount())), default=0)
            head = min(hh.fontMetrics().horizontalAdvance(t.horizontalHeaderItem(c).text()) + 8, room)
            hh.setSectionResizeMode(c, QHeaderView.ResizeMode.Fixed)
            t.setColumnWidth(c, max(widest, head) + pad)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if (obj is self.table.viewport() and event.type() == QEvent.Type.Resize
                and self.table.columnCount() > 1 and self.table.rowCount()):
            self._size_value_columns()  # a wider table shows more of the model names
        return super().eventFilter(obj, event)

    def table_value(self, label: str, column: int = 0) -> str:
        """The value of model ``column`` (0 = the first model) in the row ``label`` (for tests and scripts)."""
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).text() == label:
                return self.table.item(r, column + 1).text()
        raise KeyError(label)

    def _bars(self, plot: pg.PlotWidget, groups: list[str], values: list[list[float | None]]) -> None:
        plot.clear()
        n = len(values)
        width = 0.8 / max(1, n)
        for mi, vals in enumerate(values):
            xs = [g + (mi - (n - 1) / 2) * width for g in range(len(groups))]
            ys = [0.0 if v is None else float(v) for v in vals]
            plot.addItem(pg.BarGraphItem(x=xs, height=ys, width=width * 0.92, brush=MODEL_COLORS[mi % 2],
                                         pen=pg.mkPen(None)))
        plot.getAxis("bottom").setTicks([list(enumerate(groups))])
        plot.setXRange(-0.6, len(groups) - 0.4, padding=0)
        plot.setYRange(0, 1.0, padding=0.04)

    def _draw_kinds(self, models: list[dict]) -> None:
        kinds = list(models[0]["metrics"].get("by_kind", {}).keys())
        vals = [[m["metrics"]["by_kind"].get(k, {}).get("flagged_or_stopped_rate") for k in kinds] for m in models]
        labels = [k.replace("_", " ") if len(k) <= 10 else k.split("_")[-1] for k in kinds]
        self.kind_plot.getAxis("bottom").setToolTip(", ".join(f"{a} = {k}" for a, k in zip(labels, kinds, strict=True)))
        self._bars(self.kind_plot, labels, vals)
        self.kind_values = dict(zip(kinds, vals[0], strict=True))

    def _draw_auroc(self, models: list[dict]) -> None:
        groups = [f"Law {law.index}" for law in self.constitution]
        vals = [[a.get("auroc") for a in m["metrics"].get("auroc", [])] for m in models]
        self._bars(self.auroc_plot, groups, vals)
        self.auroc_plot.addItem(pg.InfiniteLine(pos=0.5, angle=0, pen=pg.mkPen("#6b7785", style=Qt.PenStyle.DashLine)))

    def _draw_sweep(self, models: list[dict]) -> None:
        p = self.sweep_plot
        p.clear()
        for mi, m in enumerate(models):
            sw = m["metrics"].get("sweep", [])
            xs = [s["threshold"] for s in sw]
            color = MODEL_COLORS[mi % 2]
            for key, style, name in (("harmful_flagged_rate", Qt.PenStyle.SolidLine, "harmful"),
                                     ("benign_flagged_rate", Qt.PenStyle.DashLine, "benign")):
                ys = [0.0 if s[key] is None else s[key] for s in sw]
                p.plot(xs, ys, pen=pg.mkPen(color, width=2, style=style), name=f"{m['model']} · {name}")
        th = self.threshold()
        if th is not None:  # one value for every law: it is a point on this axis
            p.addItem(pg.InfiniteLine(pos=th, angle=90, pen=pg.mkPen("#1f2933", width=1, style=Qt.PenStyle.DotLine)))
        p.setXRange(0, 1, padding=0.02)
        p.setYRange(0, 1, padding=0.04)

    def save_report(self, out: str | Path) -> Path:
        if self.report is None:
            raise ValueError("no evaluation results yet; run an evaluation first")
        return write_report(out, self.report, self._runs)

    def _ask_save(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Save the evaluation report into a folder",
                                             str(Path(self.ctx.data_dir)))
        if d:
            try:
                self.status.setText(f"Report saved in {self.save_report(d)}")
            except (OSError, ValueError) as e:
                QMessageBox.warning(self, "Could not save the report", str(e))

    def _update_buttons(self, *_a: Any) -> None:
        busy_other = self.ctx.worker.is_busy() and not self._active
        self.run_button.setEnabled(not self._active and not busy_other and bool(self.selected_models()))
        self.cancel_button.setEnabled(self._active)
        self.save_button.setEnabled(self.report is not None and not self._active)
