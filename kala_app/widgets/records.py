"""The Data page's preview parts: the records as a filterable table model (100k rows filter in
milliseconds) and the coverage chart (records violating each law, per kind)."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .. import engine_api
from .train_parts import LAW_COLORS

NO_VIOLATION_COLOR = "#b0b0b0"
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


__all__ = ["CoverageChart", "RecordsModel"]
