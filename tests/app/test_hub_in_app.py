"""Bases and public data sets from inside the app, against a loopback hub (tests/loopback_hub.py).

* the Train page's Base picker offers the download of a base that is not cached (Download… starts
  it on the Models page, shown at 1024x640 with its progress bar whole), shows the progress under
  Base, then lists the base first as downloaded and enables Start;
* the Models page lists its table while another job holds the worker and says which job that is;
* the Data page downloads HH-RLHF from the hub with progress, converts and loads it (the second
  time from the cache, with no download).

Nothing reaches the internet: huggingface_hub is pointed at the loopback server, HF_HOME in tmp.
"""

from __future__ import annotations

import gzip
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from tests.app.fakes import fake_config, fake_train_job  # noqa: E402
from tests.app.test_layout_1024 import cut_widgets  # noqa: E402
from tests.loopback_hub import LoopbackHub, point_huggingface_hub_at, tiny_neox_files  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "engine" / "data" / "fixtures"


def hh_rlhf_rows(n: int = 2000) -> bytes:
    """The HH-RLHF fixture plus ``n`` rows of varied text (~200 KB gzipped: it arrives in several
    16 KB pieces, so progress, a pause and a cancel can be seen mid-file)."""
    import json
    import random

    rnd = random.Random(0)
    words = [f"{a}{b}" for a in ("ba", "ko", "mi", "tu", "re", "sa", "lo", "pe") for b in range(40)]
    out = [(FIXTURES / "hh_rlhf.jsonl").read_bytes()]
    for _ in range(n):
        q = " ".join(rnd.choice(words) for _ in range(12))
        a = " ".join(rnd.choice(words) for _ in range(24))
        out.append(json.dumps({"chosen": f"\n\nHuman: {q}?\n\nAssistant: {a}.",
                               "rejected": f"\n\nHuman: {q}?\n\nAssistant: no."}).encode() + b"\n")
    return b"".join(out)


@pytest.fixture(scope="module")
def hub():
    server = LoopbackHub().start()
    server.add_repo("EleutherAI/pythia-70m", tiny_neox_files(model_vocab=50_000))
    hh = hh_rlhf_rows()
    server.add_repo("Anthropic/hh-rlhf", {"README.md": b"# hh", "harmless-base/train.jsonl.gz": gzip.compress(hh)},
                    kind="datasets")
    yield server
    server.stop()


_RELEASES: list[threading.Event] = []


@pytest.fixture
def hf(hub, tmp_path, monkeypatch):
    point_huggingface_hub_at(monkeypatch, hub.url, tmp_path / "hf")
    hub.requests.clear()
    hub.pause_at.clear()
    yield hub
    for release in _RELEASES:  # a failed test never leaves the server holding a file
        release.set()
    _RELEASES.clear()


def _holding(server, fname: str, fraction: float):
    """Make the server stop sending ``fname`` at ``fraction`` until the returned event is set."""
    hold, release = threading.Event(), threading.Event()

    def pause():
        hold.set()
        release.wait(30)

    size = len(next(files[fname] for revs in server.repos.values() for _c, files in revs.values() if fname in files))
    server.pause_at[fname] = (int(size * fraction), pause)
    _RELEASES.append(release)
    return hold, release


@pytest.fixture
def window(qtbot, studio_home, hf):
    from kala_app.context import AppContext
    from kala_app.main_window import MainWindow

    win = MainWindow(AppContext.create(), show_quickstart=False)
    win.ask_to_stop_job = lambda: True  # closing with a job running never opens a modal box
    win.resize(1024, 640)
    win.show()
    qtbot.waitExposed(win)
    yield win
    for release in _RELEASES:
        release.set()
    win.ctx.worker.cancel()
    win.ctx.worker.shutdown(30)
    win.close()
    win.deleteLater()


def test_train_page_offers_the_download_and_enables_start_once_cached(qtbot, window, hf):
    train = window.show_page("train")
    models = window.pages["models"]
    data = window.ctx.datasets_dir / "tiny.jsonl"
    data.write_text("{}\n")
    train.config_factory = fake_config
    train.job_factory = fake_train_job
    train.set_data_path(data)
    combo = train.base_combo
    i = combo.findData("pythia-70m")
    assert "download" in combo.itemText(i) and "136" in combo.itemText(i)  # not cached: its size
    assert train.select_base("pythia-70m")
    assert not train.start_button.isEnabled()
    assert "not downloaded" in train.base_status.text()
    assert train.base_download_button.isVisible() and train.base_download_button.isEnabled()
    qtbot.wait(50)
    assert not cut_widgets(train), cut_widgets(train)  # the note and the button fit the left column at 1024x640
    if shots := __import__("os").environ.get("KALA_SCREENSHOT_DIR"):
        window.grab().save(str(Path(shots) / "train-base-download.png"))

    hold, release = _holding(hf, "model.safetensors", 0.4)
    qtbot.mouseClick(train.base_download_button, Qt.MouseButton.LeftButton)
    assert window.current_page_key() == "models"  # the download shows in the Models table
    assert models.downloading == "pythia-70m"
    qtbot.waitUntil(lambda: len(models.rows) == 16, timeout=60_000)
    assert models.selected_name() == "pythia-70m"
    bar = models._bars["pythia-70m"]
    qtbot.waitUntil(lambda: hold.is_set() and 0 < bar.value() < 1000 and "ETA" in bar.format(), timeout=60_000)
    # at 1024x640 the bar's text (percent, bytes, rate, ETA) is drawn whole, and nothing else is cut
    assert bar.fontMetrics().horizontalAdvance(bar.format()) + 8 <= bar.width(), (bar.format(), bar.width())
    assert not cut_widgets(models), cut_widgets(models)
    need = models.minimumSizeHint()
    assert need.width() <= models.width() and need.height() <= models.height(), (need, models.size())
    # the Train page follows it under Base; Start stays off until the base is here
    assert "Downloading pythia-70m" in train.base_status.text() and "/s" in train.base_status.text()
    assert not train.start_button.isEnabled() and not train.base_download_button.isEnabled()

    release.set()
    qtbot.waitUntil(lambda: not window.ctx.worker.is_busy(), timeout=60_000)
    assert train.base() == "pythia-70m"
    assert train.start_button.isEnabled(), train.base_status.text()
    assert train.base_status.isHidden() and train.base_download_button.isHidden()
    assert combo.itemData(1) == "pythia-70m" and "downloaded" in combo.itemText(1)  # cached: right after kala-tiny
    qtbot.waitUntil(lambda: models.rows[0]["cached"], timeout=30_000)
    assert models._bars["pythia-70m"].format() == "in cache"
    window.show_page("train")
    assert train.start_training()  # the run starts from the cached base
    assert window.ctx.worker.wait_idle(30)


