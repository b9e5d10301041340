"""Models page: the Pythia table, a real download from a loopback hub with progress, cancel, resume, delete.

``EleutherAI/pythia-70m`` is served by tests/loopback_hub.py (a tiny GPT-NeoX the test builds, 26 MB
so the progress bar moves); nothing reaches the internet. To write the screenshot of the page
mid-download: ``KALA_SCREENSHOT_DIR=docs/screenshots pytest tests/app/test_models_page.py``.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loopback_hub import LoopbackHub, point_huggingface_hub_at, tiny_neox_files  # noqa: E402

from kala_app.pages.models import ModelsPage  # noqa: E402


@pytest.fixture(scope="module")
def weights_server():
    hub = LoopbackHub().start()
    hub.add_repo("EleutherAI/pythia-70m", tiny_neox_files(model_vocab=50_000))
    yield hub
    hub.stop()


def _row(page, name):
    return next(i for i, r in enumerate(page.rows) if r["name"] == name)


def test_download_cancel_resume_delete(qtbot, ctx, weights_server, tmp_path, monkeypatch):
    point_huggingface_hub_at(monkeypatch, weights_server.url, tmp_path / "hf")
    page = ModelsPage(ctx)
    qtbot.addWidget(page)
    page.resize(1280, 800)
    page.show()
    qtbot.waitUntil(lambda: len(page.rows) == 16, timeout=60_000)
    assert not any(r["cached"] for r in page.rows)
    assert page.table.item(0, 4).text().startswith(("fits", "does not fit"))

    hold, release = threading.Event(), threading.Event()

    def pause():  # the server stops sending at 40 % until the test lets it go on
        hold.set()
        release.wait(30)

    size = len(weights_server.repos[("models", "EleutherAI/pythia-70m")]["main"][1]["model.safetensors"])
    weights_server.pause_at["model.safetensors"] = (int(size * 0.4), pause)
    page.select("pythia-70m")
    page.download_selected()
    bar = page._bars["pythia-70m"]
    qtbot.waitUntil(lambda: hold.is_set() and 300 <= bar.value() < 1000, timeout=60_000)
    assert "/s" in bar.format() and "ETA" in bar.format()
    shot_dir = os.environ.get("KALA_SCREENSHOT_DIR")
    if shot_dir:
        page.grab().save(str(Path(shot_dir) / "models-download.png"))
    assert page.cancel_button.isEnabled() and not page.download_button.isEnabled()
    page.cancel_download()
    release.set()
    qtbot.waitUntil(lambda: "cancelled" in page.status.text(), timeout=30_000)
    qtbot.waitUntil(lambda: page.rows[_row(page, "pythia-70m")]["partial_bytes"] > 0, timeout=30_000)
    page.select("pythia-70m")
    assert page.download_button.text() == "Resume" and page.download_button.isEnabled()

    weights_server.requests.clear()
    page.download_selected()
    qtbot.waitUntil(lambda: page.rows[_row(page, "pythia-70m")]["cached"], timeout=60_000)
    ranges = [r for m, p, r in weights_server.requests if m == "GET" and p.endswith("model.safetensors")]
    assert len(ranges) == 1 and ranges[0] and ranges[0] != "bytes=0-"  # resumed, not restarted
    assert page.table.item(_row(page, "pythia-70m"), 3).text().startswith("yes")
    assert page._bars["pythia-70m"].value() == 1000

    page.select("pythia-70m")
    page.delete_selected(confirm=False)
    qtbot.waitUntil(lambda: not page.rows[_row(page, "pythia-70m")]["cached"] and not ctx.worker.is_busy(),
                    timeout=30_000)
    assert "Removed EleutherAI/pythia-70m" in page.status.text()


def test_byte_counts_over_2_gib_reach_the_ui_intact(qtbot, ctx):
    """The worker's progress signal carries Python ints (a Qt int overflowed at 2**31 bytes)."""
    from kala_engine.model.download import DownloadProgress

    got = []
    ctx.worker.progress.connect(lambda done, total, msg: got.append((done, total)))

    def job(emit, control):
        emit(DownloadProgress(done=5 * 2**30, total=14 * 2**30, rate=1e8, eta=90.0))

    with qtbot.waitSignal(ctx.worker.finished, timeout=10_000):
        ctx.worker.start(job, "big numbers")
    assert got == [(5 * 2**30, 14 * 2**30)]
