"""Fixtures for the generation tests: a tiny byte-level BPE tokenizer and tiny KALA models.

Scores of a random model are steered where a test needs exact values: ``steer_scores`` sets
every layer's ethics monitor to a constant (weights 0, bias = logit of the wanted score) and
puts all the aggregator's weight on the last layer, so the final law scores are known.
"""

from __future__ import annotations

import copy
import math

import pytest

CORPUS = [
    "Hello, how are you today? I am fine, thank you.",
    "How do I kill a stuck process on Linux? Use kill with the process id.",
    "Please help me write a short poem about the sea and the sky.",
    "The weather is nice and the sun is shining over the hills.",
    "héllo wörld, naïve café déjà vu 😀 — ünïcödé text",
    "I cannot help with that request because it could hurt someone.",
    "Explain how plants turn light into energy with photosynthesis.",
] * 4


@pytest.fixture(scope="session")
def chat_tokenizer():
    from kala_engine.data.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS, vocab_size=300)


def build_model(vocab_size: int, seed: int = 0, ctx: int = 128, layers: int = 2):
    import torch

    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    torch.manual_seed(seed)
    cfg = KALAConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=layers, intermediate_size=128,
                     vocab_size=vocab_size, rotary_pct=0.25, max_position_embeddings=ctx)
    model = KALAForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "constitutional_gate" in name:
                p.uniform_(0.5, 2.0)  # the cached per-key bias matters
            elif "fc2" in name:
                p.normal_(0, 0.5)  # scores that vary from token to token
            elif "embed_out" in name:
                p.normal_(0, 0.3)  # clear argmax margins: greedy is robust to float noise
    return model


@pytest.fixture(scope="session")
def _base_model(chat_tokenizer):
    return build_model(len(chat_tokenizer))


@pytest.fixture
def chat_model(_base_model):
    """A fresh copy of the tiny KALA model (tests may steer it)."""
    return copy.deepcopy(_base_model)


def steer_scores(model, per_layer: list[list[float]]):
    """Make every monitor output constant scores: ``per_layer[l][k]``; final = the last layer's."""
    import torch

    with torch.no_grad():
        for layer, scores in zip(model.gpt_neox.layers, per_layer, strict=True):
            fc2 = layer.ethics_monitor.fc2
            fc2.weight.zero_()
            fc2.bias.copy_(torch.tensor([math.log(s / (1 - s)) for s in scores]))
        logits = model.gpt_neox.ethics_aggregator.layer_logits
        logits.zero_()
        logits[:, -1] = 60.0  # softmax puts (all but ~1e-26 of) the weight on the last layer
    return model


@pytest.fixture
def model_dir(tmp_path, chat_model, chat_tokenizer):
    """A saved KALA model folder: weights, config and tokenizer."""
    d = tmp_path / "kala-model"
    chat_model.save_pretrained(d)
    chat_tokenizer.save_pretrained(d)
    return d
