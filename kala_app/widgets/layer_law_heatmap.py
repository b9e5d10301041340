"""What a trained model learned about its layers, as two heatmaps (issue 18, item 3).

Left: the ethics aggregator's layer x law weights (each law's column sums to 1 over the layers:
where the final score of that law comes from). Right: every layer's constitutional attention
gates, one cell per head (0: the layer attends as plain Pythia; larger: keys with low law scores
are attended less). Rows are layers, layer 0 at the top. Drawn with pyqtgraph ImageItems from
the model's ``model.safetensors`` (:func:`kala_engine.train.ethics_layers.layer_law_weights`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget


def _heatmap() -> tuple[pg.PlotWidget, pg.ImageItem]:
    w = pg.PlotWidget()
    w.setBackground("w")
    w.setMinimumSize(160, 120)
    item = pg.ImageItem(axisOrder="row-major")
    w.addItem(item)
    w.plotItem.invertY(True)  # layer 0 at the top
    w.plotItem.setMouseEnabled(x=False, y=False)
    w.plotItem.hideButtons()
    w.plotItem.setLabel("left", "layer")
    for side in ("left", "bottom"):
        w.plotItem.getAxis(side).setStyle(tickLength=0)  # no tick marks beside the cells' numbers
    return w, item


class LayerLawHeatmap(QWidget):
    """The aggregator's layer x law weights and the per-layer gates of one model folder."""

    def __init__(self, law_titles: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("layerLawHeatmap")
        self.law_titles = law_titles
        self.note = QLabel("Select a finished run to see where its ethics live.")
        self.note.setWordWrap(True)
        self.law_plot, self.law_image = _heatmap()
        self.gate_plot, self.gate_image = _heatmap()
        # the titles are labels above the plots, not pyqtgraph titles: a plot title as wide as the
        # plot makes pyqtgraph lay the plot out wider than its widget and cut its right columns
        self.law_title = QLabel("Aggregator weight: layer × law")
        self.gate_title = QLabel("Attention gate: layer × head")
        for label in (self.law_title, self.gate_title):
            label.setWordWrap(True)
            label.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.law_image.setColorMap(pg.colormap.get("viridis"))
        self.gate_image.setColorMap(pg.colormap.get("magma"))
        self.labels: list[tuple[pg.PlotWidget, pg.TextItem]] = []
        row = QHBoxLayout()
        # as wide as each other: a model has more heads than laws (6 in kala-tiny, 12 in Pythia-160m)
        for title, plot in ((self.law_title, self.law_plot), (self.gate_title, self.gate_plot)):
            column = QVBoxLayout()
            column.addWidget(title)
            column.addWidget(plot, 1)
            row.addLayout(column, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.note)
        lay.addLayout(row, 1)
        self.data: dict | None = None
        self._show_plots(False)

    def show_model(self, model_dir: str | Path | None) -> bool:
        """Draw ``model_dir``'s weights; False (and a note saying why) when there is nothing to draw."""
        from kala_engine.jobs import JobError
        from kala_engine.train.ethics_layers import layer_law_weights

        self.data = None
        for item in (self.law_image, self.gate_image):
            item.clear()
        for plot, t in self.labels:
            plot.removeItem(t)
        self.labels = []
        self._show_plots(False)  # empty axes say nothing: the note says why there is nothing to draw
        if model_dir is None or not (Path(model_dir) / "model.safetensors").is_file():
            self.note.setText("No final model in this run yet (the heatmap shows a finished run's weights).")
            return False
        try:
            data = layer_law_weights(model_dir)
        except (JobError, OSError, ValueError) as e:
            self.note.setText(f"Cannot read the layer weights: {e}")
            return False
        self.data = data
        self._show_plots(True)
        laws = np.asarray(data["layer_law"], dtype=float)  # (L, K)
        gates = np.asarray(data["gates"], dtype=float)  # (L, H)
        self.law_image.setImage(laws, levels=(0.0, max(float(laws.max()), 1e-6)))
        self.gate_image.setImage(gates, levels=(0.0, max(float(gates.max()), 1e-6)))
        self._annotate(self.law_plot, laws)
        self._annotate(self.gate_plot, gates)
        ticks = [(k + 0.5, f"L{k}") for k in range(laws.shape[1])]  # Law k; the full names are in the note
        self.law_plot.plotItem.getAxis("bottom").setTicks([ticks])
        self.gate_plot.plotItem.getAxis("bottom").setTicks([[(h + 0.5, str(h)) for h in range(gates.shape[1])]])
        for p, n in ((self.law_plot, laws.shape[0]), (self.gate_plot, gates.shape[0])):
            p.plotItem.getAxis("left").setTicks([[(i + 0.5, str(i)) for i in range(n)]])
            p.plotItem.autoRange(padding=0)
        top = [int(np.argmax(laws[:, k])) for k in range(laws.shape[1])]
        self.note.setText(f"{Path(model_dir).parent.name}: {laws.shape[0]} layers. The layer each law leans on most: "
                          + ", ".join(f"L{k} {t.split(maxsplit=2)[-1]} → layer {i}"
                                      for k, (t, i) in enumerate(zip(self.law_titles, top, strict=False)))
                          + f"; largest gate {gates.max():.2f}.")
        return True

    def _show_plots(self, shown: bool) -> None:
        for w in (self.law_plot, self.gate_plot, self.law_title, self.gate_title):
            w.setVisible(shown)

    def _annotate(self, plot: pg.PlotWidget, values: np.ndarray) -> None:
        """Each cell's value written on it (few cells: a dozen layers at most on the Runs page)."""
        if values.size > 400:
            return
        hi = float(values.max()) or 1.0
        for (i, j), v in np.ndenumerate(values):
            t = pg.TextItem(f"{v:.2f}", color="w" if v < 0.6 * hi else "k", anchor=(0.5, 0.5))
            t.setPos(j + 0.5, i + 0.5)
            plot.addItem(t)
            self.labels.append((plot, t))
