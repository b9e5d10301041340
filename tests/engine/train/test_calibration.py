"""Calibrated thresholds: computed from held-out prompts, saved with the model, used by default."""

from __future__ import annotations

import pytest
import torch

from kala_engine.constitution import model_thresholds, resolve_thresholds
from kala_engine.train.calibration import calibrate_thresholds, prompt_of


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
    from kala_engine.model.modeling_kala import KALAConfig

    with pytest.raises(ValueError, match="law_thresholds"):
        KALAConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                   vocab_size=97, law_thresholds=[0.5, 2.0, 0.5, 0.5, 0.5])


class _ReplyTok:
    """Text -> token ids: a prompt's words are 1 (benign) or 3 ('bad'); a reply "r<score>" is
    three tokens whose id is 100 + the Law 1 score in hundredths."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        if text.startswith("r") and text[1:].isdigit():
            return {"input_ids": [100 + int(text[1:])] * 3}
        return {"input_ids": [1 + (2 if "bad" in text else 0)] * 3}


class _ReplyModel(_FakeModel):
    """Prompts as _FakeModel; a reply token 100 + s scores s / 100 on Law 1."""

    def forward(self, x, attention_mask=None, use_cache=False):
        s = torch.full((*x.shape, 5), 0.95)
        s[..., 1] = torch.where(x >= 100, (x - 100).float() / 100, torch.where(x == 3, 0.3, 0.9))
        return type("O", (), {"law_scores": s})()


def _reply_records(refusal_scores):
    """100 benign exchanges whose replies score 0.95, and harmful requests answered by
    refusals scoring ``refusal_scores`` on Law 1 (their first tokens still carry the request)."""
    out = []
    for i in range(100):
        out.append({"kind": "benign", "parts": [
            {"role": "user", "text": f"nice question {i}", "labels": [1.0] * 5, "lm": False},
            {"role": "assistant", "text": "r95", "labels": [1.0] * 5, "lm": True}]})
    for i, score in enumerate(refusal_scores):
        labels = [1.0] * 5
        labels[1] = 0.05
        out.append({"kind": "harmful_request", "parts": [
            {"role": "user", "text": f"bad request {i}", "labels": labels, "lm": False},
            {"role": "assistant", "text": f"r{score}", "labels": [1.0] * 5, "lm": True}]})
    return out


def test_reply_thresholds_are_calibrated_apart_and_spare_refusals():
    """Prompt and reply thresholds are calibrated apart (issue 16). 100 benign exchanges (replies
    0.95) and 24 refusals to harmful requests whose lowest token scores 0.40 ... 0.63 on Law 1: one
    shared 5 % quantile of all good replies would stop about a quarter of the refusals; the reply
    threshold stops at most 2 % of them, and the prompt threshold comes from the prompts alone
    (0.3 harmful vs 0.9 benign), so it is no longer dragged down by the replies."""
    scores = list(range(40, 64))
    cal = calibrate_thresholds(_ReplyModel(), _ReplyTok(), _reply_records(scores), max_fpr=0.05)
    pooled = float(torch.quantile(torch.tensor([0.95] * 100 + [s / 100 for s in scores]), 0.05))
    assert sum(s / 100 < pooled for s in scores) / len(scores) >= 0.2  # what one shared threshold did
    r1 = cal["reply_thresholds"][1]
    stopped = sum(s / 100 < r1 for s in scores) / len(scores)
    assert stopped <= 0.02 and cal["laws"][1]["refusals_stopped"] == pytest.approx(stopped, abs=1e-4)
    assert cal["refusals_stopped"] <= 0.02 and cal["good_replies_stopped"] <= 0.05
    t1 = cal["thresholds"][1]
    assert 0.3 < t1 <= 0.9 and t1 > r1  # every harmful prompt flagged, no benign one
    assert cal["laws"][1]["prompt_tpr"] == 1.0 and cal["prompt_flagged"] == 0.0
    assert cal["thresholds"][0] is None and cal["reply_thresholds"][0] is None  # no Law 0 example


def test_joint_thresholds_hold_the_limit_on_the_union_of_laws():
    """Five laws each flagging a different 4 % of 1000 benign prompts would flag 20 % together at
    their own 4 % quantiles; the joint level keeps the union at the limit."""
    from kala_engine.constitution import is_violated
    from kala_engine.train.calibration import joint_thresholds

    g = torch.Generator().manual_seed(0)
    neg = 0.9 + 0.1 * torch.rand(1000, 5, generator=g)
    for k in range(5):  # 40 rows per law dip low, a different block for each law
        neg[k * 40:(k + 1) * 40, k] = torch.linspace(0.2, 0.6, 40)
    t = joint_thresholds([neg], [0.05])
    assert len(t) == 5 and all(t)
    union = float(is_violated(neg, torch.tensor(t)).any(dim=-1).float().mean())
    assert 0.03 <= union <= 0.05
    own = torch.tensor([float(torch.quantile(neg[:, k], 0.04)) for k in range(5)])
    assert float(is_violated(neg, own + 1e-6).any(dim=-1).float().mean()) > 0.15  # per-law quantiles


def test_a_model_judges_prompts_and_replies_with_its_two_sets(tiny_kala, tmp_path):
    """reply_thresholds stop replies, law_thresholds flag prompts; without a reply set the prompt
    set does both; an explicit threshold does both; a saved folder reads the same."""
    import json

    from kala_engine.constitution import saved_thresholds, thresholds_in_force

    tiny_kala.config.law_thresholds = [0.6, 0.7, None, None, None]
    assert model_thresholds(tiny_kala, reply=True) == [0.6, 0.7, None, None, None]
    tiny_kala.config.reply_thresholds = [0.2, 0.3, 0.4, 0.5, 0.1]
    assert resolve_thresholds(None, model_thresholds(tiny_kala)) == (0.6, 0.7, 0.5, 0.5, 0.5)
    assert resolve_thresholds(None, model_thresholds(tiny_kala, reply=True)) == (0.2, 0.3, 0.4, 0.5, 0.1)
    (tmp_path / "config.json").write_text(json.dumps({"law_thresholds": [0.6] * 5, "reply_thresholds": [0.2] * 5}))
    assert saved_thresholds(tmp_path) == [0.6] * 5 and saved_thresholds(tmp_path, reply=True) == [0.2] * 5
    assert thresholds_in_force(None, tmp_path, reply=True) == (0.2,) * 5
    assert thresholds_in_force(0.4, tmp_path, reply=True) == (0.4,) * 5
    with pytest.raises(ValueError, match="reply_thresholds"):
        from kala_engine.model.modeling_kala import KALAConfig

        KALAConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                   vocab_size=97, reply_thresholds=[0.5, 2.0, 0.5, 0.5, 0.5])


def _split(harm, benign):
    """(benign scores, harmful scores) as (N, 5) tensors: every law scores the same."""
    return (torch.tensor(benign, dtype=torch.float32)[:, None].repeat(1, 5),
            torch.tensor(harm, dtype=torch.float32)[:, None].repeat(1, 5))


def test_prompt_thresholds_start_from_the_constitution_and_move_only_as_far_as_needed():
    """Separable validation scores leave the constitution's 0.5 alone (the benign edge at 0.99
    would flag every new wording under 0.99); compressed scores (harmful 0.6-0.8) move the
    thresholds up until 95 % of the harmful prompts are caught, never past the benign limit."""
    from kala_engine.train.calibration import prompt_thresholds

    free = [None] * 5
    neg, pos = _split([0.05 + 0.002 * i for i in range(100)], [0.995] * 95 + [0.992] * 5)
    t = prompt_thresholds(neg, pos, 0.05, 0.95, free)
    assert t == pytest.approx([0.5] * 5)
    neg, pos = _split([0.6 + 0.002 * i for i in range(100)], [0.97 + 0.0002 * i for i in range(100)])
    t = prompt_thresholds(neg, pos, 0.05, 0.95, free)
    caught = float((pos[:, 0] < t[0]).float().mean())
    assert 0.95 <= caught and t[0] < 0.8 and float((neg[:, 0] < t[0]).float().mean()) == 0.0
    # overlapping classes: the recall target cannot be met within the limit -> the benign limit's edge
    neg, pos = _split([0.9] * 100, [0.9 + 0.0009 * i for i in range(100)])
    t = prompt_thresholds(neg, pos, 0.05, 0.95, free)
    assert float((neg[:, 0] < t[0]).float().mean()) <= 0.05
