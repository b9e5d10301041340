"""Shared fixtures: tiny GPT-NeoX / KALA models built locally (never downloaded)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


def tiny_neox_config(**overrides):
    from transformers import GPTNeoXConfig

    kw = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
              vocab_size=97, rotary_pct=0.25, max_position_embeddings=128, use_parallel_residual=True)
    kw.update(overrides)
    return GPTNeoXConfig(**kw)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache for the test: no base model was ever downloaded."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def make_neox_dir(tmp_path):
    """Factory: build a random tiny GPTNeoXForCausalLM, save it, return (model, folder)."""
    import torch
    from transformers import GPTNeoXForCausalLM

    def make(name="neox", seed=0, **overrides):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(tiny_neox_config(**overrides)).eval()
        d = tmp_path / name
        model.save_pretrained(d)
        return model, d

    return make


@pytest.fixture
def tiny_kala():
    """A tiny KALA model with non-zero gates and trained-looking heads (random, deterministic)."""
    import torch

    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    torch.manual_seed(0)
    cfg = KALAConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                     vocab_size=97, rotary_pct=0.25, max_position_embeddings=128)
    model = KALAForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "constitutional_gate" in name:
                p.uniform_(0.5, 2.0)
            elif "fc2" in name:
                p.normal_(0, 0.5)
    return model
