"""Shared fixtures of the page tests."""

from __future__ import annotations

import pytest

from kala_app.pages.train import TrainPage
from tests.app.fakes import fake_config, fake_train_job


@pytest.fixture
def train_page(qtbot, ctx):
    """Makes the Train page the Train tests drive: a one-line data file picked, the fake config and
    the fake job (or ``job_factory``), ``max_steps`` when given, shown; its job is stopped after the test."""

    def make(max_steps: int | None = None, job_factory=fake_train_job) -> TrainPage:
        data = ctx.datasets_dir / "tiny.jsonl"
        data.write_text("{}\n")
        p = TrainPage(ctx)
        qtbot.addWidget(p)
        p.config_factory = fake_config
        p.job_factory = job_factory
        p.refresh_lists()
        p.set_data_path(data)
        if max_steps is not None:
            p.hp["max_steps"].setValue(max_steps)
        p.show()
        return p

    yield make
    ctx.worker.cancel()
    ctx.worker.wait_idle(10)
