"""The Runs page: every training run in the data folder, its status and final losses.

Select a run to see its curves; open its folder in the file manager; compare it on the Train
page; resume it if it was interrupted; delete it (after a confirmation). Select several runs
(Ctrl/Shift+click) to compare them side by side: the settings that differ and the final metrics
in one table, the loss curves overlaid.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..error_dialog import show_error
from ..runs import RunInfo, delete_run, list_runs, load_curves
from ..widgets.layer_law_heatmap import LayerLawHeatmap
from ..widgets.live_plot import LivePlot
from ..widgets.train_method import method_text
from ..widgets.train_parts import ETHICS_COLOR, LAW_COLORS, LM_COLOR, VAL_COLOR

STATUS_COLORS = {"finished": "#2e7d32", "running": "#1565c0", "interrupted": "#ef6c00",
                 "cancelled": "#ef6c00", "failed": "#c62828", "new": "#777777"}


#: One colour per compared run (cycled).
COMPARE_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
#: Settings never worth a row in the comparison (paths that always differ).
COMPARE_SKIP = {"run_dir", "resume"}


def _fmt_loss(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "–"


def _fmt_setting(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        import json

        return json.dumps(v, sort_keys=True)
    return str(v)


def compare_rows(runs: list[RunInfo], val_last: list[dict]) -> list[tuple[str, list[str]]]:
    """(label, one value per run) rows: the final metrics, then every setting whose values differ."""
    rows: list[tuple[str, list[str]]] = [
        ("Status", [r.status for r in runs]),
        ("Steps", [f"{r.steps_done}" + (f" / {r.total_steps}" if r.total_steps else "") for r in runs]),
        ("Final LM loss", [_fmt_loss(r.final_lm_loss) for r in runs]),
        ("Final ethics loss", [_fmt_loss(r.final_ethics_loss) for r in runs]),
        ("Validation LM loss", [_fmt_loss(v.get("lm_loss")) for v in val_last]),
        ("Validation ethics loss", [_fmt_loss(v.get("ethics_loss")) for v in val_last]),
    ]
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.config if k not in keys and k not in COMPARE_SKIP]
    for k in keys:
        values = [_fmt_setting(r.config.get(k)) for r in runs]
        if len(set(values)) > 1:
            label = "data" if k == "data" else k.replace("_", " ")
            if k == "data":
                values = [Path(v).name if v != "–" else v for v in values]
            rows.append((label, values))
    return rows


class RunsPage(QWidget):
    """A table of runs with their curves below."""

    COLUMNS = ["Run", "Status", "Base", "Steps", "LM loss", "Ethics loss", "Modified"]
    #: Emitted with a run folder when the user asks to chat with its final model.
    open_in_chat = Signal(str)

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.runs: list[RunInfo] = []
        self.law_titles = [law.title for law in ctx.constitution]

        top = self._build_list()
        single = self._build_single()
        compare = self._build_compare()
        self.bottom = QStackedWidget()
        self.bottom.addWidget(single)
        self.bottom.addWidget(compare)

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(self.bottom)
        split.setSizes([330, 420])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

        ctx.worker.busy_changed.connect(lambda _b: self._update_buttons())
        ctx.worker.finished.connect(lambda _ev: self.refresh() if self.isVisible() else None)
        self.refresh()

    def _build_list(self) -> QWidget:
        """The runs table with its buttons above it."""
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setObjectName("runsTable")
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        # several runs (Ctrl/Shift+click) are compared side by side
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setToolTip("Select several runs (Ctrl+click, Shift+click) to compare them side by side.")
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for c in range(1, len(self.COLUMNS)):
            hh.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.table.itemDoubleClicked.connect(lambda _item: self.load_selected_curves())

        self.refresh_button = QPushButton("Refresh")
        self.open_button = QPushButton("Open folder")
        self.open_button.setToolTip("Show the run folder (config, metrics.jsonl, checkpoints, final model).")
        self.compare_button = QPushButton("Compare on Train page")
        self.compare_button.setToolTip("Draw this run's curves under the live ones on the Train page.")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue an interrupted run from its last checkpoint.")
        self.chat_button = QPushButton("Chat with it")
        self.chat_button.setToolTip("Open the run's final model on the Chat page.")
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setToolTip("Delete the run folder and everything in it (asks first).")
        self.refresh_button.clicked.connect(self.refresh)
        self.open_button.clicked.connect(self.open_folder)
        self.compare_button.clicked.connect(self.compare_selected)
        self.resume_button.clicked.connect(self.resume_selected)
        self.chat_button.clicked.connect(self.chat_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        bar = QHBoxLayout()
        for b in (self.refresh_button, self.open_button, self.compare_button, self.resume_button,
                  self.chat_button):
            bar.addWidget(b)
        bar.addStretch(1)
        bar.addWidget(self.delete_button)

        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addLayout(bar)
        tl.addWidget(self.table, 1)
        return top

    def _build_single(self) -> QWidget:
        """One run: its details and its two loss plots."""
        self.detail = QLabel("Select a run to see its curves.")
        self.detail.setWordWrap(True)
        self.detail.setObjectName("runDetail")
        self.lm_plot = LivePlot("Language-modeling loss", "loss")
        self.lm_plot.add_curve("lm", "train", LM_COLOR)
        self.lm_plot.add_points("lm_val", "validation", VAL_COLOR)
        self.ethics_plot = LivePlot("Ethics loss", "loss", legend_columns=2)
        self.ethics_plot.add_curve("ethics", "total", ETHICS_COLOR, width=2)
        # the laws as L0..L4, as in the heatmap beside it (and named in the line above it): this
        # plot is a third of the page, too narrow for "Law 3 Self-Preservation" in its legend
        for k in range(len(self.law_titles)):
            self.ethics_plot.add_curve(f"law{k}", f"L{k}", LAW_COLORS[k % len(LAW_COLORS)])
        # the validation dots are named in the language-modeling plot's legend beside it
        self.ethics_plot.add_points("ethics_val", "validation", VAL_COLOR, in_legend=False)
        # not x-linked: a linked view turns auto-range off, and with clip-to-view the curves then
        # stay clipped to the old range
        for p in (self.lm_plot, self.ethics_plot):
            p.set_smoothing(0.6)
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.lm_plot)
        plots.addWidget(self.ethics_plot)
        self.layer_map = LayerLawHeatmap(self.law_titles)  # issue 18: the learned layer x law weights, gates
        plots.addWidget(self.layer_map)
        for i, share in enumerate((1, 1, 2)):  # the two heatmaps side by side get half the width
            plots.setStretchFactor(i, share)
        plots.setSizes([250, 250, 500])

        single = QWidget()
        bl = QVBoxLayout(single)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(self.detail)
        bl.addWidget(plots, 1)

        return single

    def _build_compare(self) -> QWidget:
        """Several runs: the settings that differ and the final metrics, and the curves overlaid."""
        # several runs: settings that differ + final metrics, and the curves overlaid
        self.compare_table = QTableWidget(0, 0)
        self.compare_table.setObjectName("compareTable")
        self.compare_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.compare_table.setAlternatingRowColors(True)
        self.compare_table.setWordWrap(False)
        # columns as wide as their values; a long run name in the header elides in the middle
        self.compare_table.horizontalHeader().setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.compare_table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.cmp_lm_plot = LivePlot("Language-modeling loss", "loss")
        self.cmp_ethics_plot = LivePlot("Ethics loss", "loss")
        for p in (self.cmp_lm_plot, self.cmp_ethics_plot):
            p.set_smoothing(0.6)
        cmp_plots = QSplitter(Qt.Orientation.Vertical)
        cmp_plots.addWidget(self.cmp_lm_plot)
        cmp_plots.addWidget(self.cmp_ethics_plot)
        compare = QSplitter(Qt.Orientation.Horizontal)
        compare.setObjectName("compareView")
        compare.addWidget(self.compare_table)
        compare.addWidget(cmp_plots)
        compare.setSizes([380, 520])
        self.compare_view = compare
        return compare

    # ================================================================ listing

    def _active_run(self) -> Path | None:
        train = self.ctx.pages.get("train")
        if train is not None and self.ctx.worker.is_busy() and getattr(train, "_job_kind", "") == "train":
            return train.run_dir
        return None

    def refresh(self) -> None:
        selected_paths = [r.path for r in self.selected_runs()]
        selected = self.selected_run()
        self.runs = list_runs(self.ctx.runs_dir, active=self._active_run())
        self.table.setRowCount(len(self.runs))
        for row, r in enumerate(self.runs):
            steps = f"{r.steps_done}" + (f" / {r.total_steps}" if r.total_steps else "")
            cells = [r.name, r.status, r.base or "–", steps, _fmt_loss(r.final_lm_loss),
                     _fmt_loss(r.final_ethics_loss), time.strftime("%Y-%m-%d %H:%M", time.localtime(r.modified))]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 0:
                    item.setToolTip(str(r.path))
                if col == 1:
                    item.setForeground(QColor(STATUS_COLORS.get(r.status, "#333")))
                if col in (3, 4, 5):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, item)
        if len(selected_paths) > 1:  # a comparison stays selected
            self.select_runs([r.name for r in self.runs if r.path in selected_paths])
        elif selected is not None:
            self.select_runs([r.name for r in self.runs if r.path == selected.path])
        elif self.runs:
            self.select_runs([self.runs[0].name])
        self._update_buttons()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.refresh()

    def selected_runs(self) -> list[RunInfo]:
        """The selected runs, in table order."""
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        return [self.runs[r] for r in rows if 0 <= r < len(self.runs)]

    def selected_run(self) -> RunInfo | None:
        """The one selected run (None when none, or when several are selected for comparison)."""
        runs = self.selected_runs()
        return runs[0] if len(runs) == 1 else None

    def select_runs(self, names: list[str]) -> int:
        """Select the runs named ``names`` (for comparison); returns how many were found."""
        from PySide6.QtCore import QItemSelection, QItemSelectionModel

        sel = QItemSelection()
        found = 0
        for row, r in enumerate(self.runs):
            if r.name in names:
                sel.select(self.table.model().index(row, 0),
                           self.table.model().index(row, self.table.columnCount() - 1))
                found += 1
        self.table.selectionModel().select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        return found

    def select_run(self, name: str) -> bool:
        """Select only the run named ``name``."""
        return self.select_runs([name]) == 1

    def _update_buttons(self) -> None:
        r = self.selected_run()
        busy = self.ctx.worker.is_busy()
        running = r is not None and r.status == "running"
        for b in (self.open_button, self.compare_button):
            b.setEnabled(r is not None)
        self.resume_button.setEnabled(r is not None and r.can_resume and not busy)
        self.chat_button.setEnabled(r is not None and r.final_dir.is_dir())
        self.delete_button.setEnabled(r is not None and not running)

    def _on_selection(self) -> None:
        self._update_buttons()
        runs = self.selected_runs()
        if len(runs) > 1:
            self.show_comparison(runs)
        else:
            self.bottom.setCurrentIndex(0)
            self.load_selected_curves()

    def show_comparison(self, runs: list[RunInfo]) -> int:
        """Side by side: a settings-diff + final-metrics table and the curves of ``runs`` overlaid.
        Returns the number of curves drawn."""
        self.bottom.setCurrentIndex(1)
        curves = [load_curves(r.path) for r in runs]
        val_last = [val[-1] if val else {} for _train, val in curves]
        rows = compare_rows(runs, val_last)
        t = self.compare_table
        t.clear()
        t.setColumnCount(len(runs))
        t.setRowCount(len(rows))
        t.setHorizontalHeaderLabels([r.name for r in runs])
        t.setVerticalHeaderLabels([label for label, _v in rows])
        for c, r in enumerate(runs):
            head = t.horizontalHeaderItem(c)
            head.setForeground(QColor(COMPARE_COLORS[c % len(COMPARE_COLORS)]))
            head.setToolTip(str(r.path))
        for i, (_label, values) in enumerate(rows):
            differs = len(set(values)) > 1
            for c, v in enumerate(values):
                item = QTableWidgetItem(v)
                item.setToolTip(v)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if differs and i < 6:
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                t.setItem(i, c, item)
        fm = t.fontMetrics()
        for c in range(t.columnCount()):
            widest = max((fm.horizontalAdvance(t.item(i, c).text()) for i in range(t.rowCount())), default=0)
            head = min(fm.horizontalAdvance(t.horizontalHeaderItem(c).text()), 12 * fm.averageCharWidth())
            t.horizontalHeader().setSectionResizeMode(c, QHeaderView.ResizeMode.Fixed)
            t.setColumnWidth(c, max(widest, head) + 16)
        drawn = 0
        for p in (self.cmp_lm_plot, self.cmp_ethics_plot):
            for k in list(p.series):
                p.remove(k)
        for c, (r, (train, _val)) in enumerate(zip(runs, curves, strict=True)):
            color = COMPARE_COLORS[c % len(COMPARE_COLORS)]
            for plot, key in ((self.cmp_lm_plot, "lm_loss"), (self.cmp_ethics_plot, "ethics_loss")):
                pts = [(m["step"], m[key]) for m in train if "step" in m and m.get(key) is not None]
                plot.add_curve(f"run{c}", r.name, color, width=1.5)
                plot.extend(f"run{c}", [x for x, _ in pts], [y for _, y in pts])
                drawn += 1
        for p in (self.cmp_lm_plot, self.cmp_ethics_plot):
            p.set_smoothing(p.smoothing)
            p.redraw()
            p.plotItem.enableAutoRange()
        return drawn

    # ================================================================ actions

    def load_selected_curves(self) -> int:
        """Draw the selected run's curves; returns the number of training points."""
        r = self.selected_run()
        self.layer_map.show_model(r.path / "final" if r is not None else None)
        for p in (self.lm_plot, self.ethics_plot):
            p.clear_data()
        if r is None:
            self.detail.setText("Select a run to see its curves.")
            return 0
        train, val = load_curves(r.path)
        steps = [m["step"] for m in train if "step" in m]

        def col(key):
            return [m.get(key, float("nan")) if m.get(key) is not None else float("nan") for m in train if "step" in m]

        self.lm_plot.extend("lm", steps, col("lm_loss"))
        self.ethics_plot.extend("ethics", steps, col("ethics_loss"))
        for k in range(len(self.law_titles)):
            self.ethics_plot.extend(f"law{k}", steps, col(f"law_loss_{k}"))
        vs = [m["step"] for m in val if "step" in m]
        self.lm_plot.extend("lm_val", vs, [m.get("lm_loss", float("nan")) for m in val if "step" in m])
        self.ethics_plot.extend("ethics_val", vs, [m.get("ethics_loss", float("nan")) for m in val if "step" in m])
        for p in (self.lm_plot, self.ethics_plot):
            p.set_smoothing(p.smoothing)
            p.redraw()
            p.plotItem.enableAutoRange()
        cfg = r.config
        bits = [f"<b>{r.name}</b> — {r.status}", f"base {r.base or '?'}", f"data {Path(r.data).name or '?'}"]
        bits.insert(1, method_text(cfg))  # constitutional SFT, or DPO/ORPO/SimPO with beta (issue 17)
        for key in ("batch_size", "learning_rate", "ethics_weight", "max_steps"):
            if cfg.get(key) is not None:
                bits.append(f"{key.replace('_', ' ')} {cfg[key]}")
        if r.last_checkpoint is not None:
            bits.append(f"last checkpoint {r.last_checkpoint.name}")
        self.detail.setText(" · ".join(bits))
        return len(steps)

    def open_folder(self) -> None:
        r = self.selected_run()
        if r is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(r.path)))

    def compare_selected(self) -> None:
        r = self.selected_run()
        train = self.ctx.pages.get("train")
        if r is None or train is None:
            return
        train.refresh_lists()
        train.set_overlay(r.path)
        self._go_to("train")

    def resume_selected(self) -> None:
        r = self.selected_run()
        train = self.ctx.pages.get("train")
        if r is None or train is None or not r.can_resume:
            return
        self._go_to("train")
        train.resume_run(r)

    def chat_selected(self) -> None:
        r = self.selected_run()
        if r is None or not r.final_dir.is_dir():
            return
        self.open_in_chat.emit(str(r.final_dir))
        chat = self.ctx.pages.get("chat")
        for name in ("open_model", "load_model", "set_model"):
            if chat is not None and hasattr(chat, name):
                getattr(chat, name)(str(r.final_dir))
                break
        self._go_to("chat")

    def _go_to(self, key: str) -> None:
        win = self.window()
        if hasattr(win, "show_page"):
            win.show_page(key)

    def confirm_delete(self, run: RunInfo) -> bool:
        """Ask before deleting (separate so tests can answer it)."""
        answer = QMessageBox.question(
            self, "Delete run",
            f"Delete the run '{run.name}' and everything in its folder?\n\n{run.path}\n\nThis cannot be undone.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def delete_selected(self) -> bool:
        r = self.selected_run()
        if r is None or r.status == "running":
            return False
        if not self.confirm_delete(r):
            return False
        try:
            delete_run(r, self.ctx.runs_dir)
        except (OSError, ValueError) as e:
            show_error(self, "Could not delete the run", str(e))
            return False
        self.refresh()
        return True
