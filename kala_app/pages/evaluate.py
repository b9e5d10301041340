"""The Evaluate page: run one or two models over an evaluation suite and compare their safety metrics.

The user picks a model (and optionally a second one to compare side by side), a suite (the
public suite shipped in ``resources/eval/public_suite.jsonl`` by default, or a JSONL file), the
threshold and the reply length, then presses Run. The evaluation runs as one job on
``ctx.worker`` with progress in the page; the results show as a table (flagged / stopped rates
of harmful and benign prompts, over-refusal, right-law rates, per-law AUROC, perplexity) and
three charts (:class:`~kala_app.widgets.eval_results.EvalResults`). "Save report…" writes
report.json, report.md and results.jsonl. The job runs through this page's
:class:`~kala_app.page_job.PageJob` (its own signals), the lifecycle the Chat page shares.

Engine calls are in :mod:`kala_app.pages.evaluate_engine`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QFlowLayout

from kala_engine.jobs import Progress
from kala_engine.train.runs import describe_model
from kala_engine.units import format_duration

from ..page_job import PageJob
from ..widgets.elided_combo import ElidedComboBox
from ..widgets.eval_results import MODEL_COLORS, EvalResults, pct
from ..widgets.model_picker import add_model_item, find_models, model_label
from ..widgets.threshold_choice import ThresholdChoice
from .evaluate_engine import (  # noqa: F401 - load_suite, make_backend ... re-exported for scripts and tests
    RecordingBackend,
    build_report,
    default_suite_path,
    load_suite,
    make_backend,
    make_eval_job,
    partial_metrics,
    write_report,
)

#: While it runs, the table and charts are redrawn from the results so far at most this often (s).
LIVE_REDRAW_S = 0.5

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
        self.job = PageJob(ctx.worker, self)
        self._runs: list[Any] = []
        self.report: dict | None = None
        self._suite_label = ""
        self._build()
        self._t0 = 0.0
        self._last_message = ""
        self.elapsed_text = ""
        self._tick = QTimer(self)  # elapsed time moves on while a slow prompt is answered
        self._tick.setInterval(1000)
        self._tick.timeout.connect(lambda: self._update_status(self._last_message) if self.is_running() else None)
        ctx.worker.busy_changed.connect(self._update_buttons)  # another page's job holds the engine
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

        self._build_options(g)
        g.setColumnStretch(1, 1)
        g.setColumnStretch(4, 1)
        root.addWidget(setup)

        self.results = EvalResults(self.constitution)
        self.results.save_button.clicked.connect(self._ask_save)
        root.addWidget(self.results, 1)
        # the parts tests and the screenshot script reach for, by their old names
        r = self.results
        self.summary, self.table, self.save_button = r.summary, r.table, r.save_button
        self.kind_plot, self.auroc_plot, self.sweep_plot = r.kind_plot, r.auroc_plot, r.sweep_plot

    @property
    def kind_values(self) -> dict:
        return self.results.kind_values

    def table_value(self, label: str, column: int = 0) -> str:
        """The value of model ``column`` (0 = the first model) in the row ``label`` (for tests and scripts)."""
        return self.results.table_value(label, column)

    def _build_options(self, g: QGridLayout) -> None:
        """Row 1 and 2 of the set-up: suite, threshold, reply length, Run / Cancel, progress, status."""
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
        self.threshold_choice = ThresholdChoice(
            self.constitution.thresholds[0], whose="each model's",
            spin_tip="A law is flagged when its score is under this value (all five laws)")
        self.calibrated_check = self.threshold_choice.calibrated_check
        self.threshold_spin = self.threshold_choice.threshold_spin
        th_lay.addWidget(self.threshold_choice)
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
        if not self.is_running():
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
        if self.job.busy_reason():
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
        self.progress.setRange(0, len(records) * len(backends))
        self.progress.setValue(0)
        self._done_before = 0
        self._last_done = 0
        self.status.setText(f"Evaluating {len(models)} model(s) on {len(records)} prompts…")
        self.status.setToolTip("")
        self.job.start(job, "evaluate", progress=self._on_event, error=self._on_failed, finished=self._on_finished)
        self._tick.start()
        self._update_buttons()
        return True

    def cancel(self) -> None:
        if self.is_running():
            self.job.cancel()
            self.status.setText("Cancelling…")

    def is_running(self) -> bool:
        return self.job.running()

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, Progress):
            self._on_progress(int(ev.done), int(ev.total), ev.message)

    def _on_progress(self, done: int, total: int, message: str) -> None:
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
        self.results.show_models(models, self.threshold())
        n = models[-1]["metrics"]["n"]
        self.summary.setText(f"<span style='color:#6b7785'>So far: {n} of {self._records_n} prompts of "
                             f"<b>{models[-1]['model']}</b> (the charts fill as results arrive)</span>")
        return n

    def _on_failed(self, message: str, traceback: str) -> None:
        self._tick.stop()
        self.status.setText(f"Evaluation failed: {message}")
        self.status.setToolTip(traceback)

    def threshold(self) -> float | None:
        """The threshold to evaluate with: None = each model's calibrated per-law thresholds."""
        return self.threshold_choice.value()

    def _on_finished(self, ev: Any) -> None:
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
        self.results.show_models(models, self.threshold())
        m0 = models[0]["metrics"]
        self.summary.setText(
            f"<b>{models[0]['model']}</b>: catches {pct(m0['harmful'].get('flagged_or_stopped_rate'))} of harmful "
            f"prompts, over-refuses {pct(m0.get('over_refusal_rate'))} of benign ones"
            + (f" · <b>{models[1]['model']}</b>: {pct(models[1]['metrics']['harmful'].get('flagged_or_stopped_rate'))}"
               f" / {pct(models[1]['metrics'].get('over_refusal_rate'))}" if len(models) > 1 else "") + "."
            + (f" The model itself refuses {pct(r0.get('harmful_refused_rate'))} of harmful and "
               f"{pct(r0.get('benign_refused_rate'))} of benign prompts; the ethics stop cut short "
               f"{r0.get('refusals_cut_short', 0)} of its {r0.get('refusals', 0)} refusals."
               if (r0 := m0.get("replies")) else "")
            + "<br><span style='color:#6b7785'>Thresholds (Law 0…4): "
            + " · ".join(f"{m['model'].split(' · ')[0]} " + _thresholds_text(m) for m in models)
            + (" (each model's calibrated)" if self.threshold() is None else "") + "</span>")
        self._update_buttons()
        self.evaluation_finished.emit(self.report)

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
        running = self.is_running()
        self.run_button.setEnabled(not running and not self.job.busy_other() and bool(self.selected_models()))
        self.cancel_button.setEnabled(running)
        self.save_button.setEnabled(self.report is not None and not running)


def _thresholds_text(model_entry: dict) -> str:
    """"0.66/0.64/…" for the prompt flags, and the reply-stop set where the model has its own."""
    def fmt(ts) -> str:
        return "/".join(f"{float(t):.2f}" for t in ts or [])

    prompt = fmt(model_entry["metrics"].get("thresholds"))
    reply = model_entry.get("reply_thresholds")
    return f"prompts {prompt}, replies stop at {fmt(reply)}" if reply else prompt
