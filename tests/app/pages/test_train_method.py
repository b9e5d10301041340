"""Train page method selector (issue 17): a real DPO run started from the page, its reward margin and
preference accuracy plotted live, the Runs page naming the method and its settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from kala_app.pages.runs import RunsPage
from kala_app.pages.train import TrainPage
from kala_app.widgets.train_method import TrainMethod, method_text

@pytest.fixture(scope="module")
def base_and_pairs(tmp_path_factory):
    from tests.engine.train.tiny_runs import write_base_and_pairs

    return write_base_and_pairs(tmp_path_factory.mktemp("align_app"))


def test_selector_sets_the_method_its_settings_and_the_learning_rate(qtbot, ctx):
    page = TrainPage(ctx)
    qtbot.addWidget(page)
    assert page.method.method() == "sft" and page.hyperparameters()["method"] == "sft"
    assert page.method.plot.isHidden()  # SFT logs no preference numbers
    page.method.set_method("simpo")
    page.method.beta.setValue(2.0)
    page.method.gamma.setValue(0.8)
    hp = page.hyperparameters()
    assert (hp["method"], hp["beta"], hp["simpo_gamma"]) == ("simpo", 2.0, 0.8)
    assert page.hp["learning_rate"].value() == pytest.approx(5e-5)
    assert not page.method.plot.isHidden() and page.method.gamma.isEnabled()
    page.method.set_method("sft")
    assert page.hp["learning_rate"].value() == pytest.approx(2e-3)  # kala-tiny's again
    assert TrainMethod(ctx.settings).method() == "sft"  # remembered in the settings
    assert method_text({"method": "dpo", "beta": 0.1}) == "DPO (beta 0.1)"
    assert method_text({"method": "simpo", "beta": 2.0, "simpo_gamma": 0.5}) == "SIMPO (beta 2, gamma 0.5)"
    assert method_text({}) == "constitutional SFT"


def test_a_real_dpo_run_plots_margin_and_accuracy_live_and_runs_page_names_it(qtbot, ctx, base_and_pairs):
    base, pairs = base_and_pairs
    page = TrainPage(ctx)
    qtbot.addWidget(page)
    page.resize(1280, 800)
    page.show()
    assert page.add_base_folder(base)
    page.set_data_path(pairs)
    page.method.set_method("dpo")
    page.method.beta.setValue(0.2)
    for key, value in (("max_steps", 24), ("batch_size", 4), ("eval_every", 6), ("save_every", 0)):
        page.hp[key].setValue(value)
    page.hp["learning_rate"].setValue(1e-3)
    shot = Path(os.environ.get("KALA_SHOT_DIR", str(ctx.runs_dir))) / "train-dpo.png"
    grabbed = {}

    def grab_mid_run(ev):
        if ev.step == 16 and not grabbed:
            page.method.plot.redraw()
            grabbed["ok"] = page.grab().save(str(shot))

    ctx.worker.step.connect(grab_mid_run)
    with qtbot.waitSignal(ctx.worker.finished, timeout=240_000) as blocker:
        qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: page.method.plot.count("margin") >= 3, timeout=120_000)  # live, mid-run
        assert ctx.worker.is_busy()
    assert not blocker.args[0].cancelled and grabbed.get("ok") and shot.is_file()
    qtbot.waitUntil(lambda: page.method.plot.curve_points("margin") == 24, timeout=3000)
    assert page.method.plot.count("accuracy") == 24
    assert page.method.plot.count("margin_val") == 5  # steps 0, 6, 12, 18, 24
    info = json.loads((page.run_dir / "run.json").read_text())
    assert info["method"] == "dpo" and info["status"] == "finished"
    steps = [json.loads(x) for x in (page.run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in steps if m.get("split") == "validation"][-1]
    assert last["reward_margin"] > 0  # the held-out margin grew from 0 at step 0

    runs = RunsPage(ctx)
    qtbot.addWidget(runs)
    assert runs.select_run(page.run_dir.name)
    assert "DPO (beta 0.2)" in runs.detail.text()
