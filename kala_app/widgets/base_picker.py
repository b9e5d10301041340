"""The Train page's base picker: kala-tiny, the Pythia models in the Hugging Face cache (marked
downloaded), the others with their download size, and local folders; a note under it says why the
chosen base cannot be trained from, with Download… for a catalogue model not in the cache yet.

A controller (QObject) owning three widgets the page lays out in its form: ``combo``, ``status``
and ``download_button``. ``checked(problem)`` is emitted after every check ("" when the base is
available), so the page enables Start.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QFileDialog, QPushButton

from kala_engine.units import format_bytes

from .. import engine_api
from ..error_dialog import show_error
from .elided_combo import ElidedComboBox
from .wrap_label import WrapLabel

LOCAL_FOLDER = "Local Pythia folder…"


def _safe(fn, default):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - an optional engine piece; the page still works
        return default


class BasePicker(QObject):
    """Which base a run starts from, and whether it is here (see the module docstring)."""

    checked = Signal(str)

    def __init__(self, page, ctx) -> None:
        super().__init__(page)
        self.page = page
        self.ctx = ctx
        self.problem = ""
        self.cached: dict[str, str] = {}  # {preset name: commit} in the HF cache (fill)
        self.watched_download: str | None = None  # a base download running (from here or the Models page)
        self._last_base_index = 0
        self.combo = ElidedComboBox()
        self.combo.setObjectName("baseCombo")
        self.combo.setToolTip(
            "The model to start from: kala-tiny is trained from scratch in minutes on a CPU; the "
            "Pythia presets need their weights in a local folder or the Hugging Face cache "
            "(downloaded ones are listed first; the others offer the download).")
        self.combo.activated.connect(self._on_base_activated)
        #: why the chosen base cannot be trained from (not downloaded, a folder without a model)
        self.status = WrapLabel("")
        self.status.setObjectName("baseStatus")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setStyleSheet("#baseStatus { color: #9a3412; background: #fff4e0; "
                                  "border: 1px solid #f0c070; border-radius: 4px; padding: 4px; }")
        self.status.hide()
        #: offered under the note when the chosen base is a catalogue model not downloaded yet
        self.download_button = QPushButton("Download…")
        self.download_button.setObjectName("baseDownloadButton")
        self.download_button.clicked.connect(self.download)
        self.download_button.hide()
        self.fill()
        self.combo.currentIndexChanged.connect(lambda _i: self.check())

    def base(self) -> str:
        b = self.combo.currentData()
        return str(b) if b else self.combo.currentText()

    def fill(self) -> None:
        """(Re)fill the Base picker: kala-tiny, the Pythia models in the cache (marked downloaded),
        then the others (marked with their download size); local folders picked earlier stay.
        Reads cache files only (no network, no torch), so it runs on every show of the page."""
        combo = self.combo
        keep = self.base() if combo.count() else ""
        folders = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())
                   if combo.itemData(i) and Path(str(combo.itemData(i))).is_absolute()
                   and Path(str(combo.itemData(i))).is_dir()]
        presets = _safe(engine_api.base_presets, ["kala-tiny"])
        catalog = {m["name"]: m for m in _safe(engine_api.base_catalog, [])}
        self.cached = _safe(engine_api.cached_bases, {})
        cached = [n for n in catalog if n in self.cached]
        missing = [n for n in presets if n != "kala-tiny" and n not in self.cached]
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
                              f"{self.cached[n][:8]}): trains offline", Qt.ItemDataRole.ToolTipRole)
        for n in missing:
            size = catalog[n]["download_bytes"] if n in catalog else None
            combo.addItem(f"{n}  (download {format_bytes(size)})" if size else n, n)
            combo.setItemData(combo.count() - 1, f"not downloaded yet: pick it, then Download… ({format_bytes(size)})",
                              Qt.ItemDataRole.ToolTipRole)
        combo.addItem(LOCAL_FOLDER)
        i = combo.findData(keep) if keep else -1
        combo.setCurrentIndex(i if i >= 0 else 0)
        combo.blockSignals(False)
        self.check()

    def select(self, name: str) -> bool:
        """Choose the base ``name`` (a preset or a folder picked before) in the picker."""
        i = self.combo.findData(str(name))
        if i >= 0:
            self.combo.setCurrentIndex(i)
        return i >= 0

    def _downloadable(self, base: str) -> dict | None:
        """The catalogue entry of ``base`` when it is a Pythia model not in the cache yet."""
        if base in self.cached:
            return None
        return next((m for m in _safe(engine_api.base_catalog, []) if m["name"] == base), None)

    def download(self) -> str:
        """Download the chosen base on the Models page (it shows the table and the row's progress
        bar); this page shows the progress under Base and enables Start once it is cached.
        "" when it started, else why not (also said under Base)."""
        base = self.base()
        models = self.ctx.pages.get("models")
        if models is None or not hasattr(models, "download"):
            return "no Models page"
        why = models.download(base)
        if why:
            self.status.setText(f"<b>Not available:</b> {base} is not downloaded yet; {why}")
            return why
        self.watched_download = base
        self.download_button.setEnabled(False)
        self.status.setText(f"<b>Downloading {base}…</b> (on the Models page; Start is enabled when it is "
                                 f"in the cache)")
        win = self.page.window()
        if hasattr(win, "show_page") and win is not self.page:
            win.show_page("models")
        return ""

    def on_job_started(self, name: str) -> None:
        if name.startswith("download "):
            self.watched_download = name.removeprefix("download ")

    def on_download_event(self, ev) -> None:
        name = self.watched_download
        if name is None or name != self.base() or getattr(ev, "rate", None) is None or not getattr(ev, "total", 0):
            return
        from ..pages.models import progress_text

        self.status.setText(f"<b>Downloading {name}:</b> {progress_text(ev.done, ev.total, ev.rate, ev.eta)}")

    def after_download(self, ev) -> None:
        name, self.watched_download = self.watched_download, None
        if name is None:
            return
        self.fill()  # cached now: listed first, Start enabled (when it was the chosen base)
        if ev.cancelled and name == self.base():
            self.status.setText(self.status.text() + " (download cancelled: the Models page resumes it)")

    def _on_base_activated(self, index: int) -> None:
        if self.combo.itemText(index) != LOCAL_FOLDER:
            return
        folder = QFileDialog.getExistingDirectory(self.page, "Choose a local Pythia folder (config.json + weights)")
        if not folder or not self.add_folder(folder):
            self.combo.setCurrentIndex(self._last_base_index)

    def add_folder(self, folder: str | Path) -> bool:
        """Check ``folder`` now and select it as the base; refused at once with the reason if it is
        not a model folder (config.json GPT-NeoX/KALA, tokenizer, safetensors weights)."""
        folder = str(folder)
        why = engine_api.model_folder_problem(folder)
        if why:
            show_error(self.page, "Not a model folder", f"{folder} cannot be a base: {why}.")
            return False
        i = self.combo.findData(folder)
        if i < 0:
            self.combo.insertItem(0, Path(folder).name + " (local)", folder)
            self.combo.setItemData(0, folder, Qt.ItemDataRole.ToolTipRole)
            i = 0
        self.combo.setCurrentIndex(i)
        return True

    def check(self) -> str:
        """Say under the Base box (and on Start) why the chosen base is not available; "" when it is."""
        if self.combo.currentText() == LOCAL_FOLDER:
            return ""
        self._last_base_index = self.combo.currentIndex()
        base = self.base()
        try:
            why = engine_api.base_problem(base)
        except Exception as e:  # noqa: BLE001 - an unreadable cache is a problem to show, not a crash
            why = f"{base} cannot be checked ({type(e).__name__}: {e})"
        self.problem = why
        offer = self._downloadable(base) if why else None
        if offer:
            here = "the Download button below (the Models page shows its progress) or " if "models" in self.ctx.pages else ""
            self.status.setText(
                f"<b>Not available:</b> {base} is not downloaded yet ({format_bytes(offer['download_bytes'])}). Get it with "
                f"{here}`kala models download {base}`.")
        elif why:
            self.status.setText(f"<b>Not available:</b> {why}.")
        self.status.setVisible(bool(why))
        self.download_button.setVisible(bool(offer) and "models" in self.ctx.pages)
        self.download_button.setText(f"Download {base}…" if offer else "Download…")
        self.download_button.setToolTip(
            f"Download {offer['repo_id']} ({format_bytes(offer['download_bytes'])}) into the Hugging Face cache; the "
            f"Models page opens with its progress." if offer else "")
        self.checked.emit(why)
        return why
