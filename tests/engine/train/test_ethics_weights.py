"""Dynamic ethics weights and per-layer ethics tuning (issue 18, items 2 and 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kala_engine.constitution import NUM_LAWS
from kala_engine.train.config import TrainConfig
from kala_engine.train.ethics_weights import EthicsObjective, lambda_at
from tests.engine.train.tiny_runs import write_data

PRIORITIES = [2.0, 1.6, 1.3, 1.1, 1.0]
TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 128}


def cfg(**kw) -> TrainConfig:
    return TrainConfig(data="d.jsonl", run_dir="r", **kw)


def test_lambda_schedules_rise_and_fall_as_named():
    const = cfg(ethics_weight=2.0)
    assert [lambda_at(s, 100, const) for s in (0, 50, 99)] == [2.0, 2.0, 2.0]
    warm = cfg(ethics_weight=2.0, lambda_schedule="warmup", lambda_warmup_steps=10)
    ramp = [lambda_at(s, 100, warm) for s in range(12)]
    assert ramp[0] == pytest.approx(0.2) and ramp[9] == 2.0 and ramp[11] == 2.0
    assert all(a < b for a, b in zip(ramp[:10], ramp[1:10], strict=False))
    cos = cfg(ethics_weight=2.0, lambda_schedule="cosine", lambda_warmup_steps=10, lambda_min_ratio=0.25)
    tail = [lambda_at(s, 100, cos) for s in range(10, 101, 10)]
    assert tail[0] == pytest.approx(2.0) and tail[-1] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(tail, tail[1:], strict=False))


def test_fixed_weights_use_the_models_own_loss():
    obj = EthicsObjective(cfg(), PRIORITIES)
    assert obj.plain and obj.parameters() == []


def test_uncertainty_rule_lowers_the_pull_of_the_law_with_the_larger_loss():
    """Kendall et al.: at the optimum exp(-s_k) = 1 / MSE_k; a law with a large loss pulls less."""
    c = cfg(law_weighting="uncertainty", adaptive_bound=10.0)
    obj = EthicsObjective(c, PRIORITIES)
    per_law = torch.tensor([0.5, 0.02, 0.1, 0.1, 0.1])  # law 0 hard, law 1 easy
    opt = torch.optim.Adam(obj.parameters(), lr=0.05)
    before = obj.weights_log(0, 10)
    for step in range(200):
        loss = obj.combine(torch.tensor(1.0), per_law, torch.tensor(0.0), step, 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = obj.weights_log(200, 10)
    rel = [after[f"law_weight_{k}"] / before[f"law_weight_{k}"] for k in range(NUM_LAWS)]
    assert rel[1] > rel[2] > rel[0]  # the easier a law, the more it pulls
    assert rel[0] == pytest.approx(1 / 0.5, rel=0.1)  # exp(-s_0) -> 1 / MSE_0
    assert 5.0 < rel[1] < 10.0  # 1 / MSE_1 = 50, softly bounded at 10


def test_uncertainty_weights_stay_within_the_bound():
    obj = EthicsObjective(cfg(law_weighting="uncertainty", adaptive_bound=2.0), PRIORITIES)
    opt = torch.optim.Adam(obj.parameters(), lr=0.2)
    per_law = torch.tensor([1e-6, 50.0, 1.0, 1.0, 1.0])  # would drive exp(-s) to 1e6 and 1/50
    for step in range(300):
        loss = obj.combine(torch.tensor(0.0), per_law, torch.tensor(0.0), step, 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = obj.weights_log(0, 10)
    p = torch.tensor(PRIORITIES) / sum(PRIORITIES)
    rel = [w[f"law_weight_{k}"] / float(p[k]) for k in range(NUM_LAWS)]
    assert 1.9 < rel[0] <= 2.0 and 0.5 <= rel[1] < 0.53


def test_validation_rule_raises_the_pull_of_the_law_with_the_larger_validation_error():
    obj = EthicsObjective(cfg(law_weighting="validation", adaptive_bound=2.0), PRIORITIES)
    before = obj.weights_log(0, 10)
    obj.observe_validation({"split": "validation", **{f"val_mae_{k}": v for k, v in
                                                      enumerate([0.30, 0.02, 0.10, 0.10, 0.10])}})
    after = obj.weights_log(0, 10)
    rel = [after[f"law_weight_{k}"] / before[f"law_weight_{k}"] for k in range(NUM_LAWS)]
    assert rel[0] == 2.0  # 0.30 / 0.124 = 2.4, bounded at 2
    assert rel[1] == 0.5  # 0.02 / 0.124 = 0.16, bounded at 1/2
    assert rel[2] == pytest.approx(0.10 / 0.124)
    # its state goes into a checkpoint and comes back
    other = EthicsObjective(cfg(law_weighting="validation"), PRIORITIES)
    other.load_state_dict(json.loads(json.dumps(obj.state_dict())))
    assert other.weights_log(0, 10) == after


def test_equal_layer_weights_are_the_models_deep_loss_and_one_layer_weights_only_it(tiny_kala):
    from kala_engine.train.ethics_layers import layer_supervision

    torch.manual_seed(1)
    ids = torch.randint(0, 97, (2, 12))
    targets = torch.rand(2, 12, NUM_LAWS)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids, "law_targets": targets,
             "target_mask": torch.ones_like(ids)}
    with torch.no_grad():
        out = tiny_kala(**batch, output_layer_scores=True)
    equal = EthicsObjective(cfg(layer_supervision_weights=[1, 1]), list(tiny_kala.config.law_weights),
                            layer_supervision(cfg(layer_supervision_weights=[1, 1]), 2))
    torch.testing.assert_close(equal.deep_loss(out, batch, tiny_kala.config.ethics_loss_kind), out.deep_loss)
    only_last = EthicsObjective(cfg(), list(tiny_kala.config.law_weights),
                                layer_supervision(cfg(ethics_layers=[1]), 2))
    first = EthicsObjective(cfg(), list(tiny_kala.config.law_weights), layer_supervision(cfg(ethics_layers=[0]), 2))
    kind = tiny_kala.config.ethics_loss_kind
    assert float(only_last.deep_loss(out, batch, kind) + first.deep_loss(out, batch, kind)) == pytest.approx(
        2 * float(out.deep_loss), rel=1e-5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_data(tmp_path_factory, 160, 5)


def run_cfg(dataset, run_dir, **kw) -> TrainConfig:
    base = dict(data=str(dataset), run_dir=str(run_dir), max_steps=6, batch_size=4, max_length=48,
                learning_rate=3e-3, eval_every=3, eval_batches=1, save_every=0, seed=3, vocab_size=300,
                tiny_overrides=TINY, device="cpu", calibrate=False)
    base.update(kw)
    return TrainConfig(**base)


def lines(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_a_run_logs_every_weight_per_step_and_the_validation_rule_moves_them(dataset, tmp_path):
    from kala_engine.train.trainer import train

    run_dir = tmp_path / "val"
    train(run_cfg(dataset, run_dir, law_weighting="validation", lambda_schedule="warmup", lambda_warmup_steps=4),
          lambda e: None)
    steps = [m for m in lines(run_dir) if m.get("split") != "validation"]
    assert [m["lambda"] for m in steps][:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert all(f"law_weight_{k}" in m for m in steps for k in range(NUM_LAWS))
    # step 1 used the factors of the validation at step 0: the law with the largest MAE pulls most
    val0 = next(m for m in lines(run_dir) if m.get("split") == "validation")
    worst = max(range(NUM_LAWS), key=lambda k: val0[f"val_mae_{k}"])
    p = [x / sum(PRIORITIES) for x in PRIORITIES]
    rel = [steps[0][f"law_weight_{k}"] / p[k] for k in range(NUM_LAWS)]
    assert max(range(NUM_LAWS), key=lambda k: rel[k]) == worst and rel[worst] > 1.0


def test_constitutional_parts_only_leaves_every_base_weight_bit_identical(dataset, tmp_path, make_neox_dir):
    from safetensors.torch import load_file

    from kala_engine.data.tokenizer import train_tokenizer
    from kala_engine.train.trainer import train

    _, base = make_neox_dir("pythia", vocab_size=320, num_hidden_layers=3)
    tok = train_tokenizer(["hello world"] * 10, vocab_size=300)
    tok.save_pretrained(base)
    run_dir = tmp_path / "frozen"
    events = []
    train(run_cfg(dataset, run_dir, base=str(base), constitutional_only=True, ethics_layers=[1, 2], eval_every=0,
                  learning_rate=1e-2), events.append)
    before = load_file(str(base / "model.safetensors"))
    after = load_file(str(run_dir / "final" / "model.safetensors"))
    compared = 0
    for name, t in before.items():
        if name in after and after[name].shape == t.shape:
            assert torch.equal(after[name], t), name
            compared += 1
    assert compared >= 20  # every base tensor of 3 layers + embeddings + head
    # what trained: the constitutional parts of layers 1 and 2 and the aggregator, nothing else
    from kala_engine.model.modeling_kala import KALAForCausalLM

    model = KALAForCausalLM.from_pretrained(run_dir / "final")
    expected = sum(p.numel() for n, p in model.named_parameters()
                   if n in model.constitutional_parameter_names() and ".layers.0." not in n)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["trainable_parameters"] == expected < 0.2 * info["parameters"]
    assert any("constitutional parts only" in getattr(e, "message", "") for e in events)
