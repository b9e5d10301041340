"""The KALA model: Pythia parity, cache consistency, law scores, gradients, save/load."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from transformers import AutoModelForCausalLM

from kala_engine.model.modeling_kala import (
    KALAConfig,
    KALAForCausalLM,
    PythiaLoadError,
    load_from_pythia,
)


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel-residual", "sequential-residual"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_load_from_pythia_reproduces_gpt_neox_logits(make_neox_dir, parallel, attn):
    neox, d = make_neox_dir(use_parallel_residual=parallel)
    neox.config._attn_implementation = attn
    kala = load_from_pythia(d, attn_implementation=attn).eval()
    assert kala.config._attn_implementation == attn
    assert kala.config.use_parallel_residual is parallel
    x = torch.randint(0, 97, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = neox(x).logits
        got = kala(x).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # every base weight was copied, not re-initialised
    sd = kala.state_dict()
    for k, v in neox.state_dict().items():
        kk = "embed_out.weight" if k == "lm_head.weight" else k
        torch.testing.assert_close(sd[kk], v, atol=0, rtol=0)


def test_gates_start_at_zero_and_scores_start_high(make_neox_dir):
    _, d = make_neox_dir()
    kala = load_from_pythia(d)
    gates = [p for n, p in kala.named_parameters() if "constitutional_gate" in n]
    assert len(gates) == kala.config.num_hidden_layers
    assert all(bool((g == 0).all()) for g in gates)
    with torch.no_grad():
        s = kala(torch.randint(0, 97, (1, 9))).law_scores
    assert float(s.min()) > 0.9  # an untrained head says "satisfied", it does not stop everything


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_token_by_token_equals_full_forward(tiny_kala, attn):
    model = tiny_kala
    model.config._attn_implementation = attn
    x = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(x, use_cache=False, output_layer_scores=True)
        out = model(x[:, :5], use_cache=True)
        logits, scores = [out.logits], [out.law_scores]
        cache = out.cache
        for t in range(5, 12):
            out = model(x[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits)
            scores.append(out.law_scores)
    torch.testing.assert_close(torch.cat(logits, 1), full.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat(scores, 1), full.law_scores, atol=1e-4, rtol=0)
    # the gates are non-zero here, so the cached per-key bias matters: zeroing it changes logits
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            layer.attention.constitutional_gate.zero_()
        assert (model(x, use_cache=False).logits - full.logits).abs().max() > 1e-3


def test_left_padding_matches_unpadded(tiny_kala):
    model = tiny_kala
    a = torch.randint(3, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), a], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
    with torch.no_grad():
        ref = model(a)
        out = model(padded, attention_mask=mask)
    torch.testing.assert_close(out.logits[:, 4:], ref.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.law_scores[:, 4:], ref.law_scores, atol=1e-4, rtol=0)


def test_right_padding_leaves_real_tokens_unchanged(tiny_kala):
    a = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(6))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        out = tiny_kala(a, attention_mask=mask)
        short = tiny_kala(a[1:, :6])
    torch.testing.assert_close(out.logits[1:, :6], short.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.law_scores[1:, :6], short.law_scores, atol=1e-4, rtol=0)


def test_law_scores_shapes_and_range(tiny_kala):
    x = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        out = tiny_kala(x, output_layer_scores=True)
    assert out.law_scores.shape == (2, 7, 5)
    assert out.layer_scores.shape == (2, 2, 7, 5)  # (layers, batch, seq, laws)
    assert out.value_scores.shape == (2, 2, 7, 5)
    for s in (out.law_scores, out.layer_scores, out.value_scores):
        assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    with torch.no_grad():
        assert tiny_kala(x).layer_scores is None  # only on request


def test_one_step_moves_gates_and_trains_every_constitutional_part(make_neox_dir):
    _, d = make_neox_dir()
    model = load_from_pythia(d).train()
    x = torch.randint(0, 97, (4, 10), generator=torch.Generator().manual_seed(4))
    targets = torch.ones(4, 10, 5)
    targets[:2, :, 1] = 0.1  # the first two sequences violate Law 1
    out = model(x, labels=x, law_targets=targets)
    assert out.lm_loss is not None and out.ethics_loss is not None and out.deep_loss is not None
    assert out.ethics_loss_per_law.shape == (5,)
    per_law = out.ethics_loss_per_law.detach()
    assert float(per_law[1]) > float(per_law[0])
    out.loss.backward()
    for part in ("value_head", "ethics_monitor", "ethics_aggregator"):
        grads = [p.grad for n, p in model.named_parameters() if part in n]
        assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads), part
    # gates at 0: only the gradients that would raise a gate reach it (it may never go negative)
    grads = torch.stack([layer.attention.constitutional_gate.grad for layer in model.gpt_neox.layers])
    assert float((grads < 0).sum()) > 0 and bool((grads <= 0).all())
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    gates = torch.stack([layer.attention.gate().detach() for layer in model.gpt_neox.layers])
    assert bool((gates[grads < 0] > 0).all()) and bool((gates[grads == 0] == 0).all())


def _gates(model) -> torch.Tensor:
    return torch.stack([layer.attention.gate() for layer in model.gpt_neox.layers])  # (L, nh)


def test_gate_never_goes_negative_when_training_pushes_it_down(make_neox_dir):
    """The design's sign constraint: training that rewards *negative* gates (attending more to
    low-scored keys) leaves every effective gate at >= 0, and a negative raw parameter acts as 0."""
    _, d = make_neox_dir()
    model = load_from_pythia(d).train()
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            layer.attention.constitutional_gate.fill_(0.5)  # start above 0, then push down hard
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if "constitutional_gate" in n],
                            lr=0.2, weight_decay=0.0)
    for _ in range(30):
        opt.zero_grad()
        _gates(model).sum().backward()  # minimising the gates: gradient descent pushes them down
        opt.step()
        assert float(_gates(model).detach().min()) >= 0.0
    raw = torch.stack([layer.attention.constitutional_gate.detach() for layer in model.gpt_neox.layers])
    assert float(raw.max()) < 0  # Adam's momentum carried the raw parameter below 0 ...
    model.eval()
    x = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = model(x).logits
        for layer in model.gpt_neox.layers:
            layer.attention.constitutional_gate.zero_()
        want = model(x).logits
    torch.testing.assert_close(got, want, atol=0, rtol=0)  # ... and acts exactly as a gate of 0


def test_gate_trains_up_from_exactly_zero(make_neox_dir):
    """A gate at its start value 0 still moves when the loss wants it up (a plain clamp or any
    smooth f >= 0 with f(0) = 0 would have zero gradient there)."""
    _, d = make_neox_dir()
    model = load_from_pythia(d).train()
    assert float(_gates(model).detach().abs().max()) == 0.0
    (-_gates(model).sum()).backward()
    for layer in model.gpt_neox.layers:
        assert bool((layer.attention.constitutional_gate.grad < 0).all())
    torch.optim.SGD([p for n, p in model.named_parameters() if "constitutional_gate" in n], lr=0.1).step()
    torch.testing.assert_close(_gates(model).detach(), torch.full_like(_gates(model).detach(), 8.0 * math.tanh(0.1 / 8.0)))


def test_lower_key_score_never_raises_attention(tiny_kala):
    """Attention to a key whose law score drops can only go down, whatever the raw gate holds."""
    from kala_engine.model.modeling_kala import GATE_LIMIT

    attn = tiny_kala.gpt_neox.layers[0].attention
    with torch.no_grad():
        attn.constitutional_gate.copy_(torch.tensor([-3.0, -0.5, 0.0, 2.0]))
        g = attn.gate()
    assert bool((g >= 0).all()) and bool((g[:3] == 0).all()) and 0 < float(g[3]) < GATE_LIMIT


def test_lm_loss_matches_gpt_neox(make_neox_dir):
    neox, d = make_neox_dir()
    kala = load_from_pythia(d).eval()
    x = torch.randint(0, 97, (2, 11))
    labels = x.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        torch.testing.assert_close(kala(x, labels=labels).lm_loss, neox(x, labels=labels).loss, atol=1e-5, rtol=0)


def test_save_and_auto_load_roundtrip_uses_safetensors_only(tiny_kala, tmp_path, monkeypatch):
    tiny_kala.save_pretrained(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "kala"

    def no_unpickling(*a, **k):
        raise AssertionError("loading must never unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert isinstance(loaded, KALAForCausalLM)
    x = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        a, b = tiny_kala(x), loaded(x)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    torch.testing.assert_close(a.law_scores, b.law_scores, atol=0, rtol=0)


def test_hf_generate_with_cache_matches_manual_greedy(tiny_kala):
    x = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(5))
    gen = tiny_kala.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ids = x
    with torch.no_grad():
        for _ in range(8):
            nxt = tiny_kala(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    assert gen.tolist() == ids.tolist()


def test_load_from_pythia_bad_folders(tmp_path, make_neox_dir):
    with pytest.raises(PythiaLoadError, match="no such folder"):
        load_from_pythia(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PythiaLoadError, match="no config.json"):
        load_from_pythia(tmp_path / "empty")
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(PythiaLoadError, match="'llama', not 'gpt_neox'"):
        load_from_pythia(tmp_path / "llama")
    _, d = make_neox_dir("shapes")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 256  # the weights say 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PythiaLoadError, match="shape|mismatch"):
        load_from_pythia(d)
    _, d2 = make_neox_dir("noweights")
    (d2 / "model.safetensors").unlink()
    with pytest.raises(PythiaLoadError, match="no weight files"):
        load_from_pythia(d2)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_laws", 4), ("law_weights", [1, 1, 1]), ("ethics_hidden_size", -3), ("ethics_loss_weight", -1.0)],
)
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        KALAConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                   vocab_size=97, **{field: value})


def test_the_kl_ethics_loss_still_pulls_a_confidently_wrong_head():
    """At the 'satisfied' 0.95 the heads start from, a harmful target (0.05) gets a 20x weaker
    pull on the head's logit from the squared error than from the KL loss (issue 16); both are 0
    at the target, and a bad kind is a clear error."""
    from kala_engine.model.modeling_kala import KALAConfig, weighted_mse

    target, mask = torch.full((1, 1, 5), 0.05), torch.ones(1, 1)
    grads = {}
    for kind in ("mse", "kl"):
        logit = torch.full((1, 1, 5), 2.944, requires_grad=True)  # sigmoid = 0.95
        weighted_mse(torch.sigmoid(logit), target, mask, kind).sum().backward()
        grads[kind] = float(logit.grad[0, 0, 0])
        assert float(weighted_mse(target, target, mask, kind).sum()) == pytest.approx(0.0, abs=1e-6)
    assert grads["kl"] == pytest.approx(0.95 - 0.05, rel=1e-3)
    assert grads["kl"] > 10 * grads["mse"] > 0
    with pytest.raises(ValueError, match="ethics_loss_kind"):
        KALAConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                   vocab_size=97, ethics_loss_kind="hinge")
