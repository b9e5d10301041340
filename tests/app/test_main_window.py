"""Main window: five pages, status bar, geometry restored, quickstart offered once, closing during training."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSize

from kala_app.context import AppContext
from kala_app.main_window import PAGES, MainWindow
from tests.app.fakes import fake_config, fake_train_job


@pytest.fixture
def make_window(qtbot, studio_home):
    made = []

    def make(**kw):
        ctx = AppContext.create()
        w = MainWindow(ctx, **kw)
        qtbot.addWidget(w)
        w.show()
        made.append(w)
        return w

    yield make
    for w in made:
        w.ctx.worker.shutdown(timeout_s=10)


def test_pages_and_navigation(make_window):
    """Every page is the real one (no placeholder, no optional-page guessing)."""
    w = make_window()
    assert [w.nav.item(i).text() for i in range(w.nav.count())] == [t for _k, t, _c in PAGES]
    for key, _title, cls in PAGES:
        page = w.show_page(key)
        assert w.stack.currentWidget() is page
        assert w.current_page_key() == key
        assert type(page) is cls
    assert w.ctx.pages["train"] is w.pages["train"]


def test_geometry_page_and_quickstart_are_remembered(qtbot, make_window):
    w = make_window()
    assert w.banner.isVisible(), "first start offers the quickstart"
    w.resize(1111, 777)
    w.show_page("runs")
    w.banner.dismissed.emit()
    assert not w.banner.isVisible()
    w.close()
    w2 = make_window()
    assert w2.size() == QSize(1111, 777)
    assert w2.current_page_key() == "runs"
    assert not w2.banner.isVisible()


def test_status_bar_shows_device_and_running_job(qtbot, make_window):
    w = make_window(show_quickstart=False)
    qtbot.waitUntil(lambda: "probing" not in w.device_label.text(), timeout=30000)
    assert w.device_label.text().startswith("device: ")
    assert "CPU" in w.device_label.text() or "CUDA" in w.device_label.text()


def test_device_probe_delivers_on_the_ui_thread(qtbot, monkeypatch):
    """The probe runs off the UI thread but emits ``found`` on it (no Qt emit from a plain thread)."""
    import threading

    from PySide6.QtCore import Qt

    from kala_app import engine_api
    from kala_app.main_window import _DeviceProbe

    monkeypatch.setattr(engine_api, "device_summary", lambda: "CPU (test)")
    probe = _DeviceProbe()
    seen = []
    # direct: the slot runs in whatever thread emits
    probe.found.connect(lambda text: seen.append((text, threading.current_thread())), Qt.ConnectionType.DirectConnection)
    probe.start()
    qtbot.waitUntil(lambda: bool(seen), timeout=10000)
    assert seen == [("CPU (test)", threading.main_thread())]


def _start_fake_training(w, tmp_path, step_sleep=0.01):
    train = w.show_page("train")
    data = w.ctx.datasets_dir / "d.jsonl"
    data.write_text("{}\n")
    train.config_factory = fake_config
    train.job_factory = lambda cfg: fake_train_job(cfg, step_sleep=step_sleep)
    train.refresh_lists()
    train.set_data_path(data)
    train.hp["max_steps"].setValue(1_000_000)
    assert train.start_training()
    return train


def test_closing_during_training_asks_then_checkpoints_and_stops(qtbot, make_window, tmp_path, monkeypatch):
    w = make_window(show_quickstart=False)
    train = _start_fake_training(w, tmp_path)
    qtbot.waitUntil(lambda: train.lm_plot.count("lm") > 3, timeout=5000)
    assert w.job_label.text().startswith("running: training")

    asked = []
    monkeypatch.setattr(w, "ask_to_stop_job", lambda: asked.append(1) or False)
    w.close()
    assert asked and w.isVisible() and w.ctx.worker.is_busy(), "answering No keeps the run going"

    monkeypatch.setattr(w, "ask_to_stop_job", lambda: asked.append(2) or True)
    w.close()
    assert asked == [1, 2]
    assert not w.isVisible()
    assert not w.ctx.worker.is_busy()
    assert not w.ctx.worker._thread.isRunning(), "the worker thread was not joined"
    assert list((train.run_dir / "checkpoints").iterdir()), "no checkpoint written on close"


def test_ctrl_1_to_5_switch_pages_and_ctrl_q_closes(qtbot, make_window):
    from PySide6.QtCore import Qt

    w = make_window()
    w.activateWindow()
    qtbot.waitActive(w)
    for i, (key, _t, _c) in enumerate(PAGES, start=1):
        qtbot.keyClick(w.windowHandle(), getattr(Qt.Key, f"Key_{i}"), Qt.KeyboardModifier.ControlModifier)
        assert w.current_page_key() == key
    assert "Ctrl+3" in w.nav.item(2).toolTip()
    qtbot.keyClick(w.windowHandle(), Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: not w.isVisible(), timeout=5000)


def test_chat_and_evaluate_failures_are_shown_once_on_their_page(qtbot, make_window, monkeypatch):
    """A failed reply or evaluation is reported on its page, not again in the main window's dialog."""
    import kala_app.main_window as mw

    dialogs = []
    monkeypatch.setattr(mw, "show_error", lambda *a, **k: dialogs.append(a))
    w = make_window(show_quickstart=False)
    model = w.ctx.runs_dir / "run-1" / "final"
    model.mkdir(parents=True)

    def failing_job(emit, control):
        raise RuntimeError("boom in the job")

    chat = w.show_page("chat")
    chat.job_factory = lambda model, messages, settings: failing_job
    chat.open_model(model)
    assert chat.send("hello")
    qtbot.waitUntil(lambda: not chat.is_generating(), timeout=15000)
    assert "boom in the job" in chat.status.text()
    assert "RuntimeError" in chat.status.toolTip()  # the traceback stays reachable

    class FailingBackend:
        name = "x"
        law_names = ["a", "b", "c", "d", "e"]

        def assess_and_reply(self, prompt, *, threshold, max_new_tokens):
            raise RuntimeError("boom in the backend")

    ev = w.show_page("evaluate")
    ev.backend_factory = lambda path: FailingBackend()
    ev.set_models(model)
    assert ev.run()
    qtbot.waitUntil(lambda: not ev.is_running(), timeout=15000)
    assert "boom in the backend" in ev.status.text()
    assert dialogs == []
