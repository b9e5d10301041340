"""Gradient-free forwards (generation, validation) run every layer's ethics monitor in one batch and
keep the constitutional gates' scale between calls: the same scores as the per-layer path, fewer
kernels per decoding step, and nothing stale after a weight changes."""

from __future__ import annotations

import collections

import pytest
import torch

from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM


def _with_grad(model, x):
    """The per-layer path: a forward with gradients on computes each monitor in its layer."""
    with torch.enable_grad():
        out = model(x, use_cache=False, output_layer_scores=True)
    return out.logits.detach(), out.law_scores.detach(), out.layer_scores.detach()


def _no_grad(model, x):
    with torch.no_grad():
        out = model(x, use_cache=False, output_layer_scores=True)
    return out.logits, out.law_scores, out.layer_scores


def _assert_same(a, b):
    for got, want in zip(a, b, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel-residual", "sequential-residual"])
def test_stacked_monitors_give_the_per_layer_scores(parallel):
    torch.manual_seed(0)
    cfg = KALAConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, intermediate_size=128,
                     vocab_size=97, rotary_pct=0.25, max_position_embeddings=128, use_parallel_residual=parallel)
    model = KALAForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "constitutional_gate" in name:
                p.uniform_(0.5, 2.0)
            elif "ethics_monitor" in name or "value_head" in name:
                p.normal_(0, 0.3)  # every monitor different, layer norms included
    x = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))
    per_layer, stacked = _with_grad(model, x), _no_grad(model, x)
    _assert_same(stacked, per_layer)
    # the scores are not all alike (the comparison could not pass by saturation)
    assert float(per_layer[2].std()) > 0.05
    assert float((per_layer[2][0] - per_layer[2][1]).abs().max()) > 0.05


@pytest.mark.parametrize("change", ["monitor weight", "monitor layer norm", "gate", "load_state_dict", "dtype"])
def test_a_changed_weight_is_never_read_from_the_kept_copies(tiny_kala, change):
    model = tiny_kala
    x = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(2))
    before = _no_grad(model, x)  # fills the kept stacked weights and gate scales
    layer = model.gpt_neox.layers[1]
    with torch.no_grad():
        if change == "monitor weight":
            layer.ethics_monitor.fc1.weight.add_(torch.randn_like(layer.ethics_monitor.fc1.weight))
        elif change == "monitor layer norm":
            layer.ethics_monitor.norm.bias.add_(1.0)
        elif change == "gate":
            layer.attention.constitutional_gate.add_(3.0)
        elif change == "load_state_dict":
            sd = {k: v.clone() for k, v in model.state_dict().items()}
            sd["gpt_neox.layers.1.ethics_monitor.fc2.bias"] += 2.0
            sd["gpt_neox.layers.0.attention.constitutional_gate"] += 2.0
            model.load_state_dict(sd)
        else:
            model.double()
            x = x.clone()
    after = _no_grad(model, x)
    _assert_same(after, _with_grad(model, x))
    if change != "dtype":  # the change moved the scores: the kept copies were refreshed, not reused
        assert float((after[2] - before[2]).abs().max()) > 1e-3 or float((after[0] - before[0]).abs().max()) > 1e-3


def test_a_wrapped_monitor_takes_the_per_layer_path(tiny_kala):
    """A monitor that is not a plain EthicsValueHead of plain Linears (peft, bitsandbytes, FSDP
    wrap them) keeps the per-layer path, whose forward the wrapper owns."""
    from peft import LoraConfig, get_peft_model

    model = tiny_kala
    x = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["fc1"], lora_dropout=0.0))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a LoRA update that changes the monitors' scores
    _assert_same(_no_grad(lora, x), _with_grad(lora, x))


def _compute_kernels(model, prompt: torch.Tensor) -> collections.Counter:
    """aten ops of one cached decoding step that do arithmetic (views, copies and allocations left out)."""
    with torch.no_grad():
        cache = model(prompt, use_cache=True).cache
        model(torch.tensor([[5]]), cache=cache, use_cache=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(torch.tensor([[6]]), cache=cache, use_cache=True)
    names = ("addmm", "mm", "bmm", "baddbmm", "mv", "addmv_", "gelu", "sigmoid", "tanh", "clamp", "div", "sub",
             "addcmul", "native_layer_norm", "_softmax", "stack")
    return collections.Counter(e.name[6:] for e in prof.events() if e.name[6:] in names)


def test_a_decoding_step_spends_no_kernel_on_the_gates_and_batches_the_monitors():
    torch.manual_seed(0)
    L = 4
    cfg = KALAConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=L, intermediate_size=128,
                     vocab_size=97, rotary_pct=0.25, max_position_embeddings=128)
    model = KALAForCausalLM(cfg).eval()
    k = _compute_kernels(model, torch.randint(0, 97, (1, 8)))
    assert k["tanh"] == 0 and k["clamp"] == 0 and k["div"] == 0  # the gate's scale is kept
    assert k["addcmul"] == L + 1  # the bias channel of each layer, and the stacked monitors' norm
    assert k["sigmoid"] == L + 1  # L value heads + one for every monitor
    assert k["baddbmm"] == 2 and k["native_layer_norm"] == 2 * L + 2  # GPT-NeoX's 2L + 1, and one for the monitors
