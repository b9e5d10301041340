"""The Train page: pick a base and a data set, check the hardware, train, and watch the losses live.

Left: the base model (a preset or a local Pythia folder), the data set, the doctor panel (device,
compute capability, kernels, precision, memory estimate against what is available as a
fit/no-fit bar) and the hyperparameters (each with a tooltip). Right: Start / Pause / Resume /
Cancel, a progress bar with ETA and tokens/s, and live plots of the LM loss, the ethics loss
(total and one curve per law, each toggled from the legend), validation points and the learning
rate, with smoothing and the overlay of an earlier run. An interrupted run is offered for resume.

Training runs on the engine worker (``kala_engine.train.trainer.train_job``); events only append to
plot buffers, which redraw from a timer, so the page stays responsive at any step rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from kala_engine.train.config import SCRATCH_LEARNING_RATE, TrainConfig, default_learning_rate
from kala_engine.units import format_bytes, format_duration

from .. import engine_api
from ..error_dialog import show_error
from ..runs import RunInfo, list_runs, load_curves, new_run_dir
from ..widgets.elided_combo import ElidedComboBox
from ..widgets.live_plot import LivePlot
from ..widgets.train_ethics_weights import EthicsWeightsBox
from ..widgets.wrap_label import WrapLabel

#: Colours of the five law curves (index = law index), the LM loss and the total ethics loss.
LAW_COLORS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
LM_COLOR = "#1f77b4"
ETHICS_COLOR = "#2ca02c"
VAL_COLOR = "#000000"
OVERLAY_COLOR = "#9a9a9a"
LOCAL_FOLDER = "Local Pythia folder…"
BROWSE_DATA = "Browse…"

GiB = 1024**3


def remove_if_empty_run(run_dir: Path | None) -> bool:
    """Remove a run folder a failed start left behind with nothing in it worth keeping (no
    metrics, no checkpoint, no final model): the Runs page does not list it and nobody could
    resume it. Returns True when it was removed."""
    if run_dir is None or not Path(run_dir).is_dir():
        return False
    from kala_engine.train.run_folder import RunFolder

    folder = RunFolder(run_dir)
    if folder.metrics_file.exists() or folder.checkpoints_dir.exists() or folder.has_final():
        return False
    run_dir = folder.path
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


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


class TrainPage(QWidget):
    """Base + data + doctor + hyperparameters on the left, controls and live plots on the right."""

    handles_job_errors = True
    #: Emitted with the run folder when a training run ends with a final model.
    run_finished = Signal(str)

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.worker = ctx.worker
        # replaceable in tests: how a config and a job are made
        self.config_factory = engine_api.make_train_config
        self.job_factory = engine_api.train_job
        self.doctor_factory = engine_api.doctor
        self.run_dir: Path | None = None
        self._job_kind = ""  # "train" | "doctor" while this page owns the running job
        self._latest: dict | None = None
        self._total_steps = 0
        self._t_start = 0.0
        self._steps_seen = 0
        self._quickstart_then = None
        self._base_problem = ""
        self._last_base_index = 0
        self._cached_bases: dict[str, str] = {}  # {preset name: commit} in the HF cache (fill_bases)
        self._watched_download: str | None = None  # a base download running (from here or the Models page)
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
        # ---------------- left column
        model_box = QGroupBox("Model and data")
        form = QFormLayout(model_box)
        self.base_combo = ElidedComboBox()
        self.base_combo.setObjectName("baseCombo")
        self.base_combo.setToolTip(
            "The model to start from: kala-tiny is trained from scratch in minutes on a CPU; the "
            "Pythia presets need their weights in a local folder or the Hugging Face cache "
            "(downloaded ones are listed first; the others offer the download).")
        self.fill_bases()
        self.base_combo.activated.connect(self._on_base_activated)
        self.data_combo = ElidedComboBox()
        self.data_combo.setObjectName("dataCombo")
        self.data_combo.setToolTip("A KALA JSONL data set (make one on the Data page).")
        self.data_combo.activated.connect(self._on_data_activated)
        form.addRow("Base", self.base_combo)
        #: why the chosen base cannot be trained from (not downloaded, a folder without a model)
        self.base_status = WrapLabel("")
        self.base_status.setObjectName("baseStatus")
        self.base_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.base_status.setStyleSheet("#baseStatus { color: #9a3412; background: #fff4e0; "
                                       "border: 1px solid #f0c070; border-radius: 4px; padding: 4px; }")
        self.base_status.hide()
        form.addRow(self.base_status)
        #: offered under the note when the chosen base is a catalogue model not downloaded yet
        self.base_download_button = QPushButton("Download…")
        self.base_download_button.setObjectName("baseDownloadButton")
        self.base_download_button.clicked.connect(self.download_base)
        self.base_download_button.hide()
        form.addRow(self.base_download_button)
        self.base_combo.currentIndexChanged.connect(lambda _i: self.check_base())
        form.addRow("Data", self.data_combo)

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

        hp_box = QGroupBox("Hyperparameters")
        hform = QFormLayout(hp_box)
        self.hp: dict[str, QWidget] = {}
        tc = {f.name: f.default for f in fields(TrainConfig)}  # the engine's defaults, one source

        def spin(key, lo, hi, val, tip, step=1):
            w = QSpinBox()
            w.setRange(lo, hi)
            w.setValue(val)
            w.setSingleStep(step)
            w.setToolTip(tip)
            self.hp[key] = w
            return w

        def dspin(key, lo, hi, val, decimals, step, tip):
            w = QDoubleSpinBox()
            w.setRange(lo, hi)
            w.setDecimals(decimals)
            w.setSingleStep(step)
            w.setValue(val)
            w.setToolTip(tip)
            self.hp[key] = w
            return w

        hform.addRow("Max steps", spin("max_steps", 0, 10_000_000, 300,
                     "Stop after this many optimizer steps (0: run the given number of epochs).", 50))
        hform.addRow("Epochs", spin("epochs", 1, 1000, 1, "Passes over the training split (used when Max steps is 0)."))
        hform.addRow("Batch size", spin("batch_size", 1, 4096, tc["batch_size"],
                     "Examples per optimizer step. Larger is smoother but needs more memory."))
        hform.addRow("Learning rate", dspin("learning_rate", 1e-7, 1.0, default_learning_rate(tc["base"]), 6, 1e-4,
                     "Peak AdamW learning rate after warm-up (cosine decay afterwards). "
                     f"{SCRATCH_LEARNING_RATE:g} suits kala-tiny from scratch; 1e-5–5e-5 suits fine-tuning Pythia."))
        hform.addRow("Ethics weight λ", dspin("ethics_weight", 0.0, 100.0, tc["ethics_weight"], 2, 0.1,
                     "λ in loss = LM + λ·Σ w_k·MSE_k: how much the law-score heads count against language modeling."))
        # the settings one rarely changes fold away, so that the left column fits a 640-px window
        more = QWidget()
        mform = QFormLayout(more)
        mform.setContentsMargins(0, 0, 0, 0)
        mform.addRow("Warm-up steps", spin("warmup_steps", 0, 1_000_000, 20,
                     "Steps over which the learning rate ramps up from 0.", 10))
        mform.addRow("Validate every", spin("eval_every", 0, 1_000_000, tc["eval_every"],
                     "Steps between validation passes, also at the start and the end (0: never). "
                     "Validation points appear as dots.", 10))
        mform.addRow("Checkpoint every", spin("save_every", 0, 1_000_000, tc["save_every"],
                     "Steps between checkpoints (0: only at the end). A run resumes from its last checkpoint.", 50))
        mform.addRow("Seed", spin("seed", 0, 2**31 - 1, tc["seed"], "Random seed: the same seed and data give the same run."))
        self.grad_ckpt = QCheckBox("Gradient checkpointing")
        self.grad_ckpt.setToolTip("Recompute activations in the backward pass: less memory, ~30% slower.")
        self.hp["gradient_checkpointing"] = self.grad_ckpt
        mform.addRow(self.grad_ckpt)
        self.more_settings = QCollapsible("More settings")
        self.more_settings.setObjectName("moreSettings")
        self.more_settings.setDuration(0)
        self.more_settings.setToolTip("Warm-up, validation and checkpoint intervals, seed, gradient checkpointing")
        self.more_settings.addWidget(more)
        hform.addRow(self.more_settings)
        self._load_hp_settings()

        left = QWidget()
        llay = QVBoxLayout(left)
        llay.setContentsMargins(0, 0, 6, 0)
        llay.addWidget(model_box)
        llay.addWidget(doctor_box)
        llay.addWidget(hp_box)
        self.ethics_box = EthicsWeightsBox(self.law_titles)  # issue 18: weights, layers, distillation
        ethics_fold = QCollapsible("Ethics weights, layers, distillation")
        ethics_fold.setDuration(0)
        ethics_fold.addWidget(self.ethics_box)
        llay.addWidget(ethics_fold)
        llay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setMinimumWidth(330)

        # ---------------- right column
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
        self.stats = {k: QLabel("–") for k in ("step", "epoch", "elapsed", "eta", "tokens_per_s", "lr")}
        stats = QGridLayout()
        for i, (k, title) in enumerate([("step", "Step"), ("epoch", "Epoch"), ("elapsed", "Elapsed"),
                                        ("eta", "ETA"), ("tokens_per_s", "Tokens/s"), ("lr", "LR")]):
            t = QLabel(title)
            t.setStyleSheet("color: #666;")
            stats.addWidget(t, 0, i)
            self.stats[k].setObjectName(f"stat_{k}")
            stats.addWidget(self.stats[k], 1, i)

        # plots
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
        self.plots = [self.lm_plot, self.ethics_plot, self.lr_plot, self.ethics_box.weights_plot,
                      self.ethics_box.distill_plot]
        # Not x-linked: a link makes every plot repaint whenever one redraws (3 paints in one go).

        self.smooth_slider = QSlider(Qt.Orientation.Horizontal)
        self.smooth_slider.setRange(0, 99)
        self.smooth_slider.setValue(int(float(self.ctx.settings.value("train/smoothing", 60))))
        self.smooth_slider.setToolTip("Exponential moving average of the loss curves (0: raw values).")
        self.smooth_slider.valueChanged.connect(self._on_smoothing)
        self.smooth_label = QLabel()
        self.overlay_combo = ElidedComboBox()
        self.overlay_combo.setObjectName("overlayCombo")
        self.overlay_combo.setToolTip("Draw an earlier run's curves (dashed, grey) under this one.")
        self.overlay_combo.setMinimumWidth(220)
        self.overlay_combo.activated.connect(self._on_overlay_chosen)
        plot_bar = QHBoxLayout()
        plot_bar.addWidget(QLabel("Smoothing"))
        plot_bar.addWidget(self.smooth_slider, 1)
        plot_bar.addWidget(self.smooth_label)
        plot_bar.addSpacing(16)
        plot_bar.addWidget(QLabel("Compare with"))
        plot_bar.addWidget(self.overlay_combo, 1)

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
        plots.addWidget(self.aux_tabs)
        plots.setStretchFactor(0, 1)
        plots.setStretchFactor(1, 1)
        plots.setStretchFactor(2, 0)
        self.aux_tabs.setMaximumHeight(165)
        plots.setSizes([300, 340, 150])

        right = QWidget()
        rlay = QVBoxLayout(right)
        rlay.setContentsMargins(6, 0, 0, 0)
        # The buttons come first: a banner that appears or goes (resume offer) sits below them, above
        # the plots, so that Start/Pause/Cancel never move under the pointer.
        rlay.addLayout(buttons)
        rlay.addWidget(self.progress)
        rlay.addLayout(stats)
        rlay.addWidget(self.resume_banner)
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

    def _connect_worker(self) -> None:
        w = self.worker
        w.step.connect(self._on_step)
        w.validation.connect(self._on_validation)
        w.log.connect(self._on_log)
        w.checkpoint_saved.connect(self._on_checkpoint)
        w.failed.connect(self._on_failed)
        w.finished.connect(self._on_finished)
        w.busy_changed.connect(lambda _busy: self._update_buttons())
        w.started.connect(self._on_job_started)
        w.event.connect(self._on_download_event)

    @staticmethod
    def _safe(fn, default):
        try:
            return fn()
        except Exception:  # noqa: BLE001 - an optional engine piece; the page still works
            return default

    # ================================================================ lists (data sets, runs)

    def refresh_lists(self) -> None:
        """Re-read the data sets and runs folders (data combo, overlay combo, resume offer)."""
        current = self.data_path()
        self.data_combo.clear()
        files = sorted(self.ctx.datasets_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
        remembered = self.ctx.settings.value("data/current", "")
        paths = [str(p) for p in files]
        for extra in (current, remembered):
            if extra and extra not in paths and Path(extra).is_file():
                paths.insert(0, extra)
        for p in paths:
            self.data_combo.addItem(Path(p).name, p)
            self.data_combo.setItemData(self.data_combo.count() - 1, p, Qt.ItemDataRole.ToolTipRole)
        self.data_combo.addItem(BROWSE_DATA)
        want = current or remembered
        idx = self.data_combo.findData(want) if want else 0
        self.data_combo.setCurrentIndex(max(0, idx))

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
        if not self.worker.is_busy():
            self.refresh_lists()

    def set_data_path(self, path: str | Path) -> None:
        """Select a data set (adds it to the list if needed)."""
        path = str(path)
        self.ctx.settings.setValue("data/current", path)
        i = self.data_combo.findData(path)
        if i < 0:
            self.data_combo.insertItem(0, Path(path).name, path)
            i = 0
        self.data_combo.setCurrentIndex(i)

    def data_path(self) -> str:
        d = self.data_combo.currentData()
        return str(d) if d else ""

    def base(self) -> str:
        b = self.base_combo.currentData()
        return str(b) if b else self.base_combo.currentText()

    # ---------------------------------------------------------------- bases: cached first, download offered

    def fill_bases(self) -> None:
        """(Re)fill the Base picker: kala-tiny, the Pythia models in the cache (marked downloaded),
        then the others (marked with their download size); local folders picked earlier stay.
        Reads cache files only (no network, no torch), so it runs on every show of the page."""
        combo = self.base_combo
        keep = self.base() if combo.count() else ""
        folders = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())
                   if combo.itemData(i) and Path(str(combo.itemData(i))).is_absolute()
                   and Path(str(combo.itemData(i))).is_dir()]
        presets = self._safe(engine_api.base_presets, ["kala-tiny"])
        catalog = {m["name"]: m for m in self._safe(engine_api.base_catalog, [])}
        self._cached_bases = self._safe(engine_api.cached_bases, {})
        cached = [n for n in catalog if n in self._cached_bases]
        missing = [n for n in presets if n != "kala-tiny" and n not in self._cached_bases]
        combo.blockSignals(True)
        combo.clear()
        for text, folder in folders:
            combo.addItem(text, folder)
            combo.setItemData(combo.count() - 1, folder, Qt.ItemDataRole.ToolTipRole)
        if "kala-tiny" in presets:
            combo.addItem("kala-tiny", "kala-tiny")
            combo.setItemData(combo.count() - 1, "kala-tiny: trained from scratch, nothing to download",
                              Qt.ItemDataRole.ToolTipRole)
        for n in cached:
            combo.addItem(f"{n}  ✓ downloaded", n)
            combo.setItemData(combo.count() - 1, f"{catalog[n]['repo_id']} is in the Hugging Face cache (commit "
                              f"{self._cached_bases[n][:8]}): trains offline", Qt.ItemDataRole.ToolTipRole)
        for n in missing:
            size = catalog[n]["download_bytes"] if n in catalog else None
            combo.addItem(f"{n}  (download {format_bytes(size)})" if size else n, n)
            combo.setItemData(combo.count() - 1, f"not downloaded yet: pick it, then Download… ({format_bytes(size)})",
                              Qt.ItemDataRole.ToolTipRole)
        combo.addItem(LOCAL_FOLDER)
        i = combo.findData(keep) if keep else -1
        combo.setCurrentIndex(i if i >= 0 else 0)
        combo.blockSignals(False)
        if hasattr(self, "base_status"):
            self.check_base()

    def select_base(self, name: str) -> bool:
        """Choose the base ``name`` (a preset or a folder picked before) in the picker."""
        i = self.base_combo.findData(str(name))
        if i >= 0:
            self.base_combo.setCurrentIndex(i)
        return i >= 0

    def _downloadable(self, base: str) -> dict | None:
        """The catalogue entry of ``base`` when it is a Pythia model not in the cache yet."""
        if base in self._cached_bases:
            return None
        return next((m for m in self._safe(engine_api.base_catalog, []) if m["name"] == base), None)

    def download_base(self) -> str:
        """Download the chosen base on the Models page (it shows the table and the row's progress
        bar); this page shows the progress under Base and enables Start once it is cached.
        "" when it started, else why not (also said under Base)."""
        base = self.base()
        models = self.ctx.pages.get("models")
        if models is None or not hasattr(models, "download"):
            return "no Models page"
        why = models.download(base)
        if why:
            self.base_status.setText(f"<b>Not available:</b> {base} is not downloaded yet; {why}")
            return why
        self._watched_download = base
        self.base_download_button.setEnabled(False)
        self.base_status.setText(f"<b>Downloading {base}…</b> (on the Models page; Start is enabled when it is "
                                 f"in the cache)")
        win = self.window()
        if hasattr(win, "show_page") and win is not self:
            win.show_page("models")
        return ""

    def _on_job_started(self, name: str) -> None:
        if name.startswith("download "):
            self._watched_download = name.removeprefix("download ")

    def _on_download_event(self, ev) -> None:
        name = self._watched_download
        if name is None or name != self.base() or getattr(ev, "rate", None) is None or not getattr(ev, "total", 0):
            return
        from .models import progress_text

        self.base_status.setText(f"<b>Downloading {name}:</b> {progress_text(ev.done, ev.total, ev.rate, ev.eta)}")

    def _after_download(self, ev) -> None:
        name, self._watched_download = self._watched_download, None
        if name is None:
            return
        self.fill_bases()  # cached now: listed first, Start enabled (when it was the chosen base)
        if ev.cancelled and name == self.base():
            self.base_status.setText(self.base_status.text() + " (download cancelled: the Models page resumes it)")

    def _on_base_activated(self, index: int) -> None:
        if self.base_combo.itemText(index) != LOCAL_FOLDER:
            return
        folder = QFileDialog.getExistingDirectory(self, "Choose a local Pythia folder (config.json + weights)")
        if not folder or not self.add_base_folder(folder):
            self.base_combo.setCurrentIndex(self._last_base_index)

    def add_base_folder(self, folder: str | Path) -> bool:
        """Check ``folder`` now and select it as the base; refused at once with the reason if it is
        not a model folder (config.json GPT-NeoX/KALA, tokenizer, safetensors weights)."""
        folder = str(folder)
        why = engine_api.model_folder_problem(folder)
        if why:
            show_error(self, "Not a model folder", f"{folder} cannot be a base: {why}.")
            return False
        i = self.base_combo.findData(folder)
        if i < 0:
            self.base_combo.insertItem(0, Path(folder).name + " (local)", folder)
            self.base_combo.setItemData(0, folder, Qt.ItemDataRole.ToolTipRole)
            i = 0
        self.base_combo.setCurrentIndex(i)
        return True

    def check_base(self) -> str:
        """Say under the Base box (and on Start) why the chosen base is not available; "" when it is."""
        if self.base_combo.currentText() == LOCAL_FOLDER:
            return ""
        self._last_base_index = self.base_combo.currentIndex()
        base = self.base()
        try:
            why = engine_api.base_problem(base)
        except Exception as e:  # noqa: BLE001 - an unreadable cache is a problem to show, not a crash
            why = f"{base} cannot be checked ({type(e).__name__}: {e})"
        self._base_problem = why
        offer = self._downloadable(base) if why else None
        if offer:
            here = "the Download button below (the Models page shows its progress) or " if "models" in self.ctx.pages else ""
            self.base_status.setText(
                f"<b>Not available:</b> {base} is not downloaded yet ({format_bytes(offer['download_bytes'])}). Get it with "
                f"{here}`kala models download {base}`.")
        elif why:
            self.base_status.setText(f"<b>Not available:</b> {why}.")
        self.base_status.setVisible(bool(why))
        self.base_download_button.setVisible(bool(offer) and "models" in self.ctx.pages)
        self.base_download_button.setText(f"Download {base}…" if offer else "Download…")
        self.base_download_button.setToolTip(
            f"Download {offer['repo_id']} ({format_bytes(offer['download_bytes'])}) into the Hugging Face cache; the "
            f"Models page opens with its progress." if offer else "")
        self._update_buttons()
        return why

    def _on_data_activated(self, index: int) -> None:
        if self.data_combo.itemText(index) != BROWSE_DATA:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Choose a KALA data set", str(self.ctx.datasets_dir),
                                              "KALA JSONL (*.jsonl);;All files (*)")
        if path:
            self.set_data_path(path)
        else:
            self.data_combo.setCurrentIndex(0)

    # ================================================================ settings

    def _load_hp_settings(self) -> None:
        s = self.ctx.settings
        for key, w in self.hp.items():
            v = s.value(f"train/{key}")
            if v is None:
                continue
            try:
                if isinstance(w, QCheckBox):
                    w.setChecked(v in (True, "true", "1", 1))
                elif isinstance(w, QDoubleSpinBox):
                    w.setValue(float(v))
                else:
                    w.setValue(int(float(v)))
            except (TypeError, ValueError):
                pass

    def save_settings(self) -> None:
        s = self.ctx.settings
        for key, w in self.hp.items():
            s.setValue(f"train/{key}", w.isChecked() if isinstance(w, QCheckBox) else w.value())
        s.setValue("train/smoothing", self.smooth_slider.value())

    def hyperparameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, w in self.hp.items():
            out[key] = w.isChecked() if isinstance(w, QCheckBox) else w.value()
        if out.get("max_steps") == 0:
            out["max_steps"] = None
        out.update(self.ethics_box.values())
        return out

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
        self.worker.start(job, f"doctor {base}", owner=self)

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
        self.worker.start(job, f"training {self.run_dir.name}", owner=self)
        self._update_buttons()
        return True

    def resume_run(self, run: RunInfo | None) -> None:
        if run is not None:
            self.start_training(resume_run=run)

    def pause(self) -> None:
        if self._owns_job():
            self.worker.pause()
            self._update_buttons()

    def resume(self) -> None:
        if self._owns_job():
            self.worker.resume()
            self._update_buttons()

    def cancel(self) -> None:
        if self._owns_job():
            self.worker.cancel()
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
        for key, value in hp.items():
            w = self.hp.get(key)
            if isinstance(w, QDoubleSpinBox):
                w.setValue(float(value))
            elif isinstance(w, QSpinBox):
                w.setValue(int(float(value)))
        self._quickstart_then = then
        started = self.start_training()
        if not started:
            self._quickstart_then = None
        return started

    def _owns_job(self) -> bool:
        return self.worker.is_busy() and self.worker.owner is self

    def _update_buttons(self) -> None:
        busy = self.worker.is_busy()
        mine = busy and self.worker.owner is self and self._job_kind == "train"
        paused = mine and self.worker.is_paused()
        self.start_button.setEnabled(not busy and not self._base_problem)
        self.start_button.setToolTip(
            f"Not available: {self._base_problem}" if self._base_problem
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
        for p in self.plots:
            keys = [k for k in p.series if not (keep_overlay and k.startswith("ov_"))]
            p.clear_data(keys)
        self._latest = None
        self._steps_seen = 0
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        for lab in self.stats.values():
            lab.setText("–")

    def _load_existing_curves(self, run_dir: Path) -> None:
        train, val = load_curves(run_dir)
        for m in train:
            self._add_step_metrics(m)
        for m in val:
            self._add_validation_metrics(m)

    def _is_my_training(self) -> bool:
        return self.worker.owner is self and self._job_kind == "train"

    def _on_step(self, ev) -> None:
        if not self._is_my_training():
            return
        m = dict(ev.metrics)
        m.setdefault("step", ev.step)
        self._total_steps = int(ev.total_steps or self._total_steps or 0)
        self._add_step_metrics(m)
        self._latest = m
        self._steps_seen += 1

    def _add_step_metrics(self, m: dict) -> None:
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
        self.ethics_box.add_step(m)

    def _on_validation(self, ev) -> None:
        if not self._is_my_training():
            return
        m = dict(ev.metrics)
        m.setdefault("step", ev.step)
        self._add_validation_metrics(m)
        self.log_view.appendPlainText(
            f"validation at step {m['step']}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float)))

    def _add_validation_metrics(self, m: dict) -> None:
        x = m.get("step")
        lm = m.get("lm_loss", m.get("val_lm_loss"))
        eth = m.get("ethics_loss", m.get("val_ethics_loss"))
        if x is None:
            return
        if lm is not None:
            self.lm_plot.append("lm_val", x, lm)
        if eth is not None:
            self.ethics_plot.append("ethics_val", x, eth)

    def _on_log(self, message: str) -> None:
        if self.worker.owner is self:
            self.log_view.appendPlainText(message)

    def _on_checkpoint(self, ev) -> None:
        if self._is_my_training():
            self.log_view.appendPlainText(f"checkpoint saved at step {ev.step}: {ev.path}")

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
        if self.worker.is_paused():
            self.progress.setFormat(f"paused at step {step}" + (f" of {total}" if total else ""))
        else:
            self.progress.setFormat(f"step {step}" + (f" of {total} (%p%)" if total else ""))
        elapsed = m.get("elapsed", time.monotonic() - self._t_start)
        eta = m.get("eta")
        if eta is None and total and step:
            eta = elapsed / step * (total - step)
        tps = m.get("tokens_per_s")
        self.stats["step"].setText(f"{step}" + (f" / {total}" if total else ""))
        ep = m.get("epoch")
        self.stats["epoch"].setText(f"{ep:.2f}" if isinstance(ep, (int, float)) else "–")
        self.stats["elapsed"].setText(format_duration(elapsed))
        self.stats["eta"].setText(format_duration(eta))
        self.stats["tokens_per_s"].setText(f"{tps:,.0f}" if isinstance(tps, (int, float)) else "–")
        lr = m.get("lr")
        self.stats["lr"].setText(f"{lr:.2e}" if isinstance(lr, (int, float)) else "–")

    def _on_failed(self, message: str, traceback: str) -> None:
        if self.worker.owner is not self:
            return
        if self._job_kind == "train":
            remove_if_empty_run(self.run_dir)
        title = "Training failed" if self._job_kind == "train" else "The doctor failed"
        if self._job_kind == "doctor":
            self.doc_labels["device"].setText("–")
        self.log_view.appendPlainText(f"FAILED: {message}")
        self.aux_tabs.setCurrentWidget(self.log_view)
        show_error(self, title, message, traceback)

    def _on_finished(self, ev) -> None:
        if self._watched_download is not None:  # one job at a time: this is that download ending
            self._after_download(ev)
        if self.worker.owner is not self:
            return
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
        elif self.worker.owner is self and self._steps_seen == 0 and ev.result is None:
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
        alpha = value / 100.0
        self.smooth_label.setText(f"{alpha:.2f}")
        for p in (self.lm_plot, self.ethics_plot):
            p.set_smoothing(alpha)

    def _on_overlay_chosen(self, index: int) -> None:
        self.set_overlay(self.overlay_combo.itemData(index))

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

    def shutdown(self) -> None:
        for p in self.plots:
            p.timer.stop()
        self._ui_timer.stop()