def test_models_page_lists_while_another_job_runs_and_says_which(qtbot, window, hf):
    gate = threading.Event()

    def long_job(emit, control):
        while not gate.wait(0.02):
            control.checkpoint()

    window.ctx.worker.start(long_job, "training 20261130-demo")
    models = window.show_page("models")
    qtbot.waitUntil(lambda: len(models.rows) == 16, timeout=60_000)  # read off the worker: no waiting for the job
    assert models.busy_note.isVisible() and "training 20261130-demo" in models.busy_note.text()
    models.select("pythia-70m")
    assert not models.download_button.isEnabled()
    assert "training 20261130-demo" in models.download_button.toolTip()
    why = models.download("pythia-70m")
    assert "training 20261130-demo" in why and "is running" in models.status.text()
    train = window.show_page("train")
    train.select_base("pythia-70m")
    assert not train.base_download_button.isEnabled() and "one job at a time" in train.base_download_button.toolTip()
    assert not cut_widgets(models)
    gate.set()
    qtbot.waitUntil(lambda: not window.ctx.worker.is_busy(), timeout=10_000)
    assert not models.busy_note.isVisible()
    assert not [r for m, p, r in hf.requests if "resolve" in p], "nothing was downloaded"


def test_data_page_downloads_and_imports_a_public_dataset(qtbot, window, hf):
    from kala_app.pages.data import DataPage

    data: DataPage = window.show_page("data")
    fmt = data.format_combo.findData("kala")
    data.format_combo.setCurrentIndex(fmt)
    assert not data.hub_button.isEnabled()  # KALA files do not come from the hub
    data.format_combo.setCurrentIndex(data.format_combo.findData("hh-rlhf"))
    assert data.hub_button.isEnabled() and "Anthropic/hh-rlhf" in data.hub_button.toolTip()
    assert not cut_widgets(data)

    hold, release = _holding(hf, "harmless-base/train.jsonl.gz", 0.5)
    assert data.download_from_hub()
    qtbot.waitUntil(lambda: hold.is_set() and "/s" in data.progress.format(), timeout=30_000)
    assert "ETA" in data.progress.format() and data.cancel_button.isVisible()
    assert 0 < data.progress.value() < data.progress.maximum()
    release.set()
    qtbot.waitUntil(lambda: not window.ctx.worker.is_busy(), timeout=60_000)
    assert data.path is not None and data.path.name == "hh-rlhf-harmless-base-train.jsonl"
    assert data.path.parent == window.ctx.datasets_dir
    assert data.model.rowCount() > 0 and not data.errors
    assert "done" in data.progress.format() and not data.cancel_button.isVisible()
    assert window.pages["train"].data_path() == str(data.path)  # ready to train on

    hf.requests.clear()
    data.path.unlink()
    assert data.download_from_hub()  # the second time: from the cache, no download
    qtbot.waitUntil(lambda: not window.ctx.worker.is_busy(), timeout=30_000)
    assert data.path.is_file() and data.model.rowCount() > 0
    assert not hf.requests, hf.requests


def test_data_page_hub_download_cancel_keeps_the_bytes_and_resumes(qtbot, window, hf):
    data = window.show_page("data")
    data.format_combo.setCurrentIndex(data.format_combo.findData("hh-rlhf"))
    hold, release = _holding(hf, "harmless-base/train.jsonl.gz", 0.5)
    assert data.download_from_hub()
    qtbot.waitUntil(hold.is_set, timeout=30_000)
    qtbot.waitUntil(data.cancel_button.isVisible, timeout=5_000)
    qtbot.mouseClick(data.cancel_button, Qt.MouseButton.LeftButton)
    release.set()
    qtbot.waitUntil(lambda: not window.ctx.worker.is_busy(), timeout=30_000)
    assert data.progress.format() == "cancelled" and data.path is None
    hf.requests.clear()
    assert data.download_from_hub()
    qtbot.waitUntil(lambda: not window.ctx.worker.is_busy(), timeout=60_000)
    ranges = [r for m, p, r in hf.requests if m == "GET" and p.endswith("train.jsonl.gz")]
    assert len(ranges) == 1 and ranges[0] and ranges[0] != "bytes=0-", ranges  # resumed, not restarted
    assert data.path is not None and data.model.rowCount() > 0
