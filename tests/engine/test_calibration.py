"""Calibrated thresholds: computed from held-out prompts, saved with the model, used by default."""

from __future__ import annotations

import pytest
import torch

from kala_engine.calibration import calibrate_thresholds, prompt_of
from kala_engine.constitution import model_thresholds, resolve_thresholds


def _records():
    out = []
    for i in range(40):
        out.append({"kind": "benign", "parts": [{"role": "user", "text": f"nice question {i}", "labels": [1.0] * 5,
                                                  "lm": True}]})
    for i in range(10):
        labels = [1.0] * 5
        labels[1] = 0.05
        out.append({"kind": "harmful_request",
                    "parts": [{"role": "user", "text": f"bad request {i}", "labels": labels, "lm": False},
                              {"role": "assistant", "text": "no", "labels": [1.0] * 5, "lm": True}]})
    return out


class _FakeTok:
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (2 if "bad" in text else 0)] * 3}


class _FakeModel(torch.nn.Module):
    """Law 1 score 0.3 on prompts holding token 3 ('bad'), else 0.9 + a little noise by length."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, attention_mask=None, use_cache=False):
        s = torch.full((*x.shape, 5), 0.95)
        s[..., 1] = torch.where(x == 3, 0.3, 0.9)
        return type("O", (), {"law_scores": s})()


def test_prompt_of_stops_at_the_first_user_turn():
    text, labels = prompt_of(_records()[-1])
    assert text.endswith("<|assistant|>") and "no" not in text.split("<|user|>")[1].split("<|end|>")[1]
    assert labels[1] == 0.05


def test_calibration_separates_and_respects_the_benign_rate():
    cal = calibrate_thresholds(_FakeModel(), _FakeTok(), _records(), max_fpr=0.05)
    t1 = cal["thresholds"][1]
    assert 0.3 < t1 <= 0.9
    assert cal["laws"][1]["prompt_tpr"] == 1.0 and cal["laws"][1]["prompt_fpr"] <= 0.05
    assert cal["thresholds"][0] is None  # no harmful example for Law 0: keeps the constitution's


def test_model_thresholds_are_the_default_and_an_explicit_threshold_wins(tiny_kala):
    tiny_kala.config.law_thresholds = [None, 0.8, None, None, None]
    assert resolve_thresholds(None, model_thresholds(tiny_kala)) == (0.5, 0.8, 0.5, 0.5, 0.5)
    assert resolve_thresholds(0.3, model_thresholds(tiny_kala)) == (0.3,) * 5


def test_bad_calibrated_thresholds_rejected():
    from kala_engine.modeling_kala import KALAConfig

    with pytest.raises(ValueError, match="law_thresholds"):
        KALAConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                   vocab_size=97, law_thresholds=[0.5, 2.0, 0.5, 0.5, 0.5])
