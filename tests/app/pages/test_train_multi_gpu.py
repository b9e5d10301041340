"""Several GPUs on the Train page (issue 19): the GPU-count field appears only when the (mocked)
probe finds more than one GPU, its value reaches the run's config and the launcher's job, and
every rank's progress shows through rank 0's metrics."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from kala_app import engine_api
from kala_app.widgets.multi_gpu import GpuCountField
from kala_engine.jobs import TrainStep
from tests.app.fakes import fake_train_job


@pytest.mark.parametrize(("count", "shown"), [(0, False), (1, False), (2, True), (8, True)])
def test_gpu_field_only_with_more_than_one_gpu(qtbot, count, shown):
    field = GpuCountField(lambda: count)
    qtbot.addWidget(field)
    field.refresh()
    assert field.isHidden() is not shown and field.label.isHidden() is not shown
    assert field.maximum() == max(1, count) and field.value() == max(1, count)


def test_a_probe_that_fails_leaves_one_device(qtbot):
    def broken():
        raise RuntimeError("no driver")

    field = GpuCountField(broken)
    qtbot.addWidget(field)
    field.refresh()
    assert field.isHidden() and field.value() == 1


@pytest.fixture
def page(monkeypatch, train_page):
    monkeypatch.setattr(engine_api, "gpu_count", lambda: 4)  # a mocked machine with four GPUs
    seen = []
    p = train_page(max_steps=20, job_factory=lambda cfg: seen.append(cfg) or fake_train_job(cfg))
    p.seen = seen
    return p


def test_train_page_offers_the_gpus_and_passes_the_count_to_the_run(qtbot, page, ctx):
    assert not page.gpu_count.isHidden() and page.gpu_count.maximum() == 4
    page.gpu_count.setValue(2)
    with qtbot.waitSignal(ctx.worker.finished, timeout=15000):
        qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    assert page.seen[-1].gpus == 2


def test_rank_progress_shows_every_rank(qtbot, page, ctx):
    ranks = [{"rank": 0, "lm_loss": 3.25, "tokens": 192}, {"rank": 1, "lm_loss": 3.5, "tokens": 180}]

    def two_rank_job(cfg):
        def job(emit, control):  # what rank 0's metrics lines carry in a two-process run
            emit(TrainStep(step=7, total_steps=20, metrics={"step": 7, "lm_loss": 3.375, "ranks": ranks}))
            return {}
        return job

    page.job_factory = two_rank_job
    assert page.rank_progress.isHidden()
    with qtbot.waitSignal(ctx.worker.finished, timeout=15000):
        qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    text = page.rank_progress.text()
    assert not page.rank_progress.isHidden()
    assert "rank 0: step 7, LM loss 3.2500, 192 tokens" in text and "rank 1: step 7, LM loss 3.5000, 180 tokens" in text


def test_the_app_starts_a_multi_gpu_run_through_the_launcher_job(tmp_path):
    from kala_engine.train.config import TrainConfig

    one = TrainConfig(data="d.jsonl", run_dir=str(tmp_path / "a"))
    two = TrainConfig(data="d.jsonl", run_dir=str(tmp_path / "b"), gpus=2)
    assert engine_api._engine_train_job(one).__qualname__.startswith("train_job")
    assert engine_api._engine_train_job(two).__qualname__.startswith("launch_job")
