"""The Evaluate page's results: a summary line, the metrics table (one column per model), "Save
report…", and three charts: flagged-or-stopped rate by kind of prompt, AUROC per law, and the
threshold sweep (harmful vs benign flag rate).
"""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QGridLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

#: Colours of model A and model B in every chart.
MODEL_COLORS = ["#2f6fb0", "#e08a3a"]


def pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f} %"


def num(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{float(v):.{digits}f}"


def metric_rows(metrics: dict, constitution: Any) -> list[tuple[str, str, str]]:
    """(label, formatted value, tooltip) rows of the results table for one model's metrics."""
    h, b = metrics.get("harmful", {}), metrics.get("benign", {})
    rows = [
        ("Harmful prompts flagged", pct(h.get("flagged_rate")), "prompt assessment has a law under its threshold"),
        ("Harmful replies stopped", pct(h.get("stopped_rate")), "the reply was stopped by a law"),
        ("Harmful flagged or stopped", pct(h.get("flagged_or_stopped_rate")), "higher is better"),
        ("Benign prompts flagged", pct(b.get("flagged_rate")), "over-refusal at the prompt"),
        ("Benign replies stopped", pct(b.get("stopped_rate")), "over-refusal while writing"),
        ("Over-refusal", pct(metrics.get("over_refusal_rate")), "benign prompts flagged or stopped; lower is better"),
        ("Right law first", pct(metrics.get("right_law_first")),
         f"of {metrics.get('right_law_first_n', 0)} flagged harmful prompts, the first law named is one of the record's"),
        ("Right law stop", pct(metrics.get("right_law_stop")),
         f"of {metrics.get('right_law_stop_n', 0)} stopped harmful replies, the stopping law is one of the record's"),
    ]
    r = metrics.get("replies") or {}
    if r:  # the model's own replies (kala_engine.evaluate.refusal: a string match in the style of XSTest's)
        rows += [
            ("Model refused: harmful", pct(r.get("harmful_refused_rate")), "harmful prompts the model itself refused"),
            ("Model refused: benign", pct(r.get("benign_refused_rate")),
             "benign prompts the model itself refused: its own over-refusal, apart from the monitor's"),
            ("Refusals cut short", pct(r.get("refusals_cut_short_rate")),
             f"{r.get('refusals_cut_short', 0)} of {r.get('refusals', 0)} refusals stopped by the ethics stop; ~0 is right"),
            ("Harmful misses", pct(r.get("harmful_missed_rate")), "harmful prompts neither refused nor stopped"),
        ]
    for a in metrics.get("auroc", []):
        law = constitution[int(a["law"])]
        rows.append((f"AUROC {law.title}", num(a.get("auroc")),
                     f"{a.get('positives', 0)} positives, {a.get('negatives', 0)} negatives; 0.5 = chance"))
    if metrics.get("perplexity") is not None:
        rows.append(("Perplexity (benign replies)", num(metrics["perplexity"], 2), "lower is better"))
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


class EvalResults(QSplitter):
    """Table and summary on the left, charts on the right; :meth:`show_models` draws them all."""

    def __init__(self, constitution: Any) -> None:
        super().__init__(Qt.Orientation.Horizontal)
        self.constitution = constitution
        #: flagged-or-stopped rate of the first model by kind of prompt (for tests and scripts)
        self.kind_values: dict[str, float | None] = {}
        self.addWidget(self._build_table_side())
        self.addWidget(self._build_charts())
        self.setSizes([420, 760])

    def _build_table_side(self) -> QWidget:
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
        ll.addWidget(self.save_button)
        return left

    def _build_charts(self) -> QWidget:
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
        return charts

    def show_models(self, models: list[dict], threshold: float | None) -> None:
        """Table and charts of ``models`` ({"model": name, "metrics": compute_metrics(...)}, ...);
        ``threshold``: the one value used for every law (a line on the sweep), None = calibrated."""
        self._fill_table(models)
        self._draw_kinds(models)
        self._draw_auroc(models)
        self._draw_sweep(models, threshold)

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

    def _draw_sweep(self, models: list[dict], th: float | None) -> None:
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
        if th is not None:  # one value for every law: it is a point on this axis
            p.addItem(pg.InfiniteLine(pos=th, angle=90, pen=pg.mkPen("#1f2933", width=1, style=Qt.PenStyle.DotLine)))
        p.setXRange(0, 1, padding=0.02)
        p.setYRange(0, 1, padding=0.04)


__all__ = ["MODEL_COLORS", "EvalResults", "metric_rows", "num", "pct"]
