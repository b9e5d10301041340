"""Train page: a base that is not here says so before Start; a folder is checked when picked;
a refused start leaves no run folder; banners never move the Start/Pause/Cancel buttons."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import QPoint

from kala_app.error_dialog import ErrorDialog
from kala_app.runs import RunInfo, remove_if_empty_run


@pytest.fixture
def page(empty_hf_cache, train_page):
    return train_page()


def model_folder(root, *, weights=True, tokenizer=True, model_type="gpt_neox"):
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 64,
                                                  "num_hidden_layers": 2, "num_attention_heads": 4,
                                                  "intermediate_size": 128, "vocab_size": 97}))
    if tokenizer:
        (root / "tokenizer.json").write_text("{}")
    if weights:
        (root / "model.safetensors").write_bytes(b"\0")
    return root


def test_a_preset_that_is_not_downloaded_says_so_before_start(qtbot, page, ctx):
    assert page.base() == "kala-tiny" and page.start_button.isEnabled() and page.base_status.isHidden()
    page.base_combo.setCurrentIndex(page.base_combo.findData("pythia-70m"))
    assert not page.base_status.isHidden()
    assert "not downloaded" in page.base_status.text() and "kala models download pythia-70m" in page.base_status.text()
    assert not page.start_button.isEnabled()
    assert "not downloaded" in page.start_button.toolTip()
    assert page.start_training() is False  # even when called directly
    assert not list(ctx.runs_dir.glob("*")), "a refused start made a run folder"
    page.base_combo.setCurrentIndex(page.base_combo.findData("kala-tiny"))
    assert page.base_status.isHidden() and page.start_button.isEnabled()


def test_the_doctor_does_not_say_fits_alone_for_a_missing_base(qtbot, page, ctx):
    page.base_combo.setCurrentIndex(page.base_combo.findData("pythia-70m"))
    with qtbot.waitSignal(ctx.worker.finished, timeout=60000):
        page.run_doctor()
    fmt = page.memory_bar.bar.format()
    assert fmt.endswith("fits*"), fmt  # never a bare "fits"...
    reason = page.memory_bar.reason
    assert "Fits, but the base is not available" in reason.text() and not reason.isHidden()  # ...the line says why
    assert "not downloaded" in page.base_status.text()
    # the wrapped explanation gets the height its lines need (it was cut to one line in a narrow column)
    qtbot.waitUntil(lambda: reason.height() >= reason.heightForWidth(reason.width()), timeout=2000)


def test_a_folder_is_checked_when_it_is_picked(qtbot, page, ctx, tmp_path):
    n = page.base_combo.count()
    bad = model_folder(tmp_path / "no-weights", weights=False)
    assert page.add_base_folder(bad) is False
    dlg = page.findChildren(ErrorDialog)[-1]
    assert "no weight files" in dlg.message
    assert page.base_combo.count() == n and page.base() == "kala-tiny"
    llama = model_folder(tmp_path / "llama", model_type="llama")
    assert page.add_base_folder(llama) is False
    assert "GPT-NeoX" in page.findChildren(ErrorDialog)[-1].message
    good = model_folder(tmp_path / "pythia-local")
    assert page.add_base_folder(good) is True
    assert page.base() == str(good) and page.start_button.isEnabled() and page.base_status.isHidden()


def test_a_failed_start_removes_its_empty_run_folder(qtbot, page, ctx, tmp_path):
    def job_that_fails_early(cfg):
        from pathlib import Path

        def job(emit, control):
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            raise RuntimeError("no tokenizer in the base")

        return job

    page.job_factory = job_that_fails_early
    with qtbot.waitSignal(ctx.worker.finished, timeout=10000):
        assert page.start_training()
    qtbot.waitUntil(lambda: bool(page.findChildren(ErrorDialog)), timeout=2000)
    assert not page.run_dir.exists()
    kept = tmp_path / "kept"
    (kept / "checkpoints").mkdir(parents=True)
    assert remove_if_empty_run(kept) is False and kept.is_dir()


def _pos(widget, top) -> QPoint:
    return widget.mapTo(top, QPoint(0, 0))


def test_banners_coming_and_going_do_not_move_the_train_buttons(qtbot, studio_home, tmp_path):
    from kala_app.context import AppContext
    from kala_app.main_window import MainWindow

    win = MainWindow(AppContext.create(), show_quickstart=True)
    qtbot.addWidget(win)
    win.resize(1024, 640)
    win.show()
    train = win.show_page("train")
    qtbot.waitExposed(win)
    qtbot.wait(100)  # the page's first refresh of its lists has run
    buttons = [train.start_button, train.pause_button, train.cancel_button, train.progress]
    before = [_pos(b, win) for b in buttons]
    run = RunInfo(path=tmp_path / "r", name="20261130-010000-kala-tiny", status="interrupted", base="kala-tiny",
                  steps_done=40, total_steps=300, last_checkpoint=tmp_path / "r" / "checkpoints" / "step-40")
    train.resume_banner.offer(run)
    qtbot.wait(50)
    assert train.resume_banner.isVisible()
    assert [_pos(b, win) for b in buttons] == before
    win.banner.hide()  # the quickstart banner goes (dismissed, or the quickstart started)
    qtbot.wait(50)
    assert [_pos(b, win) for b in buttons] == before
    train.resume_banner.hide()
    qtbot.wait(50)
    assert [_pos(b, win) for b in buttons] == before
    win.ctx.worker.shutdown(10)
