"""Tokenizer special tokens, record encoding and the collator's targets and masks."""

from __future__ import annotations

import pytest
import torch

from kala_engine.data import chat_format as chat
from kala_engine.data.collate import (
    IGNORE_INDEX,
    ConstitutionalCollator,
    JsonlDataset,
    encode_record,
    render_record,
)
from kala_engine.data.io import write_jsonl
from kala_engine.data.tokenizer import load_tokenizer, prepare_tokenizer, train_tokenizer


def _part_spans(record, tokenizer):
    """Token index ranges of each part (role token .. <|end|>)."""
    spans, pos = [], 0
    for p in record["parts"]:
        n = len(tokenizer(chat.format_turn(p["role"], p["text"]), add_special_tokens=False)["input_ids"])
        spans.append(range(pos, pos + n))
        pos += n
    return spans


def test_special_tokens_are_single_ids_never_split(tokenizer):
    ids = set()
    for t in chat.SPECIAL_TOKENS:
        enc = tokenizer.encode(t, add_special_tokens=False)
        assert len(enc) == 1, t
        ids.add(enc[0])
        # glued to text on both sides, still one id
        enc = tokenizer.encode("abc" + t + "def", add_special_tokens=False)
        assert enc.count(tokenizer.convert_tokens_to_ids(t)) == 1
    assert len(ids) == len(chat.SPECIAL_TOKENS)
    assert tokenizer.eos_token == chat.EOS and tokenizer.pad_token == chat.PAD
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_tokenizer_round_trips_text_and_reloads(tokenizer, tokenizer_dir):
    text = "Héllo wörld! kill -9 1234 — ünïcode ✓ 漢字"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    again = load_tokenizer(tokenizer_dir)
    assert again.encode(text, add_special_tokens=False) == ids
    assert again.pad_token == chat.PAD


def test_load_tokenizer_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_train_tokenizer_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b c"], vocab_size=10)


