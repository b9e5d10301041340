"""Precision and quantisation set-up of a run, found on the first GPU run (bench/results/gpu):
fp32 master weights from an fp16 checkpoint, one process running runs of different precisions,
and the NF4 base keeping every constitutional part in full precision."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from kala_engine.train.trainer import train
from tests.engine.train.tiny_runs import cfg_for, write_data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_data(tmp_path_factory, 120, 5)


@pytest.fixture
def fp16_pythia(make_neox_dir):
    """A Pythia-like folder stored in fp16, as EleutherAI's checkpoints are, with a tokenizer."""
    from kala_engine.data.tokenizer import train_tokenizer

    model, base = make_neox_dir("pythia-fp16", vocab_size=320)
    model.half().save_pretrained(base)
    assert json.loads((base / "config.json").read_text())["dtype"] == "float16"
    train_tokenizer(["hello world"] * 10, vocab_size=300).save_pretrained(base)
    return base


def test_an_fp16_checkpoint_trains_fp32_master_weights(dataset, tmp_path, fp16_pythia):
    from kala_engine.doctor import make_plan
    from kala_engine.train.model_setup import build_model

    cfg = cfg_for(dataset, tmp_path / "r", base=str(fp16_pythia), max_steps=2, eval_every=0, save_every=0,
                  calibrate=False)
    from kala_engine.data.tokenizer import load_tokenizer

    model = build_model(cfg, load_tokenizer(fp16_pythia), make_plan(cfg.base, batch_size=4, seq_len=48),
                        lambda e: None)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    result = train(cfg, lambda e: None)
    with safe_open(str(tmp_path / "r" / "final" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    assert result["steps"] == 2


def test_one_process_runs_accelerators_of_different_precisions():
    """An fp32 run, then a bf16 one in the same process (the app; a test session): accelerate used
    to refuse the second ("AcceleratorState has already been initialized")."""
    from kala_engine.train.model_setup import fresh_accelerator

    assert fresh_accelerator("no", cpu=True).mixed_precision == "no"
    assert fresh_accelerator("bf16", cpu=True).mixed_precision == "bf16"
    assert fresh_accelerator("no", cpu=True).mixed_precision == "no"


@pytest.mark.parametrize("kind", ["pythia", "kala"])
def test_nf4_keeps_every_constitutional_linear_and_the_head_unquantised(kind, make_neox_dir, tiny_kala, tmp_path):
    """transformers' own matcher (should_convert_module) decides what the 4-bit loader converts:
    each constitutional Linear and the LM head are left alone, every base projection converted."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    from kala_engine.model.modeling_kala import (
        CONSTITUTIONAL_KEYS,
        KALAForCausalLM,
        kala_config_from_gpt_neox,
    )
    from kala_engine.train.model_setup import unquantized_modules

    if kind == "pythia":
        neox, folder = make_neox_dir("p")
        model = KALAForCausalLM(kala_config_from_gpt_neox(neox.config))
    else:
        folder, model = tmp_path / "k", tiny_kala
        model.save_pretrained(folder)
    skip = unquantized_modules(folder, kind if kind == "kala" else "gpt_neox")
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    kept = [n for n in linears if not should_convert_module(n, skip)]
    constitutional = [n for n in linears if any(k in n for k in CONSTITUTIONAL_KEYS)]
    assert len(constitutional) == 4 * model.config.num_hidden_layers  # fc1 and fc2 of the head and the monitor
    assert sorted(kept) == sorted([*constitutional, "embed_out"])
    assert any(n.endswith("query_key_value") for n in linears if n not in kept)
