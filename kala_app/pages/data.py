"""The Data page: generate a constitutional data set, import or validate one, and look at it.

* Generate: count, seed and the kinds to keep (``kala_engine.data.generate``).
* Import: a local copy of a well-known safety data set, converted to KALA JSONL; or open a KALA
  file as it is. Every file is validated; problems are listed by line. HH-RLHF, PKU-SafeRLHF and
  BeaverTails can also come straight from the Hugging Face hub ("Download from the hub":
  ``kala_engine.model.hub.fetch_dataset`` as a worker job with bytes, rate and ETA; the cache first, a
  cancelled download resumes), then are converted the same way.
* Preview: a model/view table that stays smooth with 100k rows (fixed row height, no
  per-row sizing, display strings computed only for the rows on screen), filterable by kind.
* Coverage: a kind × law bar chart — how many records of each kind violate each law.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .. import engine_api
from ..error_dialog import show_error
from ..widgets.train_parts import LAW_COLORS

NO_VIOLATION_COLOR = "#b0b0b0"
ALL_KINDS = "all kinds"
#: The preview filters this long after the last key press in the search box.
SEARCH_DEBOUNCE_MS = 250
_Index = QModelIndex | QPersistentModelIndex


class RecordsModel(QAbstractTableModel):
    """Records as rows. Filtering keeps a list of row indices, so 100k rows filter in milliseconds."""

    COLUMNS = ["#", "Kind", "Split", "Violates", "User", "Assistant"]

    def __init__(self, law_short: list[str]):
        super().__init__()
        self.records: list[dict] = []
        self.rows: list[int] = []
        self.law_short = law_short

    def set_records(self, records: list[dict]) -> None:
        self.beginResetModel()
        self.records = records
        self.rows = list(range(len(records)))
        self.endResetModel()

    def set_filter(self, kind: str | None, text: str = "") -> None:
        text = text.casefold().strip()
        self.beginResetModel()
        recs = self.records
        rows = range(len(recs)) if not kind else [i for i, r in enumerate(recs) if r.get("kind") == kind]
        if text:
            def match(i: int) -> bool:
                u, a = engine_api.record_text(recs[i])
                return text in u.casefold() or text in a.casefold()

            rows = [i for i in rows if match(i)]
        self.rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802 - Qt API
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.COLUMNS[section]
        return None

    def record(self, row: int) -> dict:
        return self.records[self.rows[row]]

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        if role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole, Qt.ItemDataRole.ForegroundRole):
            return None
        i = self.rows[index.row()]
        rec = self.records[i]
        col = index.column()
        if role == Qt.ItemDataRole.ForegroundRole:
            if col == 3 and self._violated(rec):
                return QColor("#b03030")
            return None
        if col == 0:
            return str(i + 1)
        if col == 1:
            return str(rec.get("kind", ""))
        if col == 2:
            return str(rec.get("split", ""))
        if col == 3:
            v = self._violated(rec)
            return ", ".join(self.law_short[k] for k in v) if v else "—"
        user, assistant = engine_api.record_text(rec)
        text = user if col == 4 else assistant
        if role == Qt.ItemDataRole.ToolTipRole:
            return text[:2000]
        return text[:300].replace("\n", " ")

    @staticmethod
    def _violated(rec: dict) -> list[int]:
        laws = engine_api.record_laws(rec)
        return [k for k, v in enumerate(laws) if v < 0.5] if laws else []


class CoverageChart(pg.GraphicsLayoutWidget):
    """Horizontal grouped bars: for each kind, how many records violate each law (and none).

    Its legend (``legend_widget``) goes beside it, so it never covers a bar.
    """

    def __init__(self, law_titles: list[str]):
        super().__init__()
        self.law_titles = law_titles
        self.setMinimumHeight(200)
        self.plotItem = self.addPlot(row=0, col=0)
        # no title: the tab says what it is (a title was cut in a narrow window)
        self.plotItem.setLabel("bottom", "records")
        self.plotItem.setMouseEnabled(x=False, y=False)
        self.plotItem.hideButtons()
        self.plotItem.getViewBox().invertY(True)
        # The legend is a column of plain labels right of the bars (pyqtgraph's legend clipped
        # its texts in a narrow window): the bars keep the whole height for the kinds.
        self.legend_widget = QWidget()
        ll = QVBoxLayout(self.legend_widget)
        ll.setContentsMargins(4, 28, 4, 4)
        ll.setSpacing(2)
        for name, color in zip([*law_titles, "no law violated"], [*LAW_COLORS, NO_VIOLATION_COLOR], strict=False):
            lab = QLabel(f"<span style='color:{color}; font-size: 12pt'>■</span> {name}")
            lab.setStyleSheet("font-size: 8pt; color: #333;")
            lab.setMinimumWidth(lab.sizeHint().width())
            ll.addWidget(lab)
        ll.addStretch(1)
        self.counts: list[list[int]] = []
        self.kinds: list[str] = []

    def set_counts(self, kinds: list[str], counts: list[list[int]]) -> None:
        self.kinds, self.counts = kinds, counts
        self.plotItem.clear()
        n_series = len(self.law_titles) + 1
        h = 0.8 / n_series
        colors = LAW_COLORS + [NO_VIOLATION_COLOR]
        for j in range(n_series):
            ys = [i - 0.4 + (j + 0.5) * h for i in range(len(kinds))]
            widths = [c[j] for c in counts]
            bars = pg.BarGraphItem(x0=[0] * len(kinds), y=ys, height=h * 0.95, width=widths,
                                   brush=colors[j % len(colors)], pen=None)
            self.plotItem.addItem(bars)
        self.plotItem.getAxis("left").setTicks([[(i, k.replace("_", " ")) for i, k in enumerate(kinds)]])
        top = max([max(c) for c in counts if c] + [1])
        self.plotItem.setXRange(0, top * 1.08, padding=0)
        self.plotItem.setYRange(-0.5, max(0.5, len(kinds) - 0.5), padding=0.02)


class DataPage(QWidget):
    """Generate / import / validate a data set; preview it; chart its coverage."""

    handles_job_errors = True
    #: A data set was generated, imported or opened without problems (its path).
    dataset_ready = Signal(str)

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.worker = ctx.worker
        self.law_titles = [law.title for law in ctx.constitution]
        law_short = [f"L{law.index} {law.name}" for law in ctx.constitution]
        self.kinds = engine_api.data_kinds()
        self.path: Path | None = None
        self.errors: list[tuple[int, str]] = []
        self._then = None
        self._job_label = ""
        self._t0 = 0.0
        self._download_text = ""  # the bar's text for the progress signal that follows a download event

        # ---------------- generate
        gen_box = QGroupBox("Generate")
        gform = QFormLayout(gen_box)
        self.count_spin = QSpinBox()
        self.count_spin.setRange(10, 1_000_000)
        self.count_spin.setSingleStep(500)
        self.count_spin.setValue(int(ctx.settings.value("data/count", 2000)))
        self.count_spin.setToolTip("How many examples to generate (split into train and validation by template family).")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(int(ctx.settings.value("data/seed", 0)))
        self.seed_spin.setToolTip("The same seed always gives the same data set.")
        gform.addRow("Examples", self.count_spin)
        gform.addRow("Seed", self.seed_spin)
        kinds_box = QWidget()
        kgrid = QGridLayout(kinds_box)
        kgrid.setContentsMargins(0, 0, 0, 0)
        self.kind_checks: dict[str, QCheckBox] = {}
        for i, k in enumerate(self.kinds):
            cb = QCheckBox(k.replace("_", " "))
            cb.setChecked(True)
            cb.setToolTip(f"Keep records of kind '{k}'.")
            self.kind_checks[k] = cb
            kgrid.addWidget(cb, i // 2, i % 2)
        gform.addRow("Kinds", kinds_box)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("automatic (in the data sets folder)")
        self.out_edit.setToolTip("File name of the generated data set; empty: a name from count and seed.")
        gform.addRow("Save as", self.out_edit)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("generateButton")
        self.generate_button.clicked.connect(lambda: self.generate())
        gform.addRow(self.generate_button)

        # ---------------- import / validate
        imp_box = QGroupBox("Import or validate")
        iform = QFormLayout(imp_box)
        self.format_combo = QComboBox()
        self.format_combo.setObjectName("formatCombo")
        for fmt in [engine_api.AUTO_FORMAT, *engine_api.import_formats()]:
            self.format_combo.addItem(engine_api.format_title(fmt), fmt)
        self.format_combo.setToolTip(
            "Auto-detect: the format the file's fields say. KALA: a KALA JSONL file as it is; HH-RLHF,\n"
            "PKU-SafeRLHF and BeaverTails are converted from a local copy (JSON lines, a JSON array or CSV).")
        iform.addRow("Format", self.format_combo)
        self.import_button = QPushButton("Open file…")
        self.import_button.setToolTip("Choose a file; it is converted if needed and validated line by line.")
        self.import_button.clicked.connect(self._choose_file)
        self.hub_datasets = self._hub_datasets()
        self.hub_button = QPushButton("Download from the hub")
        self.hub_button.setObjectName("hubDownloadButton")
        self.hub_button.clicked.connect(lambda: self.download_from_hub())
        self.format_combo.currentIndexChanged.connect(lambda _i: self._on_busy(self.worker.is_busy()))
        import_row = QHBoxLayout()
        import_row.addWidget(self.import_button)
        import_row.addWidget(self.hub_button)
        iform.addRow(import_row)

        self.summary = QLabel("No data set loaded.")
        self.summary.setWordWrap(True)
        self.summary.setObjectName("dataSummary")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("dataCancelButton")
        self.cancel_button.setToolTip("Stop this job (a download keeps what arrived; the next one resumes it).")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel_button)

        left = QWidget()
        llay = QVBoxLayout(left)
        llay.setContentsMargins(0, 0, 6, 0)
        llay.addWidget(gen_box)
        llay.addWidget(imp_box)
        llay.addLayout(progress_row)
        llay.addWidget(self.summary)
        llay.addStretch(1)
        left.setFixedWidth(370)

        # ---------------- preview
        self.model = RecordsModel(law_short)
        self.table = QTableView()
        self.table.setObjectName("previewTable")
        self.table.setModel(self.model)
        self.table.setWordWrap(False)
        self.table.setAlternatingRowColors(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        vh = self.table.verticalHeader()
        vh.setVisible(False)
        vh.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        vh.setDefaultSectionSize(22)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        hh.setStretchLastSection(True)
        for col, w in enumerate([52, 125, 70, 150, 270]):
            self.table.setColumnWidth(col, w)

        self.kind_filter = QComboBox()
        self.kind_filter.addItem(ALL_KINDS)
        self.kind_filter.addItems(self.kinds)
        self.kind_filter.currentIndexChanged.connect(self._apply_filter)
        self.search = QLineEdit()
        self.search.setPlaceholderText("filter as you type…")
        self.search.setClearButtonEnabled(True)
        self.search.setToolTip("Shows the rows whose user or assistant text contains this; filters as you type.")
        # filters as you type, once typing pauses (a 100k-row filter on every key would stutter)
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DEBOUNCE_MS)
        self._search_timer.timeout.connect(self._apply_filter)
        self.search.textChanged.connect(lambda _t: self._search_timer.start())
        self.search.returnPressed.connect(self._apply_filter)
        self.rows_label = QLabel("")
        fbar = QHBoxLayout()
        fbar.addWidget(QLabel("Show"))
        fbar.addWidget(self.kind_filter)
        fbar.addWidget(self.search, 1)
        fbar.addWidget(self.rows_label)

        self.chart = CoverageChart(self.law_titles)
        self.problems = QTableWidget(0, 2)
        self.problems.setObjectName("problemsTable")
        self.problems.setHorizontalHeaderLabels(["Line", "Problem"])
        self.problems.verticalHeader().setVisible(False)
        self.problems.horizontalHeader().setStretchLastSection(True)
        self.problems.setColumnWidth(0, 60)
        self.problems.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.problems_box = QGroupBox("Problems")
        play = QVBoxLayout(self.problems_box)
        play.addWidget(self.problems)

        # Coverage and problems as tabs: each gets the whole width (side by side, a 1024-px window
        # cut the chart's legend and the problem texts)
        bottom = QTabWidget()
        bottom.setObjectName("dataBottomTabs")
        coverage = QWidget()
        cov_lay = QHBoxLayout(coverage)
        cov_lay.setContentsMargins(0, 0, 0, 0)
        cov_lay.setSpacing(0)
        cov_lay.addWidget(self.chart, 1)
        cov_lay.addWidget(self.chart.legend_widget)
        bottom.addTab(coverage, "Coverage: records violating each law")
        bottom.addTab(self.problems_box, "Problems")
        self.bottom_tabs = bottom
        table_box = QWidget()
        tlay = QVBoxLayout(table_box)
        tlay.setContentsMargins(0, 0, 0, 0)
        tlay.addLayout(fbar)
        tlay.addWidget(self.table, 1)
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(table_box)
        right.addWidget(bottom)
        right.setSizes([420, 300])

        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(left)
        lay.addWidget(right, 1)

        w = self.worker
        w.progress.connect(self._on_progress)
        w.event.connect(self._on_download_event)
        w.failed.connect(self._on_failed)
        w.finished.connect(self._on_finished)
        w.busy_changed.connect(self._on_busy)
        self._on_busy(w.is_busy())

    # ================================================================ actions

    def selected_kinds(self) -> list[str] | None:
        """The checked kinds, or None when all are checked."""
        chosen = [k for k, cb in self.kind_checks.items() if cb.isChecked()]
        return None if len(chosen) == len(self.kind_checks) else chosen

    def generate(self, count: int | None = None, seed: int | None = None, then=None) -> bool:
        """Generate a data set on the worker; ``then(path)`` runs once it loaded without problems."""
        if self.worker.is_busy():
            return False
        if count is not None:
            self.count_spin.setValue(int(count))
        if seed is not None:
            self.seed_spin.setValue(int(seed))
        count, seed = self.count_spin.value(), self.seed_spin.value()
        kinds = self.selected_kinds()
        if kinds == []:
            show_error(self, "No kinds chosen", "Tick at least one kind of example to generate.")
            return False
        name = self.out_edit.text().strip() or f"kala-{count}-seed{seed}" + ("" if kinds is None else f"-{len(kinds)}kinds")
        if not name.endswith(".jsonl"):
            name += ".jsonl"
        out = Path(name) if Path(name).is_absolute() else self.ctx.datasets_dir / name
        self.ctx.settings.setValue("data/count", count)
        self.ctx.settings.setValue("data/seed", seed)
        self._then = then
        self._start(engine_api.generate_job(out, count, seed, kinds), f"generating {count} examples")
        return True

    def open_file(self, path: str | Path, fmt: str = "kala") -> bool:
        """Validate (and, for a foreign format, first convert) ``path`` on the worker.

        ``fmt`` "auto" detects the format. A file that is not what was chosen, or cannot be read,
        fails with one message naming what it looks like; the data set shown before stays.
        """
        if self.worker.is_busy():
            return False
        path = Path(path)

        def out(found: str) -> Path:
            return self.ctx.datasets_dir / f"{path.stem}-{found}.jsonl"

        self._start(engine_api.import_job(path, fmt, out), f"reading {path.name}")
        return True

    @staticmethod
    def _hub_datasets() -> dict[str, str]:
        try:
            return engine_api.hub_datasets()
        except Exception:  # noqa: BLE001 - an engine without the hub: the button stays off
            return {}

    def download_from_hub(self, fmt: str | None = None) -> bool:
        """Fetch the public data set of the chosen format (HH-RLHF, PKU-SafeRLHF, BeaverTails) from the
        hub on the worker - the cached copy when there is one - and import it as :meth:`open_file` does."""
        fmt = fmt or self.chosen_format()
        repo = self.hub_datasets.get(fmt)
        if repo is None or self.worker.is_busy():
            return False
        self._start(engine_api.hub_import_job(fmt, self.ctx.datasets_dir), f"downloading {repo}")
        return True

    def cancel(self) -> None:
        if self._mine():
            self.worker.cancel()
            self.progress.setFormat("cancelling…")

    def chosen_format(self) -> str:
        return str(self.format_combo.currentData() or engine_api.AUTO_FORMAT)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a data set", str(self.ctx.datasets_dir),
                                              "Data sets (*.jsonl *.json *.csv);;All files (*)")
        if path:
            self.open_file(path, self.chosen_format())

    def _start(self, job, label: str) -> None:
        self._job_label = label
        self._t0 = time.monotonic()
        self.progress.setRange(0, 0)  # busy until the job reports a total
        self.progress.setFormat(label + "…")
        self.worker.start(job, label, owner=self)

    # ================================================================ worker events

    def _mine(self) -> bool:
        return self.worker.owner is self

    def _on_busy(self, busy: bool) -> None:
        self.generate_button.setEnabled(not busy)
        self.import_button.setEnabled(not busy)
        repo = self.hub_datasets.get(self.chosen_format())
        self.hub_button.setEnabled(not busy and repo is not None)
        self.hub_button.setToolTip(
            f"'{self.worker.job_name or 'another job'}' is running: one job at a time; download when it ends."
            if busy and repo and not self._mine() else
            f"Download {repo} from the Hugging Face hub (or take it from the cache), convert it to KALA JSONL "
            f"and load it. A cancelled download resumes." if repo else
            "Choose HH-RLHF, PKU-SafeRLHF or BeaverTails under Format to download it from the hub.")
        self.cancel_button.setVisible(busy and self._mine())

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if not self._mine():
            return
        if total > 0:  # in thousandths: a download's byte count passes a Qt int's 2**31
            self.progress.setRange(0, 1000)
            self.progress.setValue(min(1000, done * 1000 // total))
        text, self._download_text = self._download_text, ""
        self.progress.setFormat(text or message or self._job_label)

    def _on_download_event(self, ev) -> None:
        """A download's bar says bytes, rate and ETA (after _on_progress set its value)."""
        if self._mine() and getattr(ev, "rate", None) is not None and getattr(ev, "total", 0):
            from .models import progress_text

            self._download_text = progress_text(ev.done, ev.total, ev.rate, ev.eta)  # the progress signal follows

    def _on_failed(self, message: str, traceback: str) -> None:
        if not self._mine():
            return
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("failed; the data set below is kept" if self.path is not None else "failed")
        show_error(self, "Could not read the data", message, traceback)

    def _on_finished(self, ev) -> None:
        if not self._mine():
            return
        then, self._then = self._then, None
        data = ev.result
        if ev.cancelled or not isinstance(data, engine_api.LoadedData):
            if ev.cancelled:  # (a failure keeps the "failed" text _on_failed wrote)
                self.progress.setRange(0, 1)
                self.progress.setValue(0)
                self.progress.setFormat("cancelled")
            return
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat(f"done in {time.monotonic() - self._t0:.1f} s")
        self.show_data(data)
        if data.errors:
            lines = "\n".join(f"line {ln}: {msg}" for ln, msg in data.errors[:500])
            more = f"\n… and {len(data.errors) - 500} more" if len(data.errors) > 500 else ""
            first_ln, first_msg = data.errors[0]
            show_error(self, "The data set has problems",
                       f"{data.path.name}: {len(data.errors)} problem(s); the first is on line {first_ln}: "
                       f"{first_msg}\n\nEvery problem is listed by line under Problems. Fix them (or "
                       f"regenerate the file) before training on it.",
                       lines + more)
            return
        self.ctx.settings.setValue("data/current", str(data.path))
        train = self.ctx.pages.get("train")
        if train is not None and hasattr(train, "set_data_path"):
            train.set_data_path(data.path)
        self.dataset_ready.emit(str(data.path))
        if then is not None:
            then(data.path)

    # ================================================================ display

    def show_data(self, data: engine_api.LoadedData) -> None:
        self.path = data.path
        self.errors = list(data.errors)
        self.model.set_records(data.records)
        self.kind_filter.setCurrentIndex(0)
        self.search.clear()
        self._update_rows_label()
        kinds = list(self.kinds) or sorted({engine_api.record_kind(r) for r in data.records})
        present = [k for k in kinds if any(engine_api.record_kind(r) == k for r in data.records)] or kinds
        self.chart.set_counts(present, engine_api.coverage(data.records, present))
        self.problems.setRowCount(0)
        shown = self.errors[:5000]
        self.problems.setRowCount(len(shown))
        for row, (ln, msg) in enumerate(shown):
            a = QTableWidgetItem(str(ln))
            a.setData(Qt.ItemDataRole.UserRole, ln)
            self.problems.setItem(row, 0, a)
            item = QTableWidgetItem(msg)
            item.setToolTip(msg)
            self.problems.setItem(row, 1, item)
        self.problems_box.setTitle(f"Problems ({len(self.errors)})" if self.errors else "Problems (none)")
        self.bottom_tabs.setTabText(1, f"Problems ({len(self.errors)})" if self.errors else "Problems (none)")
        if self.errors:
            self.bottom_tabs.setCurrentIndex(1)
        n_val = sum(1 for r in data.records if r.get("split") == "validation")
        self.summary.setText(
            f"<b>{data.path.name}</b><br>{len(data.records):,} valid records "
            f"({len(data.records) - n_val:,} train, {n_val:,} validation), "
            f"{len(present)} kinds, <span style='color:{'#b03030' if self.errors else '#3a9d3a'}'>"
            f"{len(self.errors)} problem(s)</span>")

    def _apply_filter(self) -> None:
        self._search_timer.stop()
        kind = self.kind_filter.currentText()
        self.model.set_filter(None if kind == ALL_KINDS else kind, self.search.text())
        self._update_rows_label()

    def _update_rows_label(self) -> None:
        self.rows_label.setText(f"{self.model.rowCount():,} of {len(self.model.records):,} rows")

    def save_settings(self) -> None:
        self.ctx.settings.setValue("data/count", self.count_spin.value())
        self.ctx.settings.setValue("data/seed", self.seed_spin.value())
