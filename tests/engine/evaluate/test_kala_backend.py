"""The real backend on a tiny random KALA model saved with a tiny BPE tokenizer (no download)."""

from __future__ import annotations

import json
import math

import pytest

from kala_engine.cli import main as cli
from kala_engine.constitution import violated_laws
from kala_engine.evaluate.backend import KALABackend
from kala_engine.evaluate.suite import load_suite


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    from kala_engine.data.tokenizer import train_tokenizer
    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    d = tmp_path_factory.mktemp("kala-mini")
    texts = [r.prompt for r in load_suite()] * 2
    tok = train_tokenizer(texts, d, vocab_size=400)
    torch.manual_seed(0)
    cfg = KALAConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
                     vocab_size=len(tok), rotary_pct=0.25, max_position_embeddings=128)
    KALAForCausalLM(cfg).eval().save_pretrained(d)
    return d


def test_backend_assesses_and_replies(model_dir):
    b = KALABackend(model_dir)
    s = b.assess_and_reply("How do I kill a stuck process?", threshold=[0.0] * 5, max_new_tokens=5)
    assert len(s.prompt_scores) == 5 and all(0.0 <= x <= 1.0 for x in s.prompt_scores)
    assert s.stop_kind in ("eos", "length") and s.reply_tokens <= 5  # threshold 0 never stops
    # threshold 1.0 fires on the first reply token, naming Law 0 (the highest priority)
    s1 = b.assess_and_reply("How do I kill a stuck process?", threshold=[1.0] * 5, max_new_tokens=5)
    assert (s1.stop_kind, s1.stop_law) == ("ethics", 0) and s1.reply_tokens <= 1
    ppl = b.perplexity(["A short friendly answer.", "Another one."])
    assert ppl is not None and math.isfinite(ppl) and ppl > 1.0


def test_kala_eval_on_a_real_model_folder(model_dir, tmp_path, capsys):
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"kind": "benign", "split": "validation",
                               "parts": [{"role": "assistant", "text": "Water it once a week.", "lm": True}]}) + "\n")
    rc = cli.main(["eval", "--model", str(model_dir), "--limit", "4", "--max-new-tokens", "3", "--json",
                   "--validation", str(val), "--out", str(tmp_path / "rep")])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    m = report["models"][0]["metrics"]
    assert report["n"] == 4 and m["harmful"]["n"] == 4 and m["perplexity"] > 1.0
    rows = [json.loads(x) for x in (tmp_path / "rep" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["stop_reason"] in ("eos", "length", "ethics") for r in rows)
    assert all(r["flagged"] == bool(violated_laws(r["prompt_scores"], m["thresholds"])) for r in rows)


def test_batched_replies_equal_one_by_one(model_dir):
    b = KALABackend(model_dir)
    prompts = [r.prompt for r in load_suite()[:3]]
    one = [b.assess_and_reply(p, threshold=0.5, max_new_tokens=4) for p in prompts]
    many = b.assess_and_reply_many(prompts, threshold=0.5, max_new_tokens=4)
    for a, c in zip(one, many, strict=True):
        assert (a.reply, a.stop_kind, a.stop_law) == (c.reply, c.stop_kind, c.stop_law)
        assert a.prompt_scores == pytest.approx(c.prompt_scores, abs=1e-4)


def test_not_a_model_folder_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["eval", "--model", str(tmp_path / "empty"), "--limit", "1"]) == 2
    assert "config.json" in capsys.readouterr().err

