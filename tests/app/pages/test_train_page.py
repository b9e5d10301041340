"""Train page: Start trains, points reach the plots, Pause/Resume/Cancel reach the job."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt

from kala_app.error_dialog import ErrorDialog
from kala_app.pages.train import TrainPage
from tests.app.fakes import fake_train_job


@pytest.fixture
def page(train_page):
    return train_page(max_steps=60)


def test_start_button_trains_and_points_reach_the_plots(qtbot, page, ctx):
    with qtbot.waitSignal(ctx.worker.finished, timeout=15000) as blocker:
        qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
        assert not page.start_button.isEnabled()
        assert page.cancel_button.isEnabled()
    assert not blocker.args[0].cancelled
    qtbot.waitUntil(lambda: page.lm_plot.curve_points("lm") == 60, timeout=2000)
    assert page.ethics_plot.curve_points("ethics") == 60
    for k in range(5):
        assert page.ethics_plot.curve_points(f"law{k}") == 60
    assert page.lm_plot.curve_points("lm_val") == 6  # validation every 10 steps
    assert page.lr_plot.curve_points("lr") == 60
    assert page.progress.value() == page.progress.maximum() == 60
    assert page.start_button.isEnabled() and not page.cancel_button.isEnabled()
    # the legend names the laws from the constitution
    legend_names = [lab.text for _sample, lab in page.ethics_plot.legend.items]
    for law in ctx.constitution:
        assert law.title in legend_names
    assert (page.run_dir / "final").is_dir()


def test_pause_resume_cancel_reach_the_job(qtbot, page, ctx):
    page.job_factory = lambda cfg: fake_train_job(cfg, step_sleep=0.01)
    page.hp["max_steps"].setValue(100_000)
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.lm_plot.count("lm") >= 5, timeout=5000)

    qtbot.mouseClick(page.pause_button, Qt.MouseButton.LeftButton)
    assert ctx.worker.is_paused()
    assert page.resume_button.isEnabled() and not page.pause_button.isEnabled()
    qtbot.wait(150)  # let the step in flight land
    n = page.lm_plot.count("lm")
    qtbot.wait(300)
    assert page.lm_plot.count("lm") == n, "steps kept coming while paused"
    qtbot.waitUntil(lambda: "paused" in page.progress.format(), timeout=1000)

    qtbot.mouseClick(page.resume_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.lm_plot.count("lm") > n + 3, timeout=5000)

    with qtbot.waitSignal(ctx.worker.finished, timeout=10000) as blocker:
        qtbot.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)
    assert blocker.args[0].cancelled
    assert not ctx.worker.is_busy()
    assert list((page.run_dir / "checkpoints").iterdir()), "cancel did not leave a checkpoint"
    assert not (page.run_dir / "final").exists()
    assert "cancelled" in page.progress.format()
    # the interrupted run is now offered for resume, and resuming continues where it stopped
    page.refresh_lists()
    assert page.resume_banner.isVisible() and page.resume_banner.run.path == page.run_dir
    steps_before = page.resume_banner.run.steps_done
    page.job_factory = fake_train_job
    run = page.resume_banner.run
    run.config["max_steps"] = steps_before + 5
    with qtbot.waitSignal(ctx.worker.finished, timeout=10000):
        qtbot.mouseClick(page.resume_banner.button, Qt.MouseButton.LeftButton)
    steps = [json.loads(x)["step"] for x in (run.path / "metrics.jsonl").read_text().splitlines()
             if "validation" not in x]
    assert steps == list(range(1, steps_before + 6))


def test_failure_shows_error_dialog_with_traceback(qtbot, page, ctx):
    page.job_factory = lambda cfg: fake_train_job(cfg, fail_at=3)
    with qtbot.waitSignal(ctx.worker.finished, timeout=10000):
        qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    dialogs = [w for w in page.findChildren(ErrorDialog)]
    assert dialogs, "no error dialog"
    dlg = dialogs[-1]
    assert "fake failure at step 3" in dlg.message
    assert "Traceback" in dlg.traceback
    assert not dlg.details.isVisible()
    dlg.details_button.click()
    assert dlg.details.isVisible()
    assert page.start_button.isEnabled()


def test_overlay_of_an_earlier_run(qtbot, page, ctx):
    with qtbot.waitSignal(ctx.worker.finished, timeout=15000):
        qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    first = page.run_dir
    page.refresh_lists()
    n = page.set_overlay(first)
    assert n == 60
    assert page.lm_plot.curve_points("ov_lm") == 60
    assert page.overlay_combo.currentData() == str(first)
    page.set_overlay(None)
    assert "ov_lm" not in page.lm_plot.items


def test_hyperparameter_fields_start_at_trainconfigs_defaults(qtbot, ctx):
    """The Train page, `kala train` and `kala demo` start kala-tiny with the same settings."""
    from kala_engine.train.config import TrainConfig

    p = TrainPage(ctx)
    qtbot.addWidget(p)
    tc = TrainConfig(data="d.jsonl", run_dir="run")
    for key in ("batch_size", "learning_rate", "ethics_weight", "eval_every", "save_every", "seed"):
        assert p.hp[key].value() == pytest.approx(getattr(tc, key)), key
