"""Live training curves that stay cheap with hundreds of thousands of points.

Points are appended to growable numpy buffers (:class:`Series`) as events arrive; nothing is
drawn then. A :class:`QTimer` redraws only the curves that changed, every ``interval_ms``
(100 ms by default), in the spirit of pyqtgraph ``examples/scrollingPlots.py``.

Each series keeps a *peak decimation* of itself up to date incrementally (:class:`PeakCache`:
min and max of fixed-size blocks, the block size doubling whenever there are too many blocks), so
a redraw hands pyqtgraph at most a few thousand points however long the run is, and costs the
same at step 100 as at step 1,000,000. When the user zooms into part of the curve, that part is
decimated from the raw points instead, so no detail is lost. The curve items still use
``setClipToView(True)`` and pyqtgraph's own peak downsampling for the final fit to the pixels.

Smoothing is an exponential moving average kept incrementally as points arrive (O(1) per point);
changing the smoothing factor recomputes it once. Clicking a curve's entry in the legend hides or
shows it (pyqtgraph's legend does this).
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QGraphicsItem, QWidget

pg.setConfigOptions(antialias=False, background="w", foreground="#333")

#: At most this many min/max blocks per curve are handed to pyqtgraph (about 2x as many points).
MAX_BLOCKS = 1024


def peak_decimate(x: np.ndarray, y: np.ndarray, max_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of each of at most ``max_blocks`` blocks, interleaved (pyqtgraph's 'peak')."""
    n = len(x)
    if n <= 2 * max_blocks:
        return x, y
    b = -(-n // max_blocks)  # block size
    m = n // b
    ys = y[: m * b].reshape(m, b)
    out_x = np.repeat(x[: m * b : b], 2)
    out_y = np.empty(2 * m)
    out_y[0::2] = np.fmin.reduce(ys, axis=1)
    out_y[1::2] = np.fmax.reduce(ys, axis=1)
    return np.concatenate([out_x, x[m * b :]]), np.concatenate([out_y, y[m * b :]])


class PeakCache:
    """Incremental min/max decimation of a growing series (block size doubles as it grows)."""

    def __init__(self, max_blocks: int = 1024):
        self.max_blocks = max_blocks
        self.reset()

    def reset(self) -> None:
        self.block = 1
        self.done = 0  # complete blocks summarised
        self.bx = np.empty(0)
        self.bmin = np.empty(0)
        self.bmax = np.empty(0)

    def update(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decimated (x, y) of the first ``len(x)`` points; only new blocks are computed."""
        n = len(x)
        while n // self.block > 2 * self.max_blocks:  # too many blocks: merge pairs
            k = self.done // 2
            self.bx = self.bx[0 : 2 * k : 2]
            self.bmin = np.fmin(self.bmin[0 : 2 * k : 2], self.bmin[1 : 2 * k : 2])
            self.bmax = np.fmax(self.bmax[0 : 2 * k : 2], self.bmax[1 : 2 * k : 2])
            self.done = k
            self.block *= 2
        full = n // self.block
        if full > self.done:
            b = self.block
            seg = y[self.done * b : full * b].reshape(-1, b)
            self.bx = np.concatenate([self.bx, x[self.done * b : full * b : b]])
            self.bmin = np.concatenate([self.bmin, np.fmin.reduce(seg, axis=1)])
            self.bmax = np.concatenate([self.bmax, np.fmax.reduce(seg, axis=1)])
            self.done = full
        if self.block == 1:
            return x, y
        m = self.done
        out_x = np.empty(2 * m + (n - m * self.block))
        out_y = np.empty_like(out_x)
        out_x[0 : 2 * m : 2] = self.bx
        out_x[1 : 2 * m : 2] = self.bx
        out_y[0 : 2 * m : 2] = self.bmin
        out_y[1 : 2 * m : 2] = self.bmax
        out_x[2 * m :] = x[m * self.block :]
        out_y[2 * m :] = y[m * self.block :]
        return out_x, out_y


class Series:
    """A growable (x, y) buffer with an incrementally maintained EMA of y."""

    def __init__(self, capacity: int = 1024):
        self.x = np.empty(capacity, dtype=np.float64)
        self.y = np.empty(capacity, dtype=np.float64)
        self.ys = np.empty(capacity, dtype=np.float64)  # smoothed y
        self.n = 0
        self.alpha = 0.0  # 0 = no smoothing; EMA weight of the past
        self._last = math.nan
        self.cache = PeakCache(MAX_BLOCKS)
        self._cache_smoothed: bool | None = None

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * len(self.x))
        for name in ("x", "y", "ys"):
            a = getattr(self, name)
            b = np.empty(cap, dtype=np.float64)
            b[: self.n] = a[: self.n]
            setattr(self, name, b)

    def append(self, x: float, y: float) -> None:
        if self.n >= len(self.x):
            self._grow(self.n + 1)
        self.x[self.n] = x
        self.y[self.n] = y
        if math.isnan(self._last) or self.alpha <= 0:
            s = y
        elif math.isnan(y):
            s = self._last
        else:
            s = self.alpha * self._last + (1 - self.alpha) * y
        self.ys[self.n] = s
        if not math.isnan(s):
            self._last = s
        self.n += 1

    def extend(self, xs, ys) -> None:
        """Append many points at once (vectorised when not smoothing)."""
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        if self.alpha > 0:
            for a, b in zip(xs, ys, strict=True):
                self.append(float(a), float(b))
            return
        m = len(xs)
        if self.n + m > len(self.x):
            self._grow(self.n + m)
        self.x[self.n : self.n + m] = xs
        self.y[self.n : self.n + m] = ys
        self.ys[self.n : self.n + m] = ys
        self.n += m
        finite = ys[~np.isnan(ys)]
        if len(finite):
            self._last = float(finite[-1])

    def set_smoothing(self, alpha: float) -> None:
        """Recompute the EMA for a new weight ``alpha`` in [0, 1)."""
        self.alpha = float(alpha)
        last = math.nan
        y = self.y[: self.n]
        out = self.ys
        for i in range(self.n):
            v = y[i]
            if math.isnan(last) or self.alpha <= 0:
                s = v
            elif math.isnan(v):
                s = last
            else:
                s = self.alpha * last + (1 - self.alpha) * v
            out[i] = s
            if not math.isnan(s):
                last = s
        self._last = last
        self.cache.reset()

    def clear(self) -> None:
        self.n = 0
        self._last = math.nan
        self.cache.reset()

    def data(self, smoothed: bool) -> tuple[np.ndarray, np.ndarray]:
        return self.x[: self.n], (self.ys if smoothed else self.y)[: self.n]

    def display(self, smoothed: bool, x_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """At most ~2*MAX_BLOCKS points to draw: the whole series, or the zoomed ``x_range``."""
        x, y = self.data(smoothed)
        if self._cache_smoothed is not smoothed:
            self.cache.reset()
            self._cache_smoothed = smoothed
        if x_range is not None and self.n > 2 * MAX_BLOCKS:
            i0, i1 = np.searchsorted(x, x_range, side="left")
            i0, i1 = max(0, int(i0) - 1), min(self.n, int(i1) + 1)
            if i1 - i0 < self.n // 2:  # zoomed in: decimate only what is visible, from raw points
                return peak_decimate(x[i0:i1], y[i0:i1], MAX_BLOCKS)
        return self.cache.update(x, y)


class LivePlot(pg.PlotWidget):
    """A plot of named curves fed point by point and redrawn from a timer.

    ``add_curve(key, label, color)`` declares a line; ``add_points(key, label, color)`` declares a
    scatter (validation points). ``append(key, x, y)`` buffers a point; the timer draws it.
    """

    def __init__(self, title: str = "", y_label: str = "", parent: QWidget | None = None,
                 interval_ms: int = 100, log_y: bool = False, phase_ms: int = 0, legend_columns: int = 1):
        super().__init__(parent=parent)
        self.setMinimumHeight(150)
        self.plotItem.setTitle(title, size="10pt")
        # no grid: in the raster paint engine it costs more than all the curves together
        self.plotItem.setLabel("bottom", "step")
        if y_label:
            self.plotItem.setLabel("left", y_label)
        self.plotItem.setClipToView(True)
        self.plotItem.setDownsampling(auto=True, mode="peak")
        self.plotItem.setLogMode(y=log_y)
        self.plotItem.getAxis("left").enableAutoSIPrefix(False)  # "loss (x0.001)" reads badly
        self.legend = self.plotItem.addLegend(offset=(-10, 4), labelTextSize="8pt", colCount=legend_columns,
                                              brush=pg.mkBrush(255, 255, 255, 200), verSpacing=-6)
        # the legend rarely changes: paint it from a cached pixmap instead of re-rendering its text
        self.legend.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.series: dict[str, Series] = {}
        self.items: dict[str, pg.PlotDataItem] = {}
        self._dirty: set[str] = set()
        self._smooth_keys: set[str] = set()  # curves that follow the smoothing setting
        self.smoothing = 0.0
        self._zoomed: tuple[float, float] | None = None
        self.plotItem.getViewBox().sigRangeChangedManually.connect(self._on_manual_range)
        self.plotItem.getViewBox().sigStateChanged.connect(self._on_view_state)
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        # precise: Qt aligns coarse timers to common boundaries, which would undo the phases
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self.redraw)
        # Plots of one page get different phases so their repaints land in different event-loop
        # iterations instead of one long paint of all of them.
        if phase_ms:
            QTimer.singleShot(phase_ms, self.timer.start)
        else:
            self.timer.start()

    # ------------------------------------------------------------ declaring curves

    def add_curve(self, key: str, label: str, color, width: float = 1.0, style=Qt.PenStyle.SolidLine,
                  smooth: bool = True, in_legend: bool = True) -> pg.PlotDataItem:
        pen = pg.mkPen(color=color, width=width, style=style)
        item = self.plotItem.plot([], [], pen=pen, name=label if in_legend else None)
        item.setClipToView(True)
        item.setDownsampling(auto=True, method="peak")
        self._register(key, item, smooth)
        return item

    def add_points(self, key: str, label: str, color, size: float = 7, symbol: str = "o",
                   in_legend: bool = True) -> pg.PlotDataItem:
        item = self.plotItem.plot([], [], pen=None, symbol=symbol, symbolSize=size,
                                  symbolBrush=pg.mkBrush(color), symbolPen=pg.mkPen("w"),
                                  name=label if in_legend else None)
        self._register(key, item, smooth=False)
        return item

    def _register(self, key: str, item: pg.PlotDataItem, smooth: bool) -> None:
        if key in self.items:
            self.remove(key)
        self.items[key] = item
        s = Series()
        if smooth:
            self._smooth_keys.add(key)
            s.alpha = self.smoothing
        self.series[key] = s

    def remove(self, key: str) -> None:
        item = self.items.pop(key, None)
        if item is not None:
            self.plotItem.removeItem(item)
        self.series.pop(key, None)
        self._smooth_keys.discard(key)
        self._dirty.discard(key)

    # ------------------------------------------------------------ feeding points

    def append(self, key: str, x: float, y: float) -> None:
        s = self.series.get(key)
        if s is None or y is None:
            return
        s.append(float(x), float(y))
        self._dirty.add(key)

    def extend(self, key: str, xs, ys) -> None:
        s = self.series.get(key)
        if s is None:
            return
        s.extend(xs, ys)
        self._dirty.add(key)

    def clear_data(self, keys=None) -> None:
        for k in list(self.series if keys is None else keys):
            if k in self.series:
                self.series[k].clear()
                self._dirty.add(k)

    def count(self, key: str) -> int:
        s = self.series.get(key)
        return 0 if s is None else s.n

    def set_smoothing(self, alpha: float) -> None:
        """EMA weight in [0, 1): 0 shows raw values, 0.9 a strongly smoothed line."""
        self.smoothing = float(alpha)
        for k in self._smooth_keys:
            self.series[k].set_smoothing(self.smoothing)
            self._dirty.add(k)

    def set_visible(self, key: str, visible: bool) -> None:
        if key in self.items:
            self.items[key].setVisible(visible)

    # ------------------------------------------------------------ drawing

    def redraw(self) -> None:
        """Push the changed buffers to their curves (called by the timer)."""
        if not self._dirty:
            return
        for key in self._dirty:
            item = self.items.get(key)
            s = self.series.get(key)
            if item is None or s is None:
                continue
            x, y = s.display(key in self._smooth_keys and s.alpha > 0, self._zoomed)
            item.setData(x, y)
        self._dirty.clear()

    def _on_manual_range(self, *_args) -> None:
        """The user zoomed or panned: redraw every curve from the points now visible."""
        vb = self.plotItem.getViewBox()
        self._zoomed = None if vb.autoRangeEnabled()[0] else tuple(vb.viewRange()[0])
        self._dirty.update(self.items)

    def _on_view_state(self, *_args) -> None:
        if self._zoomed is not None and self.plotItem.getViewBox().autoRangeEnabled()[0]:
            self._zoomed = None  # back to auto range ("A" button): show everything again
            self._dirty.update(self.items)

    def curve_points(self, key: str) -> int:
        """How many points the curve item currently holds (what was drawn, for tests)."""
        item = self.items.get(key)
        if item is None or item.xData is None:
            return 0
        return len(item.xData)
