"""The Train page: pick a base and a data set, check the hardware, train, and watch the losses live.

Left: the base model (a preset or a local Pythia folder), the data set, the doctor panel (device,
compute capability, kernels, precision, memory estimate against what is available as a
fit/no-fit bar) and the hyperparameters (each with a tooltip). Right: Start / Pause / Resume /
Cancel, a progress bar with ETA and tokens/s, and live plots of the LM loss, the ethics loss
(total and one curve per law, each toggled from the legend), validation points and the learning
rate, with smoothing and the overlay of an earlier run. An interrupted run is offered for resume.

Training runs as the page's own :class:`~kala_app.page_job.PageJob` on the engine worker; events
only append to plot buffers, which redraw from a timer, so the page stays responsive at any step rate.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from kala_engine.jobs import CheckpointSaved, LogLine, TrainStep, Validation
from kala_engine.train.config import default_learning_rate

from .. import engine_api
from ..error_dialog import show_error
from ..page_job import PageJob
from ..runs import RunInfo, list_runs, new_run_dir, remove_if_empty_run
from ..widgets.base_picker import BasePicker
from ..widgets.data_picker import DataPicker
from ..widgets.hyperparameters import HyperparameterForm
from ..widgets.multi_gpu import GpuCountField, RankProgress
from ..widgets.train_curves import TrainCurves
from ..widgets.train_ethics_weights import EthicsWeightsBox
from ..widgets.train_method import TrainMethod
from ..widgets.train_parts import (
    MemoryBar,
    ResumeBanner,
    StepStats,
)
from ..widgets.wrap_label import WrapLabel


class TrainPage(QWidget):
    """Base + data + doctor + hyperparameters on the left, controls and live plots on the right."""

    handles_job_errors = True
    #: Emitted with the run folder when a training run ends with a final model.
    run_finished = Signal(str)

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.worker = ctx.worker
        self.job = PageJob(ctx.worker, self)  # this page's own job: training or the doctor
        # replaceable in tests: how a config and a job are made
        self.config_factory = engine_api.make_train_config
        self.job_factory = engine_api.train_job
        self.doctor_factory = engine_api.doctor
        self.run_dir: Path | None = None
        self._job_kind = ""  # "train" | "doctor" while this page's job runs
        self._latest: dict | None = None
        self._total_steps = 0
        self._t_start = 0.0
        self._steps_seen = 0
        self._quickstart_then = None
        self.law_titles = [law.title for law in ctx.constitution]

        self._build()
        self._connect_worker()
        self.check_base()
        self._update_buttons()

        self._ui_timer = QTimer(self)  # progress labels at 10 Hz, whatever the step rate
        self._ui_timer.setInterval(100)
        self._ui_timer.timeout.connect(self._refresh_progress)
        self._ui_timer.start()
        QTimer.singleShot(0, self.refresh_lists)

    # ================================================================ layout

    def _build(self) -> None:
        """Left: model and data, doctor, hyperparameters (scrolls); right: controls, progress, plots."""
        left = QWidget()
        llay = QVBoxLayout(left)
        llay.setContentsMargins(0, 0, 6, 0)
        llay.addWidget(self._build_model_box())
        llay.addWidget(self._build_doctor_box())
        self.hp_form = HyperparameterForm(self.ctx.settings)
        hp_box = self.hp_form
        self.hp = self.hp_form.hp
        self.grad_ckpt = self.hp_form.grad_ckpt
        self.more_settings = self.hp_form.more_settings
        self.method = TrainMethod(self.ctx.settings)  # SFT / DPO / ORPO / SimPO (kala align), issue 17
        self.hp_form.layout().insertRow(0, self.method)
        self.gpu_count = GpuCountField(engine_api.gpu_count)  # several GPUs (issue 19): shown only then
        self.hp_form.add_field("gpus", self.gpu_count.label, self.gpu_count)
        self.method.method_changed.connect(lambda _m: self.hp["learning_rate"].setValue(
            self.method.default_learning_rate() or default_learning_rate(self.base())))
        llay.addWidget(hp_box)
        self.ethics_box = EthicsWeightsBox(self.law_titles)  # issue 18: weights, layers, distillation
        llay.addWidget(self.ethics_box.folded())
        llay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setMinimumWidth(330)
        # the column wraps to the width it gets (a vertical scroll bar must not bring a sideways one)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        buttons, stats = self._build_controls()
        plot_bar, plots = self._build_plots()

        right = QWidget()
        rlay = QVBoxLayout(right)
        rlay.setContentsMargins(6, 0, 0, 0)
        # The buttons come first: a banner that appears or goes (resume offer) sits below them, above
        # the plots, so that Start/Pause/Cancel never move under the pointer.
        rlay.addLayout(buttons)
        rlay.addWidget(self.progress)
        rlay.addWidget(stats)
        rlay.addWidget(self.resume_banner)
        self.rank_progress = RankProgress()  # every rank of a multi-GPU run, through rank 0
        rlay.addWidget(self.rank_progress)
        rlay.addLayout(plot_bar)
        rlay.addWidget(plots, 1)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(scroll)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([340, 900])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)
        self._on_smoothing(self.smooth_slider.value())


    def _build_model_box(self) -> QGroupBox:
        """The base picker (with its availability note and Download…) and the data set."""
        model_box = QGroupBox("Model and data")
        form = QFormLayout(model_box)
        self.base_picker = BasePicker(self, self.ctx)
        self.base_picker.checked.connect(lambda _why: self._update_buttons())
        self.base_combo = self.base_picker.combo
        self.base_status = self.base_picker.status
        self.base_download_button = self.base_picker.download_button
        self.data_picker = DataPicker(self, self.ctx)
        self.data_combo = self.data_picker.combo
        form.addRow("Base", self.base_combo)
        form.addRow(self.base_status)
        form.addRow(self.base_download_button)
        form.addRow("Data", self.data_combo)
        return model_box

    def _build_doctor_box(self) -> QGroupBox:
        """Device, compute capability, kernels, precision, plan and the memory bar."""
        doctor_box = QGroupBox("Doctor")
        dform = QFormLayout(doctor_box)
        self.doc_labels: dict[str, QLabel] = {}
        for key, title, tip in [
            ("device", "Device", "Where training runs."),
            ("compute_capability", "Compute capability", "CUDA compute capability (sm_XY) of the GPU."),
            ("kernels", "Kernels", "Whether this PyTorch build ships kernels for this GPU."),
            ("precision", "Precision", "fp32 on CPU, fp16 autocast on Pascal (P100), bf16 where supported."),
            ("mode", "Plan", "Full training for small bases; a 4-bit frozen base with LoRA for large ones."),
        ]:
            lab = WrapLabel("–")
            lab.setToolTip(tip)
            self.doc_labels[key] = lab
            dform.addRow(title, lab)
        self.memory_bar = MemoryBar()
        self.memory_bar.setToolTip("Estimated training memory against the memory available on the device.")
        dform.addRow("Memory", self.memory_bar)
        self.doctor_button = QPushButton("Check hardware")
        self.doctor_button.setToolTip("Run the doctor for the chosen base (kala doctor --base …).")
        self.doctor_button.clicked.connect(self.run_doctor)
        dform.addRow(self.doctor_button)
        return doctor_box

    def _build_controls(self) -> tuple[QHBoxLayout, QWidget]:
        """Resume offer, Start/Pause/Resume/Cancel, progress bar and stat labels."""
        self.resume_banner = ResumeBanner()
        self.resume_banner.resume_clicked.connect(self.resume_run)

        self.start_button = QPushButton("Start")
        self.start_button.setObjectName("startButton")
        self.start_button.setToolTip("Start a new training run with these settings.")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Pause after the current step (the model stays in memory).")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue a paused run.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the run; it saves a checkpoint you can resume from.")
        self.start_button.clicked.connect(self.start_training)
        self.pause_button.clicked.connect(self.pause)
        self.resume_button.clicked.connect(self.resume)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.resume_button, self.cancel_button):
            buttons.addWidget(b)
        buttons.addStretch(1)

        self.progress = QProgressBar()
        self.progress.setObjectName("trainProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.step_stats = StepStats()
        self.stats = self.step_stats.labels
        return buttons, self.step_stats

    def _build_plots(self) -> tuple[QHBoxLayout, QSplitter]:
        """The loss curves (with smoothing and the overlay), the method's plot and a tabbed panel of
        the learning rate, the log, the ethics weights and the distillation terms."""
        self.curves = TrainCurves(self.law_titles, self.ctx.settings, extra=[self.method, self.ethics_box])
        self.lm_plot, self.ethics_plot, self.lr_plot = self.curves.lm_plot, self.curves.ethics_plot, self.curves.lr_plot
        self.smooth_slider, self.overlay_combo = self.curves.smooth_slider, self.curves.overlay_combo
        self.plots = [*self.curves.plots, self.method.plot, self.ethics_box.weights_plot, self.ethics_box.distill_plot]
        # Not x-linked: a link makes every plot repaint whenever one redraws (3 paints in one go).
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.log_view.setPlaceholderText("training log")
        # the learning rate and the log share a tabbed panel: in a 640-px-high window the two loss
        # plots keep a readable height
        self.lr_plot.setMinimumHeight(70)  # the panel may shrink before the loss plots do
        self.log_view.setMinimumHeight(40)
        self.aux_tabs = QTabWidget()
        self.aux_tabs.setObjectName("trainAuxTabs")
        self.aux_tabs.setDocumentMode(True)
        self.aux_tabs.addTab(self.lr_plot, "Learning rate")
        self.aux_tabs.addTab(self.log_view, "Log")
        self.aux_tabs.addTab(self.ethics_box.weights_plot, "Ethics weights")
        self.aux_tabs.addTab(self.ethics_box.distill_plot, "Distillation")
        plots = QSplitter(Qt.Orientation.Vertical)
        plots.addWidget(self.lm_plot)
        plots.addWidget(self.ethics_plot)
        plots.addWidget(self.method.plot)  # reward margin and preference accuracy (DPO/ORPO/SimPO only)
        plots.addWidget(self.aux_tabs)
        for i, stretch in enumerate((1, 1, 1, 0)):
            plots.setStretchFactor(i, stretch)
        self.aux_tabs.setMaximumHeight(165)
        plots.setSizes([300, 340, 220, 150])
        return self.curves.bar, plots

    def _connect_worker(self) -> None:
        """Every job: the buttons (one job at a time) and the base picker (a download from anywhere)."""
        w = self.worker
        w.busy_changed.connect(lambda _busy: self._update_buttons())
        w.started.connect(self.base_picker.on_job_started)
        w.event.connect(self.base_picker.on_download_event)
        w.finished.connect(self._on_any_finished)

    def _start_job(self, job, name: str) -> None:
        self.job.start(job, name, progress=self._on_event, error=self._on_failed, finished=self._on_finished)

    def _on_event(self, ev) -> None:
        """One event of this page's job."""
        if isinstance(ev, TrainStep):
            self._on_step(ev)
        elif isinstance(ev, Validation):
            self._on_validation(ev)
        elif isinstance(ev, LogLine):
            self.log_view.appendPlainText(ev.message)
        elif isinstance(ev, CheckpointSaved) and self._job_kind == "train":
            self.log_view.appendPlainText(f"checkpoint saved at step {ev.step}: {ev.path}")

    # ================================================================ lists (data sets, runs)

    def refresh_lists(self) -> None:
        """Re-read the data sets and runs folders (data combo, overlay combo, resume offer)."""
        self.data_picker.refill()

        runs = list_runs(self.ctx.runs_dir, active=self.run_dir if self._job_kind == "train" else None)
        sel = self.overlay_combo.currentData()
        self.overlay_combo.clear()
        self.overlay_combo.addItem("(none)", None)
        for r in runs:
            if self._job_kind == "train" and r.path == self.run_dir:
                continue  # the live run is drawn already
            self.overlay_combo.addItem(f"{r.name}  [{r.status}]", str(r.path))
        if sel:
            i = self.overlay_combo.findData(sel)
            self.overlay_combo.setCurrentIndex(max(0, i))
        if not self.worker.is_busy():
            self.resume_banner.offer(next((r for r in runs if r.can_resume), None))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.fill_bases()  # a base may have been downloaded or deleted on the Models page
        if not self.gpu_count.probed:
            self.gpu_count.refresh()
        if not self.worker.is_busy():
            self.refresh_lists()

    def set_data_path(self, path: str | Path) -> None:
        """Select a data set (adds it to the list if needed)."""
        self.data_picker.set_path(path)

    def data_path(self) -> str:
        return self.data_picker.path()

    def base(self) -> str:
        return self.base_picker.base()

    # ---------------------------------------------------------------- bases: cached first, download offered

    def fill_bases(self) -> None:
        self.base_picker.fill()

    def select_base(self, name: str) -> bool:
        return self.base_picker.select(name)

    def download_base(self) -> str:
        return self.base_picker.download()

    def add_base_folder(self, folder: str | Path) -> bool:
        return self.base_picker.add_folder(folder)

    def check_base(self) -> str:
        return self.base_picker.check()

    # ================================================================ settings

    def save_settings(self) -> None:
        self.hp_form.save()
        self.ctx.settings.setValue("train/smoothing", self.smooth_slider.value())

    def hyperparameters(self) -> dict[str, Any]:
        return {**self.hp_form.values(), **self.method.settings(), **self.ethics_box.values()}

    # ================================================================ doctor

    def run_doctor(self) -> None:
        if self.worker.is_busy():
            return
        base = self.base()
        doctor = self.doctor_factory

        def job(emit, control):
            return doctor(base)

        self._job_kind = "doctor"
        self.doc_labels["device"].setText("checking…")
        self._start_job(job, f"doctor {base}")

    def show_doctor(self, rep: engine_api.DoctorReport) -> None:
        for key, lab in self.doc_labels.items():
            lab.setText(str(getattr(rep, key, "–")))
        self.memory_bar.set_estimate(rep.estimate_bytes, rep.available_bytes, rep.fits, rep.reason,
                                     getattr(rep, "base_problem", ""))

    # ================================================================ training control

    def start_training(self, *, resume_run: RunInfo | None = None) -> bool:
        """Start a run with the page's settings (or resume ``resume_run``). False if not started."""
        if self.worker.is_busy():
            return False
        if resume_run is not None:
            cfg_kwargs = dict(resume_run.config)
            cfg_kwargs.update(run_dir=str(resume_run.path), resume=True)
            run_dir = resume_run.path
        else:
            data = self.data_path()
            if not data:
                show_error(self, "No data set", "Choose a data set first (generate one on the Data page).")
                return False
            if not Path(data).is_file():
                show_error(self, "Data set not found", f"{data} does not exist; choose another data set.")
                return False
            if why := self.check_base():
                show_error(self, "The base is not available", f"{why}.")
                return False
            run_dir = new_run_dir(self.ctx.runs_dir, self.base())
            cfg_kwargs = dict(base=self.base(), data=data, run_dir=str(run_dir), **self.hyperparameters())
        try:
            config = self.config_factory(**cfg_kwargs)
            job = (self.ethics_box.job_for(config) if resume_run is None else None) or self.job_factory(config)
        except Exception as e:  # noqa: BLE001 - shown to the user with its traceback
            import traceback

            show_error(self, "Could not start training", f"{type(e).__name__}: {e}", traceback.format_exc())
            return False
        self.save_settings()
        self.run_dir = Path(run_dir)
        self._job_kind = "train"
        self._reset_live(keep_overlay=True)
        self._total_steps = int(cfg_kwargs.get("max_steps") or 0)
        if resume_run is not None:
            self._load_existing_curves(resume_run.path)
        self._t_start = time.monotonic()
        self.resume_banner.hide()
        self.log_view.appendPlainText(f"--- {'resuming' if resume_run else 'starting'} run {self.run_dir.name}")
        self._start_job(job, f"training {self.run_dir.name}")
        self._update_buttons()
        return True

    def resume_run(self, run: RunInfo | None) -> None:
        if run is not None:
            self.start_training(resume_run=run)

    def pause(self) -> None:
        if self.job.running():
            self.job.pause()
            self._update_buttons()

    def resume(self) -> None:
        if self.job.running():
            self.job.resume()
            self._update_buttons()

    def cancel(self) -> None:
        if self.job.running():
            self.job.cancel()
            self.progress.setFormat("cancelling… (saving a checkpoint)")
            self._update_buttons()

    def start_quickstart(self, data_path: str | Path, then=None, steps: int | None = None,
                         overrides: dict | None = None) -> bool:
        """The quickstart: train kala-tiny on ``data_path`` with the quickstart's settings (shown in
        the hyperparameter fields, ``overrides`` on top); ``then(run_dir)`` runs once the final
        model is saved."""
        self.set_data_path(data_path)
        self.select_base("kala-tiny")
        hp = engine_api.quickstart_hyperparameters(steps or engine_api.QUICKSTART_STEPS)
        hp.update(overrides or {})
        self.hp_form.set_values(hp)
        self._quickstart_then = then
        started = self.start_training()
        if not started:
            self._quickstart_then = None
        return started

    def _update_buttons(self) -> None:
        busy = self.worker.is_busy()
        mine = self._is_my_training()
        paused = mine and self.job.is_paused()
        self.start_button.setEnabled(not busy and not self.base_picker.problem)
        self.start_button.setToolTip(
            f"Not available: {self.base_picker.problem}" if self.base_picker.problem
            else "Start a new training run with these settings.")
        self.doctor_button.setEnabled(not busy)
        self.base_download_button.setEnabled(not busy)
        if busy and not self.base_download_button.isHidden() and not mine:
            self.base_download_button.setToolTip(
                f"'{self.worker.job_name or 'another job'}' is running: KALA runs one job at a time; "
                f"download when it ends.")
        self.pause_button.setEnabled(mine and not paused)
        self.resume_button.setEnabled(mine and paused)
        self.cancel_button.setEnabled(mine)
        if paused:
            self.progress.setFormat("paused at step %v of %m")

    # ================================================================ live data

    def _reset_live(self, keep_overlay: bool) -> None:
        self.rank_progress.clear_ranks()
        for p in self.plots:
            keys = [k for k in p.series if not (keep_overlay and k.startswith("ov_"))]
            p.clear_data(keys)
        self._latest = None
        self._steps_seen = 0
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.step_stats.clear()

    def _load_existing_curves(self, run_dir: Path) -> None:
        self.curves.load_run(run_dir)

    def _is_my_training(self) -> bool:
        return self.job.running() and self._job_kind == "train"

    def _on_step(self, ev) -> None:
        if not self._is_my_training():
            return
        m = dict(ev.metrics)
        m.setdefault("step", ev.step)
        self._total_steps = int(ev.total_steps or self._total_steps or 0)
        self._add_step_metrics(m)
        self.rank_progress.show_ranks(ev.step, m.get("ranks"))
        self._latest = m
        self._steps_seen += 1

    def _add_step_metrics(self, m: dict) -> None:
        self.curves.add_step(m)

    def _on_validation(self, ev) -> None:
        if not self._is_my_training():
            return
        m = dict(ev.metrics)
        m.setdefault("step", ev.step)
        self.curves.add_validation(m)
        self.log_view.appendPlainText(
            f"validation at step {m['step']}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float)))

    def _refresh_progress(self, force: bool = False) -> None:
        """Progress bar and stat labels from the newest step (10 Hz)."""
        m = self._latest
        if m is None or not (force or self._is_my_training()):
            return
        step = int(m.get("step", 0))
        total = self._total_steps or 0
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(step, total))
        if self.job.is_paused():
            self.progress.setFormat(f"paused at step {step}" + (f" of {total}" if total else ""))
        else:
            self.progress.setFormat(f"step {step}" + (f" of {total} (%p%)" if total else ""))
        elapsed = m.get("elapsed", time.monotonic() - self._t_start)
        eta = m.get("eta")
        if eta is None and total and step:
            eta = elapsed / step * (total - step)
        self.step_stats.show_step(m, step, total, elapsed, eta)

    def _on_failed(self, message: str, traceback: str) -> None:
        if self._job_kind == "train":
            remove_if_empty_run(self.run_dir)
        title = "Training failed" if self._job_kind == "train" else "The doctor failed"
        if self._job_kind == "doctor":
            self.doc_labels["device"].setText("–")
        self.log_view.appendPlainText(f"FAILED: {message}")
        self.aux_tabs.setCurrentWidget(self.log_view)
        show_error(self, title, message, traceback)

    def _on_any_finished(self, ev) -> None:
        if self.base_picker.watched_download is not None:  # one job at a time: that download ending
            self.base_picker.after_download(ev)

    def _on_finished(self, ev) -> None:
        """This page's job ended (success, cancel or failure)."""
        kind, self._job_kind = self._job_kind, ""
        if kind == "doctor":
            if isinstance(ev.result, engine_api.DoctorReport):
                self.show_doctor(ev.result)
            return
        if kind != "train":
            return
        self._refresh_progress_final(ev)
        run_dir = self.run_dir
        self.refresh_lists()
        if run_dir is not None and (run_dir / "final").is_dir() and not ev.cancelled:
            self.run_finished.emit(str(run_dir))
            then, self._quickstart_then = self._quickstart_then, None
            if then is not None:
                then(run_dir)
        self._update_buttons()

    def _refresh_progress_final(self, ev) -> None:
        self._refresh_progress(force=True)
        for p in self.plots:
            p.redraw()
        if ev.cancelled:
            self.progress.setFormat("cancelled at step %v — resume it from the banner above")
            self.log_view.appendPlainText("--- cancelled")
        elif self._steps_seen == 0 and ev.result is None:
            self.progress.setFormat("stopped")
        else:
            if self.progress.maximum() <= 1:
                self.progress.setRange(0, 1)
                self.progress.setValue(1)
            self.progress.setFormat("finished at step %v")
            self.progress.setValue(self.progress.maximum())
            self.log_view.appendPlainText("--- finished")

    # ================================================================ plots

    def _on_smoothing(self, value: int) -> None:
        self.curves.set_smoothing(value)

    def set_overlay(self, run_dir: str | Path | None) -> int:
        """Draw ``run_dir``'s curves dashed under the live ones (None removes them). Returns points."""
        return self.curves.set_overlay(run_dir)

    def shutdown(self) -> None:
        for p in self.plots:
            p.timer.stop()
        self._ui_timer.stop()

