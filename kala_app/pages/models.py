"""The Models page: every Pythia size, whether it is cached, whether it fits this device; downloads.

A table of the engine's catalogue (``engine_api.list_models``: parameters, download size, cached
commit or kept partial bytes, the doctor's plan and memory estimate for this device) with
Download / Cancel / Resume / Delete from cache. A download runs as an engine job in the worker
(``engine_api.download_base_job``); its ``DownloadProgress`` events drive the row's progress bar
with bytes, rate and ETA. Cancel keeps what arrived, so Resume (the same download again) continues
with a Range request. Nothing here touches the network except a download the user started.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import engine_api
from ..error_dialog import show_error

FIT_COLOR = QColor("#2e7d32")
NO_FIT_COLOR = QColor("#c62828")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def human_eta(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s" if s >= 60 \
        else f"{s} s"


class ModelsPage(QWidget):
    """The catalogue as a table; one download at a time through the engine worker."""

    COLUMNS = ["Model", "Parameters", "Download", "In cache", "This device", "Progress"]
    #: the page shows its jobs' failures itself (in its status line)
    handles_job_errors = True

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.rows: list[dict] = []
        self._downloading: str | None = None  # model name of this page's running download
        self._bars: dict[str, QProgressBar] = {}
        self._refresh_pending = False

        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setObjectName("modelsTable")
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        for i in range(len(self.COLUMNS) - 1):
            header.setSectionResizeMode(i, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(self.COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)

        self.download_button = QPushButton("Download")
        self.download_button.setObjectName("downloadButton")
        self.download_button.setToolTip("Download the selected model into the Hugging Face cache (resumable).")
        self.download_button.clicked.connect(self.download_selected)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelDownloadButton")
        self.cancel_button.setToolTip("Stop the download; what arrived is kept and Resume continues it.")
        self.cancel_button.clicked.connect(self.cancel_download)
        self.delete_button = QPushButton("Delete from cache")
        self.delete_button.setObjectName("deleteModelButton")
        self.delete_button.clicked.connect(lambda: self.delete_selected())
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)

        self.status = QLabel("")
        self.status.setObjectName("modelsStatus")
        self.status.setWordWrap(True)
        self.cache_label = QLabel("")
        self.cache_label.setObjectName("cacheLabel")
        self.cache_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        buttons = QHBoxLayout()
        for b in (self.download_button, self.cancel_button, self.delete_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.refresh_button)
        lay = QVBoxLayout(self)
        title = QLabel("<b>Base models</b> — Pythia sizes (GPT-NeoX) in the Hugging Face cache. Cached models "
                       "train offline; a download is resumable.")
        title.setWordWrap(True)
        lay.addWidget(title)
        lay.addWidget(self.table, 1)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        lay.addWidget(self.cache_label)

        w = ctx.worker
        w.event.connect(self._on_event)
        w.finished.connect(self._on_finished)
        w.failed.connect(self._on_failed)
        w.busy_changed.connect(lambda _b: self._update_buttons())
        self._listed = False  # the catalogue is read when the page is first shown (never at start-up)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._listed:
            self._listed = True
            self.refresh()

    # ------------------------------------------------------------------ the table

    def refresh(self) -> None:
        """Re-read the catalogue (cache state and the doctor's plan) on the worker thread."""
        if self.ctx.worker.is_busy():
            self._refresh_pending = True
            self.status.setText(self.status.text() or "The list refreshes when the running job ends.")
            return
        self._refresh_pending = False
        self.ctx.worker.start(lambda emit, control: engine_api.list_models(), "list models", owner=self)

    def set_rows(self, rows: list[dict]) -> None:
        keep = self.selected_name()
        self.rows = list(rows)
        self._bars.clear()
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            cached = f"yes ({(r.get('commit') or '')[:8]})" if r["cached"] else (
                f"partial: {human_bytes(r['partial_bytes'])}" if r.get("partial_bytes") else "no")
            plan = (f"fits: {r['mode']}, {r['precision']}, ~{human_bytes(r['estimate_bytes'])}" if r["fits"]
                    else f"does not fit (~{human_bytes(r['estimate_bytes'])} of {human_bytes(r['available_bytes'])})")
            cells = [r["name"], f"{r['params'] / 1e6:,.0f} M", human_bytes(r["download_bytes"]), cached, plan]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j == 4:
                    item.setForeground(FIT_COLOR if r["fits"] else NO_FIT_COLOR)
                    item.setToolTip(r.get("reason") or "")
                if j == 3 and r.get("path"):
                    item.setToolTip(r["path"])
                self.table.setItem(i, j, item)
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setValue(1000 if r["cached"] else 0)
            bar.setFormat("in cache" if r["cached"] else ("Resume to continue" if r.get("partial_bytes") else ""))
            self._bars[r["name"]] = bar
            self.table.setCellWidget(i, 5, bar)
        if keep:
            self.select(keep)
        self._update_buttons()

    def select(self, name: str) -> None:
        for i, r in enumerate(self.rows):
            if r["name"] == name:
                self.table.selectRow(i)
                return

    def selected_name(self) -> str | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.rows[rows[0].row()]["name"] if rows and rows[0].row() < len(self.rows) else None

    def _row(self, name: str | None) -> dict | None:
        return next((r for r in self.rows if r["name"] == name), None)

    def _update_buttons(self) -> None:
        r = self._row(self.selected_name())
        busy = self.ctx.worker.is_busy()
        self.download_button.setEnabled(bool(r) and not busy and not r["cached"])
        self.download_button.setText("Resume" if r and r.get("partial_bytes") and not r["cached"] else "Download")
        self.cancel_button.setEnabled(self._downloading is not None)
        self.delete_button.setEnabled(bool(r) and not busy and (r["cached"] or bool(r.get("partial_bytes"))))

    # ------------------------------------------------------------------ actions

    def download_selected(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        if self.ctx.worker.is_busy():
            self.status.setText(f"'{self.ctx.worker.job_name}' is running; download when it ends.")
            return
        self._downloading = name
        bar = self._bars.get(name)
        if bar is not None:
            bar.setFormat("starting…")
        self.status.setText(f"Downloading {name}…")
        self.ctx.worker.start(engine_api.download_base_job(name), f"download {name}", owner=self)
        self._update_buttons()

    def cancel_download(self) -> None:
        if self._downloading is not None and self.ctx.worker.owner is self:
            self.ctx.worker.cancel()

    def delete_selected(self, confirm: bool = True) -> None:
        name = self.selected_name()
        r = self._row(name)
        if r is None or self.ctx.worker.is_busy():
            return
        if confirm:
            answer = QMessageBox.question(
                self, "Delete from cache",
                f"Remove {r['repo_id']} (every cached revision and any partial download) from the Hugging Face "
                f"cache? Runs trained from it are not affected.")
            if answer != QMessageBox.StandardButton.Yes:
                return
        try:
            freed = engine_api.delete_base(r["repo_id"])
        except (OSError, ValueError) as e:
            show_error(self, "Delete from cache", str(e))
            return
        self.status.setText(f"Removed {r['repo_id']} from the cache ({human_bytes(freed)} freed).")
        self.refresh()

    # ------------------------------------------------------------------ worker events

    def _on_event(self, ev) -> None:
        if self.ctx.worker.owner is not self or self._downloading is None:
            return
        rate = getattr(ev, "rate", None)
        if rate is None or not hasattr(ev, "total"):  # only DownloadProgress carries a rate
            return
        bar = self._bars.get(self._downloading)
        if bar is not None and ev.total:
            bar.setValue(int(1000 * ev.done / ev.total))
            bar.setFormat(f"{100 * ev.done / ev.total:.0f}%  {human_bytes(ev.done)} / {human_bytes(ev.total)}  "
                          f"{human_bytes(rate)}/s  ETA {human_eta(ev.eta)}")
        self.status.setText(f"Downloading {self._downloading}: {ev.filename}")

    def _on_failed(self, message: str, _traceback: str) -> None:
        if self.ctx.worker.owner is self:
            self.status.setText(message)

    def _on_finished(self, ev) -> None:
        mine = self.ctx.worker.owner is self
        if mine and self._downloading is None and isinstance(ev.result, list):
            self.set_rows(ev.result)  # the list job
            self.cache_label.setText("")
        elif mine and self._downloading is not None:
            name, self._downloading = self._downloading, None
            if ev.cancelled:
                self.status.setText(f"Download of {name} cancelled; what arrived is kept - Resume continues it.")
            elif ev.result:
                self.status.setText(f"{name} is in the cache: {ev.result['path']}")
        if mine or self._refresh_pending:
            from PySide6.QtCore import QTimer

            if not (mine and isinstance(ev.result, list)):
                QTimer.singleShot(0, self.refresh)  # after the worker is idle again
        self._update_buttons()