def test_prepare_tokenizer_adds_chat_tokens_to_a_neox_like_tokenizer():
    """A Pythia-like tokenizer (only <|endoftext|>, no pad) gets the chat tokens and a pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        ["hello world", "the user said hi"] * 20,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    neox = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    before = len(neox)
    assert len(neox.encode(chat.USER, add_special_tokens=False)) > 1
    prepared = prepare_tokenizer(neox)
    assert prepared is neox
    assert len(neox) == before + len(chat.SPECIAL_TOKENS) - 1  # all but <|endoftext|> added
    for t in chat.SPECIAL_TOKENS:
        assert len(neox.encode(t, add_special_tokens=False)) == 1
    assert neox.pad_token == chat.PAD and neox.eos_token == chat.EOS
    n = len(neox)
    prepare_tokenizer(neox)
    assert len(neox) == n, "preparing twice adds nothing"


def test_encoding_matches_the_chat_template(small_records, tokenizer):
    for r in small_records[:50]:
        enc = encode_record(r, tokenizer, 4096)
        full = tokenizer(render_record(r), add_special_tokens=False)["input_ids"]
        assert enc["input_ids"] == full
        assert enc["input_ids"][-1] == tokenizer.eos_token_id
        n = len(full)
        assert len(enc["labels"]) == len(enc["law_targets"]) == len(enc["target_mask"]) == n


def _first(records, kind):
    return next(r for r in records if r["kind"] == kind)


def test_harmful_request_tokens_low_on_violated_law_and_reply_at_one(small_records, tokenizer):
    r = _first(small_records, "harmful_request")
    enc = encode_record(r, tokenizer, 4096)
    spans = _part_spans(r, tokenizer)
    law = r["primary_law"]
    prev = None
    for p, span in zip(r["parts"], spans, strict=True):
        first, last = span[0], span[-1]
        # the role token and the closing <|end|> belong to the part
        assert enc["input_ids"][first] == tokenizer.convert_tokens_to_ids(chat.ROLE_TOKENS[p["role"]])
        assert enc["input_ids"][last] == tokenizer.convert_tokens_to_ids(chat.END)
        if p["role"] == "assistant" and prev is not None and prev["role"] == "user":
            # <|assistant|> is where the prompt is assessed: it carries the request's labels
            assert enc["law_targets"][first] == prev["labels"] and enc["law_targets"][first][law] < 0.5
            span = span[1:]
        for i in span:
            assert enc["law_targets"][i] == p["labels"] and enc["target_mask"][i]
        prev = p
        if p["role"] == "user":
            assert all(enc["law_targets"][i][law] < 0.5 for i in span)
            assert all(enc["law_targets"][i][k] == 1.0 for i in span for k in range(5) if p["labels"][k] == 1.0)
            assert all(enc["labels"][i] == IGNORE_INDEX for i in span)
        if p["role"] == "assistant":
            assert all(enc["law_targets"][i] == [1.0] * 5 for i in span)
            assert [enc["labels"][i] for i in span] == [enc["input_ids"][i] for i in span]


def test_harmful_completion_tokens_carry_targets_but_no_lm_loss(small_records, tokenizer):
    r = _first(small_records, "harmful_completion")
    enc = encode_record(r, tokenizer, 4096)
    span = _part_spans(r, tokenizer)[-1]
    law = r["primary_law"]
    assert all(enc["labels"][i] == IGNORE_INDEX for i in span)
    assert all(enc["target_mask"][i] and enc["law_targets"][i][law] < 0.5 for i in span)
    assert enc["labels"][-1] == IGNORE_INDEX and enc["target_mask"][-1] is False  # EOS after a negative


def test_benign_tokens_target_one_with_lm_loss(small_records, tokenizer):
    r = _first(small_records, "benign")
    enc = encode_record(r, tokenizer, 4096)
    assert all(t == [1.0] * 5 for t in enc["law_targets"])
    assert enc["labels"][-1] == tokenizer.eos_token_id  # learns to stop
    reply = _part_spans(r, tokenizer)[-1]
    assert all(enc["labels"][i] == enc["input_ids"][i] for i in reply)


def test_truncation_cuts_every_field(small_records, tokenizer):
    r = max(small_records, key=lambda r: len(render_record(r)))
    enc = encode_record(r, tokenizer, 16)
    assert all(len(enc[k]) == 16 for k in ("input_ids", "labels", "law_targets", "target_mask"))
    with pytest.raises(ValueError, match="max_length"):
        encode_record(r, tokenizer, 0)


def test_collator_shapes_padding_and_masks(small_records, tokenizer):
    examples = [encode_record(r, tokenizer, 64) for r in small_records[:6]]
    batch = ConstitutionalCollator(tokenizer, max_length=64)(examples)
    B = 6
    T = max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape == (B, T) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].shape == (B, T) and batch["attention_mask"].dtype == torch.long
    assert batch["labels"].shape == (B, T) and batch["labels"].dtype == torch.long
    assert batch["law_targets"].shape == (B, T, 5) and batch["law_targets"].dtype == torch.float32
    assert batch["target_mask"].shape == (B, T) and batch["target_mask"].dtype == torch.bool
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == e["input_ids"]
        assert batch["labels"][i, :n].tolist() == e["labels"]
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][i].sum() == n
        assert not batch["target_mask"][i, n:].any()
    assert (batch["law_targets"] < 0.5).any(), "a generated batch is not all 1.0"


def test_collator_needs_a_pad_token():
    class NoPad:
        pad_token_id = None

    with pytest.raises(ValueError, match="prepare_tokenizer"):
        ConstitutionalCollator(NoPad())


def test_jsonl_dataset_from_file_and_split(small_records, tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, small_records)
    ds = JsonlDataset(path, tokenizer, max_length=128, split="train")
    assert 0 < len(ds) < len(small_records)
    assert all(r["split"] == "train" for r in ds.records)
    assert ds[0] is ds[0]  # cached
    assert ds[-1] == encode_record(ds.records[-1], tokenizer, 128, ds.neutral)  # with the set's neutral openings
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=ConstitutionalCollator(tokenizer, 128))
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 4
    with pytest.raises(IndexError):
        ds[len(ds)]
