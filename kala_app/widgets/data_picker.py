"""The Train page's data-set picker: the data sets folder's JSONL files (newest first), the one
remembered from last time, and Browse… for any other file."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QFileDialog

from .elided_combo import ElidedComboBox

BROWSE_DATA = "Browse…"


class DataPicker(QObject):
    """Owns ``combo``; ``path()`` is the chosen data set ("" when none), remembered in the settings."""

    def __init__(self, page, ctx) -> None:
        super().__init__(page)
        self.page = page
        self.ctx = ctx
        self.combo = ElidedComboBox()
        self.combo.setObjectName("dataCombo")
        self.combo.setToolTip("A KALA JSONL data set (make one on the Data page).")
        self.combo.activated.connect(self._on_activated)

    def refill(self) -> None:
        """Re-read the data sets folder, keeping the current choice (else the remembered one)."""
        current = self.path()
        self.combo.clear()
        files = sorted(self.ctx.datasets_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
        remembered = self.ctx.settings.value("data/current", "")
        paths = [str(p) for p in files]
        for extra in (current, remembered):
            if extra and extra not in paths and Path(extra).is_file():
                paths.insert(0, extra)
        for p in paths:
            self.combo.addItem(Path(p).name, p)
            self.combo.setItemData(self.combo.count() - 1, p, Qt.ItemDataRole.ToolTipRole)
        self.combo.addItem(BROWSE_DATA)
        want = current or remembered
        idx = self.combo.findData(want) if want else 0
        self.combo.setCurrentIndex(max(0, idx))

    def set_path(self, path: str | Path) -> None:
        """Select a data set (adds it to the list if needed) and remember it."""
        path = str(path)
        self.ctx.settings.setValue("data/current", path)
        i = self.combo.findData(path)
        if i < 0:
            self.combo.insertItem(0, Path(path).name, path)
            i = 0
        self.combo.setCurrentIndex(i)

    def path(self) -> str:
        d = self.combo.currentData()
        return str(d) if d else ""

    def _on_activated(self, index: int) -> None:
        if self.combo.itemText(index) != BROWSE_DATA:
            return
        path, _ = QFileDialog.getOpenFileName(self.page, "Choose a KALA data set", str(self.ctx.datasets_dir),
                                              "KALA JSONL (*.jsonl);;All files (*)")
        if path:
            self.set_path(path)
        else:
            self.combo.setCurrentIndex(0)
