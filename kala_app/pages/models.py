"""The Models page: every Pythia size, whether it is cached, whether it fits this device; downloads.

A table of the engine's catalogue (``engine_api.list_models``: parameters, download size, cached
commit or kept partial bytes, the doctor's plan and memory estimate for this device) with
Download / Cancel / Resume / Delete from cache. A download runs as an engine job in the worker
(``engine_api.download_base_job``); its ``DownloadProgress`` events drive the row's progress bar
with bytes, rate and ETA. Cancel keeps what arrived, so Resume (the same download again) continues
with a Range request. Nothing here touches the network except a download the user started.

The catalogue itself is read on a plain thread (cache files and the device probe, no network), not
as a worker job: the list shows while a training run holds the worker for hours. Only downloads
are jobs, one at a time like every job; while another job runs the page says which, and waits.
The Train page's "Download…" button calls :meth:`ModelsPage.download`.
"""

from __future__ import annotations

import threading

from PySide6.QtCore import QObject, Qt, Signal
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

from kala_engine.units import format_bytes, format_duration

from .. import engine_api
from ..error_dialog import show_error
from ..page_job import PageJob

FIT_COLOR = QColor("#2e7d32")
NO_FIT_COLOR = QColor("#c62828")


def human_params(n: float) -> str:
    return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:,.0f} M"


def progress_text(done: int, total: int, rate: float, eta: float | None) -> str:
    """What a download's bar says: percent, bytes, rate and ETA (short enough for a 1024-px window)."""
    pct = 100 * done / total if total else 0
    a, b = format_bytes(done), format_bytes(total)
    if a.split()[-1] == b.split()[-1]:
        a = a.split()[0]  # "9.9/24.7 MB"
    return f"{pct:.0f}% {a}/{b} · {format_bytes(rate)}/s · ETA {format_duration(eta)}"


class _Lister(QObject):
    """Reads the catalogue off the UI thread (the first call imports torch for the device probe)."""

    listed = Signal(object)
    failed = Signal(str)

    def start(self) -> None:
        threading.Thread(target=self._run, name="kala-list-models", daemon=True).start()

    def _run(self) -> None:
        try:
            rows = engine_api.list_models()
        except Exception as e:  # noqa: BLE001 - shown in the page's status line
            self.failed.emit(f"Could not list the models: {type(e).__name__}: {e}")
            return
        self.listed.emit(rows)


