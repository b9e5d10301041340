"""The Train page's hyperparameter fields, made from :class:`~kala_engine.train.config.TrainConfig`'s
defaults (one source), remembered in the settings, the rarely changed ones folded away."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QGroupBox, QSpinBox, QWidget
from superqt import QCollapsible

from kala_engine.train.config import SCRATCH_LEARNING_RATE, TrainConfig, default_learning_rate


class HyperparameterForm(QGroupBox):
    """``hp``: {TrainConfig field: its widget}; ``values()`` the fields as TrainConfig keyword arguments."""

    def __init__(self, settings) -> None:
        super().__init__("Hyperparameters")
        self.settings = settings
        self.hp: dict[str, QWidget] = {}
        self._build()
        self.load()

    def _spin(self, key, lo, hi, val, tip, step=1) -> QSpinBox:
        w = QSpinBox()
        w.setRange(lo, hi)
        w.setValue(val)
        w.setSingleStep(step)
        w.setToolTip(tip)
        self.hp[key] = w
        return w

    def _dspin(self, key, lo, hi, val, decimals, step, tip) -> QDoubleSpinBox:
        w = QDoubleSpinBox()
        w.setRange(lo, hi)
        w.setDecimals(decimals)
        w.setSingleStep(step)
        w.setValue(val)
        w.setToolTip(tip)
        self.hp[key] = w
        return w

    def _build(self) -> None:
        hform = QFormLayout(self)
        tc = {f.name: f.default for f in fields(TrainConfig)}  # the engine's defaults, one source

        hform.addRow("Max steps", self._spin("max_steps", 0, 10_000_000, 300,
                     "Stop after this many optimizer steps (0: run the given number of epochs).", 50))
        hform.addRow("Epochs", self._spin("epochs", 1, 1000, 1, "Passes over the training split (used when Max steps is 0)."))
        hform.addRow("Batch size", self._spin("batch_size", 1, 4096, tc["batch_size"],
                     "Examples per optimizer step. Larger is smoother but needs more memory."))
        hform.addRow("Learning rate", self._dspin("learning_rate", 1e-7, 1.0, default_learning_rate(tc["base"]), 6, 1e-4,
                     "Peak AdamW learning rate after warm-up (cosine decay afterwards). "
                     f"{SCRATCH_LEARNING_RATE:g} suits kala-tiny from scratch; 1e-5–5e-5 suits fine-tuning Pythia."))
        hform.addRow("Ethics weight λ", self._dspin("ethics_weight", 0.0, 100.0, tc["ethics_weight"], 2, 0.1,
                     "λ in loss = LM + λ·Σ w_k·MSE_k: how much the law-score heads count against language modeling."))
        # the settings one rarely changes fold away, so that the left column fits a 640-px window
        more = QWidget()
        mform = QFormLayout(more)
        mform.setContentsMargins(0, 0, 0, 0)
        mform.addRow("Warm-up steps", self._spin("warmup_steps", 0, 1_000_000, 20,
                     "Steps over which the learning rate ramps up from 0.", 10))
        mform.addRow("Validate every", self._spin("eval_every", 0, 1_000_000, tc["eval_every"],
                     "Steps between validation passes, also at the start and the end (0: never). "
                     "Validation points appear as dots.", 10))
        mform.addRow("Checkpoint every", self._spin("save_every", 0, 1_000_000, tc["save_every"],
                     "Steps between checkpoints (0: only at the end). A run resumes from its last checkpoint.", 50))
        mform.addRow("Seed", self._spin("seed", 0, 2**31 - 1, tc["seed"], "Random seed: the same seed and data give the same run."))
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

    def load(self) -> None:
        """The values remembered from the last run started here (unreadable ones are skipped)."""
        for key, w in self.hp.items():
            v = self.settings.value(f"train/{key}")
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

    def save(self) -> None:
        for key, w in self.hp.items():
            self.settings.setValue(f"train/{key}", w.isChecked() if isinstance(w, QCheckBox) else w.value())

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: w.isChecked() if isinstance(w, QCheckBox) else w.value()
                               for key, w in self.hp.items()}
        if out.get("max_steps") == 0:
            out["max_steps"] = None
        return out

    def set_values(self, values: dict[str, Any]) -> None:
        """Show ``values`` in the fields (the quickstart's settings); unknown keys are ignored."""
        for key, value in values.items():
            w = self.hp.get(key)
            if isinstance(w, QCheckBox):
                w.setChecked(bool(value))
            elif isinstance(w, QDoubleSpinBox):
                w.setValue(float(value))
            elif isinstance(w, QSpinBox):
                w.setValue(int(float(value)))
