"""Choosing a trained model: how a model folder is named, and the picker above the Chat transcript.

A model is named by its run (``demo-20261129-234242 · final``, :func:`kala_engine.train.runs.describe_model`),
its path in the tooltip; the Chat and Evaluate pages list the runs folder the same way.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QFrame, QHBoxLayout, QLabel, QPushButton

from kala_engine.train.runs import describe_model
from kala_engine.train.runs import find_models as engine_find_models

from .elided_combo import ElidedComboBox


def model_label(path: str | Path, runs_dir: str | Path | None = None) -> str:
    """How the model pickers name a folder: by its run, ``demo-20261129-234242 · final``
    (:func:`kala_engine.train.runs.describe_model`; a folder outside any run by its own name)."""
    return describe_model(path, runs_dir).label


def find_models(runs_dir: Path) -> list[tuple[str, Path]]:
    """(label, folder) of every model under the runs folder, in any run layout the engine writes
    (``kala demo``'s ``demo-…/run`` too): each run's final/ and its loadable checkpoints
    (:func:`kala_engine.train.runs.find_models`)."""
    return [(m.label, m.path) for m in engine_find_models(runs_dir)]


def add_model_item(combo: QComboBox, path: str | Path, runs_dir: str | Path | None) -> int:
    """Add a model folder to a picker, named by its run, its path in the tooltip; returns its index."""
    combo.addItem(model_label(path, runs_dir), str(path))
    i = combo.count() - 1
    combo.setItemData(i, str(path), Qt.ItemDataRole.ToolTipRole)
    return i


class ModelPicker(QFrame):
    """"Model [run · final ▾] [Browse…]": the runs folder's models, or any folder on this computer."""

    changed = Signal()  # the chosen folder changed (by the user or by set_path)

    def __init__(self, runs_dir: str | Path) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.setObjectName("chatTop")
        self.setStyleSheet("#chatTop { border-bottom: 1px solid #dde3ea; }")
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 8, 12, 8)
        row.addWidget(QLabel("Model"))
        self.combo = ElidedComboBox()  # a long run name is elided, not cut
        self.combo.setMinimumContentsLength(16)  # elided beyond that
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setToolTip("A run's final model or one of its checkpoints (from the runs folder)")
        self.combo.currentIndexChanged.connect(lambda _i: self.changed.emit())
        row.addWidget(self.combo, 1)
        browse = QPushButton("Browse…")
        browse.setToolTip("Use a model folder from anywhere on this computer")
        browse.clicked.connect(self._browse)
        row.addWidget(browse)

    def path(self) -> str:
        """The chosen model folder ('' when none)."""
        return str(self.combo.currentData() or "")

    def refresh(self) -> None:
        """List the models of the runs folder, keeping the current choice; emits nothing."""
        combo, current = self.combo, self.path()
        combo.blockSignals(True)
        combo.clear()
        for _label, path in find_models(self.runs_dir):
            add_model_item(combo, path, self.runs_dir)
        if current and combo.findData(current) < 0:
            add_model_item(combo, current, self.runs_dir)
        if current:
            combo.setCurrentIndex(combo.findData(current))
        elif combo.count() and combo.currentIndex() < 0:
            # with a placeholder text set, Qt 6 leaves a refilled combo on no item: pick the newest
            combo.setCurrentIndex(0)
        # short: a placeholder sets the combo's minimum width (the rest is in the tooltip)
        combo.setPlaceholderText("No trained model yet" if combo.count() == 0 else "")
        if combo.count() == 0:
            combo.setToolTip("No trained model yet: train one on the Train page, or Browse…")
        combo.blockSignals(False)

    def set_path(self, path: str | Path) -> None:
        """Choose a model folder (added to the list if it is not a run of the runs folder)."""
        path = str(path)
        i = self.combo.findData(path)
        if i < 0:
            i = add_model_item(self.combo, path, self.runs_dir)
        self.combo.setCurrentIndex(i)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Choose a KALA model folder", str(self.runs_dir))
        if d:
            self.set_path(d)


__all__ = ["ModelPicker", "add_model_item", "find_models", "model_label"]
