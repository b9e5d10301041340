"""Issue 18 in the app: the Train page's ethics-weight/distillation controls and curves, and the
Runs page's layer x law heatmap drawn from a saved model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kala_app.pages.runs import RunsPage
from kala_app.pages.train import TrainPage
from kala_app.widgets.train_ethics_weights import parse_layers
from kala_engine.train.config import TrainConfig


@pytest.fixture
def train_page(qtbot, ctx):
    p = TrainPage(ctx)
    qtbot.addWidget(p)
    return p


def test_the_controls_reach_the_train_config(train_page):
    box = train_page.ethics_box
    box.schedule.setCurrentText("cosine")
    box.weighting.setCurrentText("uncertainty")
    box.layers.setText("1, 3")
    box.const_only.setChecked(True)
    hp = train_page.hyperparameters()
    cfg = TrainConfig(data="d.jsonl", run_dir="r", **hp)
    assert (cfg.lambda_schedule, cfg.law_weighting, cfg.ethics_layers, cfg.constitutional_only) == \
        ("cosine", "uncertainty", [1, 3], True)
    assert parse_layers("all") is None and parse_layers("") is None
    with pytest.raises(ValueError, match="separated by commas"):
        parse_layers("two")


def test_a_teacher_makes_start_a_distillation_of_the_base(train_page, tmp_path):
    from kala_engine.train.distill import distill_job

    box = train_page.ethics_box
    cfg = TrainConfig(data="d.jsonl", run_dir=str(tmp_path / "r"), base="kala-tiny")
    assert box.job_for(cfg) is None  # no teacher: the page's own training job
    box.teacher.setText(str(tmp_path / "teacher"))
    box.student_layers.setValue(2)
    job = box.job_for(cfg)
    assert job is not None and job.__qualname__ == distill_job(cfg, None).__qualname__
    assert cfg.tokenizer_from == str(tmp_path / "teacher") and cfg.tiny_overrides["num_hidden_layers"] == 2


def test_weights_and_distillation_terms_are_plotted_per_step(train_page, qtbot):
    for step in range(1, 11):
        train_page._add_step_metrics({"step": step, "lm_loss": 1.0, "lambda": 0.2 * step,
                                      **{f"law_weight_{k}": 0.2 for k in range(5)}, "kd_loss": 1 / step,
                                      "score_loss": 0.01, "label_loss": 2.0})
    box = train_page.ethics_box
    qtbot.waitUntil(lambda: box.weights_plot.curve_points("lambda") == 10, timeout=2000)
    assert all(box.weights_plot.count(f"w{k}") == 10 for k in range(5))
    assert box.distill_plot.count("kd_loss") == 10 and box.distill_plot.count("layer_loss") == 0


def test_runs_page_heatmap_shows_the_saved_aggregator_weights_and_gates(qtbot, ctx):
    import torch

    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    torch.manual_seed(0)
    model = KALAForCausalLM(KALAConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=3,
                                       intermediate_size=64, vocab_size=50, max_position_embeddings=64))
    with torch.no_grad():
        model.gpt_neox.ethics_aggregator.layer_logits.copy_(torch.tensor(
            [[3.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]))
        model.gpt_neox.layers[2].attention.constitutional_gate.copy_(torch.tensor([1.5, -1.0]))
    run = ctx.runs_dir / "real-run"
    model.save_pretrained(run / "final")
    (run / "run.json").write_text(json.dumps({"config": {"base": "kala-tiny"}, "status": "finished"}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "lm_loss": 1.0, "ethics_loss": 0.1}) + "\n")
    page = RunsPage(ctx)
    qtbot.addWidget(page)
    page.show()
    assert page.select_run("real-run")
    page.load_selected_curves()
    data = page.layer_map.data
    laws = np.asarray(data["layer_law"])  # (layers, laws)
    expected = torch.softmax(model.gpt_neox.ethics_aggregator.layer_logits.detach(), -1).T.numpy()
    np.testing.assert_allclose(laws, expected, atol=1e-6)
    assert laws.shape == (3, 5) and np.argmax(laws[:, 0]) == 0 and np.argmax(laws[:, 1]) == 2
    gates = np.asarray(data["gates"])
    np.testing.assert_allclose(gates[2], model.gpt_neox.layers[2].attention.gate().detach().numpy(), atol=1e-6)
    assert gates[2][1] == 0.0 and gates[0].tolist() == [0.0, 0.0]  # a negative raw gate acts as 0
    assert page.layer_map.law_image.image.shape == (3, 5)
    assert "3 layers" in page.layer_map.note.text()