class ModelsPage(QWidget):
    """The catalogue as a table; one download at a time through the engine worker."""

    COLUMNS = ["Model", "Parameters", "Size", "In cache", "This device", "Progress"]
    #: the page shows its jobs' failures itself (in its status line)
    handles_job_errors = True
    #: the table was (re)read: the cache may have changed (a download ended, a model was deleted)
    listed = Signal()

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.rows: list[dict] = []
        self._downloading: str | None = None  # model name of this page's running download
        self._bars: dict[str, QProgressBar] = {}
        self._listing = False
        self._list_again = False
        self._lister = _Lister()
        self._lister.listed.connect(self._on_listed)
        self._lister.failed.connect(self._on_list_failed)

        self._build_table_and_buttons()
        self._build_layout()

        self.job = PageJob(ctx.worker, self)
        self._own_end = None  # the Finished event of this page's last download
        w = ctx.worker
        w.finished.connect(self._on_any_finished)  # another page's job may have downloaded a base
        w.busy_changed.connect(lambda _b: self._update_buttons())
        w.started.connect(lambda _name: self._update_buttons())
        self._listed = False  # the catalogue is read when the page is first shown (never at start-up)
        self._stale = False
        self._update_buttons()

    def _build_table_and_buttons(self) -> None:
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setObjectName("modelsTable")
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        for i in range(len(self.COLUMNS) - 1):
            header.setSectionResizeMode(i, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(self.COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)

        self.download_button = QPushButton("Download")
        self.download_button.setObjectName("downloadButton")
        self.download_button.clicked.connect(lambda: self.download_selected())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelDownloadButton")
        self.cancel_button.setToolTip("Stop the download; what arrived is kept and Resume continues it.")
        self.cancel_button.clicked.connect(self.cancel_download)
        self.delete_button = QPushButton("Delete from cache")
        self.delete_button.setObjectName("deleteModelButton")
        self.delete_button.setToolTip("Remove the selected model (and any partial download) from the cache.")
        self.delete_button.clicked.connect(lambda: self.delete_selected())
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Read the cache again (no network).")
        self.refresh_button.clicked.connect(self.refresh)

    def _build_layout(self) -> None:
        #: says which job holds the worker while it is not this page's download
        self.busy_note = QLabel("")
        self.busy_note.setObjectName("modelsBusyNote")
        self.busy_note.setWordWrap(True)
        self.busy_note.setStyleSheet("#modelsBusyNote { color: #9a3412; background: #fff4e0; "
                                     "border: 1px solid #f0c070; border-radius: 4px; padding: 4px; }")
        self.busy_note.hide()
        self.status = QLabel("Reading the cache…")
        self.status.setObjectName("modelsStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.cache_label = QLabel("")
        self.cache_label.setObjectName("cacheLabel")
        self.cache_label.setWordWrap(True)
        self.cache_label.setStyleSheet("#cacheLabel { color: #666; }")
        self.cache_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        buttons = QHBoxLayout()
        for b in (self.download_button, self.cancel_button, self.delete_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.refresh_button)
        lay = QVBoxLayout(self)
        title = QLabel("<b>Base models</b> — the Pythia sizes (GPT-NeoX) a run can start from. Cached models "
                       "train offline; downloads are resumable and happen only when you ask.")
        title.setWordWrap(True)
        lay.addWidget(title)
        lay.addWidget(self.busy_note)
        lay.addWidget(self.table, 1)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        lay.addWidget(self.cache_label)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._listed or self._stale:  # first show, or a job ended since (it may have downloaded a base)
            self._listed = True
            self._stale = False
            self.refresh()

    # ------------------------------------------------------------------ the table

    def refresh(self) -> None:
        """Re-read the catalogue (cache state and the doctor's plan) on a background thread."""
        if self._listing:
            self._list_again = True
            return
        self._listing = True
        self._lister.start()

    def _on_listed(self, rows: list) -> None:
        self._listing = False
        if self._list_again:
            self._list_again = False
            self.refresh()
        self.set_rows(rows)
        if self.status.text() == "Reading the cache…":
            cached = sum(1 for r in rows if r["cached"])
            self.status.setText(f"{cached} of {len(rows)} models in the cache. Select one to download or delete it.")
        try:
            self.cache_label.setText(f"Cache: {engine_api.hub_cache_dir()} (set HF_HOME to use another disk)")
        except Exception:  # noqa: BLE001 - only a hint
            self.cache_label.setText("")
        self.listed.emit()

    def _on_list_failed(self, message: str) -> None:
        self._listing = False
        self.status.setText(message)

    def set_rows(self, rows: list[dict]) -> None:
        keep = self.selected_name() or self._downloading  # (a download asked for before the list arrived)
        self.rows = list(rows)
        self._bars.clear()
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            partial = r.get("partial_bytes") or 0
            cached = "yes" if r["cached"] else (f"partial: {format_bytes(partial)}" if partial else "no")
            est = format_bytes(r["estimate_bytes"])
            plan = (f"fits: {r['mode']}, {r['precision']}, ~{est}" if r["fits"]
                    else f"does not fit: ~{est} > {format_bytes(r['available_bytes'])}")
            cells = [r["name"], human_params(r["params"]), format_bytes(r["download_bytes"]), cached, plan]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j == 0:
                    item.setToolTip(r["repo_id"])
                if j == 2:
                    item.setToolTip("Download size (fp16 safetensors and the tokenizer), about 2 bytes a parameter.")
                if j == 3:
                    revs = ", ".join(f"{k} ({v[:8]})" for k, v in (r.get("revisions") or {}).items())
                    item.setToolTip(f"{r['path']}\nrevisions: {revs or '-'}" if r.get("path") else
                                    f"{format_bytes(partial)} of a download kept; Resume continues it" if partial
                                    else "not downloaded")
                if j == 4:
                    item.setForeground(FIT_COLOR if r["fits"] else NO_FIT_COLOR)
                    item.setToolTip(r.get("reason") or f"training plan on this device ({r.get('device', '')}): "
                                    f"{r['mode']}, {r['precision']}, about {est} of {format_bytes(r['available_bytes'])}")
                self.table.setItem(i, j, item)
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setValue(1000 if r["cached"] else 0)
            bar.setFormat("in cache" if r["cached"] else (f"{format_bytes(partial)} kept · Resume continues"
                                                          if partial else ""))
            if r["name"] == self._downloading:
                bar.setFormat("downloading…")  # the next progress event fills it in
            self._bars[r["name"]] = bar
            self.table.setCellWidget(i, 5, bar)
        if keep:
            self.select(keep)
        self._update_buttons()

    def select(self, name: str) -> bool:
        for i, r in enumerate(self.rows):
            if r["name"] == name:
                self.table.selectRow(i)
                self.table.scrollToItem(self.table.item(i, 0))
                return True
        return False

    def selected_name(self) -> str | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.rows[rows[0].row()]["name"] if rows and rows[0].row() < len(self.rows) else None

    def _row(self, name: str | None) -> dict | None:
        return next((r for r in self.rows if r["name"] == name), None)

    def other_job(self) -> str:
        """The name of a job that holds the worker and is not this page's download ("" if none)."""
        if not self.job.busy_other():
            return ""
        return self.ctx.worker.job_name or "another job"

    def _update_buttons(self) -> None:
        r = self._row(self.selected_name())
        busy = self.ctx.worker.is_busy()
        other = self.other_job()
        resumable = bool(r and r.get("partial_bytes") and not r["cached"])
        self.download_button.setEnabled(bool(r) and not busy and not r["cached"])
        self.download_button.setText("Resume" if resumable else "Download")
        self.download_button.setToolTip(
            f"Wait: '{other}' is running (one job at a time)." if other else
            "Continue the kept partial download (a Range request)." if resumable else
            "Download the selected model into the Hugging Face cache (resumable).")
        self.cancel_button.setEnabled(self._downloading is not None)
        self.delete_button.setEnabled(bool(r) and not busy and (r["cached"] or bool(r.get("partial_bytes"))))
        self.busy_note.setText(f"<b>'{other}'</b> is running. KALA runs one job at a time: downloads wait until it "
                               f"ends (or cancel it on its page)." if other else "")
        self.busy_note.setVisible(bool(other))

    # ------------------------------------------------------------------ actions

    def download(self, name: str) -> str:
        """Select ``name`` and start (or resume) its download. "" when started, else why not (also shown).

        Works before the list was read (the Train page may ask first): the row's bar follows the
        download as soon as the list arrives.
        """
        if not self._listed:
            self._listed = True
            self.refresh()
        self.select(name)
        if self.ctx.worker.is_busy():
            why = f"'{self.ctx.worker.job_name or 'another job'}' is running; download {name} when it ends."
            self.status.setText(why)
            return why
        self._downloading = name
        bar = self._bars.get(name)
        if bar is not None:
            bar.setFormat("starting…")
        self.status.setText(f"Downloading {name}…")
        self.job.start(engine_api.download_base_job(name), f"download {name}", progress=self._on_event,
                       error=self._on_failed, finished=self._on_finished)
        self._update_buttons()
        return ""

    def download_selected(self) -> str:
        """Start the selected model's download; "" when started, else the reason."""
        name = self.selected_name()
        return self.download(name) if name is not None else "no model selected"

    @property
    def downloading(self) -> str | None:
        """The model this page is downloading now (None when none)."""
        return self._downloading

    def cancel_download(self) -> None:
        if self._downloading is not None and self.job.running():
            self.job.cancel()
            self.status.setText(f"Cancelling the download of {self._downloading}…")

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
        self.status.setText(f"Removed {r['repo_id']} from the cache ({format_bytes(freed)} freed).")
        self.refresh()

    # ------------------------------------------------------------------ worker events

    def _on_event(self, ev) -> None:
        if self._downloading is None:
            return
        rate = getattr(ev, "rate", None)
        if rate is None or not hasattr(ev, "total"):  # only DownloadProgress carries a rate
            return
        bar = self._bars.get(self._downloading)
        if bar is not None and ev.total:
            bar.setValue(int(1000 * ev.done / ev.total))
            bar.setFormat(progress_text(ev.done, ev.total, rate, ev.eta))
            bar.setToolTip(f"{ev.filename}: {format_bytes(ev.done)} of {format_bytes(ev.total)}")
        self.status.setText(f"Downloading {self._downloading}: {ev.filename}")

    def _on_failed(self, message: str, _traceback: str) -> None:
        self.status.setText(f"<b>Download failed:</b> {message}")

    def _on_finished(self, ev) -> None:
        """This page's download ended."""
        self._own_end = ev
        name, self._downloading = self._downloading, None
        if ev.cancelled:
            self.status.setText(f"Download of {name} cancelled; what arrived is kept - Resume continues it.")
        elif ev.result:
            self.status.setText(f"{name} is in the cache: {ev.result['path']}")
        self.refresh()
        self._update_buttons()

    def _on_any_finished(self, ev) -> None:
        """Some job ended: another page's (a run may have downloaded its base) re-reads the cache."""
        if ev is not self._own_end and self._listed:
            if self.isVisible():
                self.refresh()
            else:
                self._stale = True  # re-read when shown
        self._update_buttons()
