"""Constitutional-AI mode: draft -> critique -> revision, with a scripted reply and a tiny model."""

from __future__ import annotations

import pytest

from kala_engine.cli.main import main
from kala_engine.constitution import load_constitution
from kala_engine.data.constitutional_ai import generate_cai_dataset
from kala_engine.data.io import load_jsonl
from kala_engine.data.schema import validate_record


def test_pipeline_with_a_scripted_model():
    calls = []

    def reply(messages):
        calls.append(list(messages))
        return ["Sure, here is how.", "That draft helps with harm.", "I won't help with that."][(len(messages) - 1) // 2]

    records, skipped = generate_cai_dataset(reply, count=12, seed=1)
    assert len(records) == 12 and not skipped
    assert len(calls) == 36
    c = load_constitution()
    for r in records:
        assert validate_record(r) == []
        user, draft, critique, revision = r["parts"]
        assert r["kind"] == "critique_revision"
        assert draft["text"] == "Sure, here is how." and draft["lm"] is False and min(draft["labels"]) < 1.0
        assert critique["text"].endswith("That draft helps with harm.")
        assert revision["text"] == "I won't help with that." and revision["lm"] is True
        sampled = [k for k in range(5) if draft["labels"][k] < 1.0][0]
        assert user["labels"][sampled] < 1.0, "the critique law is one the request violates"
        assert c[sampled].title in critique["text"]
    # the critique request quoted the sampled law's text to the model
    assert any(law.text in calls[1][-1]["content"] for law in c)


def test_empty_model_output_is_skipped():
    records, skipped = generate_cai_dataset(lambda messages: "   ", count=3, seed=0)
    assert records == [] and sum(skipped.values()) == 3


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = GPTNeoXForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_cli_with_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cai.jsonl"
    code = main(["data", "cai", "--model", str(tiny_model_dir), "--out", str(out), "--count", "2",
                 "--max-new-tokens", "8"])
    assert code == 0, capsys.readouterr().err
    records = load_jsonl(out)
    assert len(records) == 2 and all(r["kind"] == "critique_revision" for r in records)
    assert "wrote 2 critique_revision records" in capsys.readouterr().out


def test_cli_missing_model_folder(tmp_path, capsys):
    assert main(["data", "cai", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "no such model folder" in capsys.readouterr().err
