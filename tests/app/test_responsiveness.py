"""Responsiveness: the UI thread never stalls during a training job; a 100k-point plot redraws in <= 16 ms.

The numbers (p50/p99/max) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from kala_app.pages.train import TrainPage
from kala_app.widgets.live_plot import LivePlot
from tests.app.fakes import fake_config, fake_train_job


class Heartbeat:
    """A 10 ms QTimer on the UI thread recording the gaps between its ticks."""

    def __init__(self, interval_ms: int = 10):
        self.interval = interval_ms / 1000
        self.stamps: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.stamps.append(time.perf_counter()))

    def start(self):
        self.stamps.clear()
        self.timer.start()

    def stop(self) -> np.ndarray:
        self.timer.stop()
        return np.diff(self.stamps) * 1e3  # ms between ticks


def stats(ms: np.ndarray) -> str:
    return f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms (n={len(ms)})"


# ~1000 steps/s, far above what a real training job emits (kala-tiny: a few steps/s on a CPU).
# A pure-Python job that never sleeps (tens of thousands of steps/s, holding the GIL) is not a
# realistic load: torch releases the GIL inside every op, this fake does not.
@pytest.mark.parametrize("step_sleep", [0.001], ids=["1kHz"])
def test_heartbeat_never_stalls_during_training(qtbot, ctx, step_sleep):
    page = TrainPage(ctx)
    qtbot.addWidget(page)
    page.resize(1280, 800)
    page.show()
    data = ctx.datasets_dir / "d.jsonl"
    data.write_text("{}\n")
    page.config_factory = fake_config
    page.job_factory = lambda cfg: fake_train_job(cfg, step_sleep=step_sleep, eval_every=100)
    page.refresh_lists()
    page.set_data_path(data)
    page.hp["max_steps"].setValue(10_000_000)
    qtbot.wait(300)  # first show: let the initial layout and paints settle
    hb = Heartbeat()
    hb.start()
    assert page.start_training()
    qtbot.wait(2500)
    gaps = hb.stop()
    steps = page.lm_plot.count("lm")
    with qtbot.waitSignal(ctx.worker.finished, timeout=10000):
        page.cancel()
    stall = gaps - 10.0
    print(f"\n[{step_sleep=}] {steps} steps in 2.5 s; heartbeat gaps: {stats(gaps)}; worst stall {stall.max():.1f} ms")
    assert steps > 500, "the job barely ran"
    assert page.lm_plot.curve_points("lm") > 0
    # one beat may hold a single pause (a garbage collection, the scheduler) under 100 ms; a UI
    # starved by the job shows many long beats, and fails either bound
    assert np.sort(stall)[-2] <= 50.0 and stall.max() <= 100.0, stats(gaps)


def test_redraw_of_100k_points_per_curve_within_16ms(qtbot):
    plot = LivePlot("ethics", "loss")
    qtbot.addWidget(plot)
    plot.resize(900, 320)
    plot.show()
    n_curves = 6
    for k in range(n_curves):
        plot.add_curve(f"c{k}", f"curve {k}", k)
    plot.set_smoothing(0.6)
    n = 100_000
    x = np.arange(n, dtype=float)
    rng = np.random.default_rng(0)
    for k in range(n_curves):
        for i in range(0, n, 1000):  # fed the way training feeds it: point by point
            for j in range(i, i + 1000):
                plot.series[f"c{k}"].append(x[j], np.exp(-x[j] / 3e4) + 0.1 * rng.random() + k)
    plot._dirty.update(plot.items)
    plot.redraw()
    QApplication.processEvents()
    times = []
    for r in range(60):
        for k in range(n_curves):
            plot.append(f"c{k}", n + r, 1.0 + k)
        t0 = time.perf_counter()
        plot.redraw()  # push the buffers to the curves ...
        QApplication.processEvents()  # ... and paint the widget
        times.append((time.perf_counter() - t0) * 1e3)
    times = np.array(times)
    assert all(plot.count(f"c{k}") == n + 60 for k in range(n_curves))
    print(f"\nredraw of {n_curves} curves x 100k points: {stats(times)}")
    assert np.percentile(times, 50) <= 16.0
    assert np.percentile(times, 99) <= 16.0 * 2  # allow a rare GC pause on a loaded 2-core CI box
