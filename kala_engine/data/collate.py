"""Records -> token ids, LM labels and per-token law targets; batches for training.

A record is rendered with the one chat template (:func:`kala_engine.chat.format_turn`), part by
part, so training and generation see the same text. Each part's role token and its closing
``<|end|>`` belong to that part: they get its law targets and its LM flag. An EOS token closes
the record (LM loss when the last part has LM loss, no law target).

Per token (DESIGN.md "Data and targets"):

- ``labels``: the token id where its part has ``lm`` true, else -100 (harmful completions,
  harmful requests, flawed drafts, system prompts) and -100 on padding. Not shifted: the model
  shifts them, as Hugging Face models do.
- ``law_targets``: the part's five labels - except an assistant part's ``<|assistant|>`` token,
  which follows a user turn and carries *that turn's* labels: it is the last token of a prompt
  at generation time, where the prompt assessment is read. ``target_mask`` is True on every
  token of a part and False on the final EOS and on padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .. import chat
from ..constitution import NUM_LAWS

IGNORE_INDEX = -100


def render_record(record: dict[str, Any]) -> str:
    """The record's full text in the chat template, ending with EOS."""
    return "".join(chat.format_turn(p["role"], p["text"]) for p in record["parts"]) + chat.EOS


def encode_record(record: dict[str, Any], tokenizer, max_length: int) -> dict[str, list]:
    """Encode one record: ``input_ids``, ``labels``, ``law_targets`` (T x 5), ``target_mask``.

    Sequences longer than ``max_length`` are cut at the end (the EOS is then dropped).
    """
    return encode_records([record], tokenizer, max_length)[0]


def encode_records(records: Sequence[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, list]]:
    """:func:`encode_record` for many records, with one batched tokenizer call (much faster)."""
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    texts = [chat.format_turn(p["role"], p["text"]) for r in records for p in r["parts"]]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    eos = tokenizer.convert_tokens_to_ids(chat.EOS)
    out = []
    pos = 0
    for record in records:
        input_ids: list[int] = []
        labels: list[int] = []
        law_targets: list[list[float]] = []
        target_mask: list[bool] = []
        prev_user: list[float] | None = None
        for p in record["parts"]:
            ids = encoded[pos]
            pos += 1
            targets = [float(x) for x in p["labels"]]
            input_ids += ids
            labels += ids if p["lm"] else [IGNORE_INDEX] * len(ids)
            part_targets = [targets] * len(ids)
            if p["role"] == "assistant" and prev_user is not None and part_targets:
                # the <|assistant|> token is where a prompt is assessed (the last prompt token at
                # generation time): it carries the user turn's law vector, not the reply's
                part_targets[0] = prev_user
            law_targets += part_targets
            target_mask += [True] * len(ids)
            prev_user = targets if p["role"] == "user" else None
        input_ids.append(eos)
        labels.append(eos if record["parts"][-1]["lm"] else IGNORE_INDEX)
        law_targets.append([1.0] * NUM_LAWS)
        target_mask.append(False)
        out.append(
            {
                "input_ids": input_ids[:max_length],
                "labels": labels[:max_length],
                "law_targets": law_targets[:max_length],
                "target_mask": target_mask[:max_length],
            }
        )
    return out


class ConstitutionalCollator:
    """Pads encoded examples (right side, pad id) into a batch of tensors.

    Returns ``input_ids (B,T) long, attention_mask (B,T) long, labels (B,T) long (-100 on
    padding), law_targets (B,T,5) float, target_mask (B,T) bool``, with T the longest example
    (cut at ``max_length``), optionally rounded up to ``pad_to_multiple_of``.
    """

    def __init__(self, tokenizer, max_length: int = 512, pad_to_multiple_of: int | None = None):
        pad = tokenizer.pad_token_id
        if pad is None:
            raise ValueError("the tokenizer has no pad token; run prepare_tokenizer(tokenizer) first")
        self.pad_id = int(pad)
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        T = min(max(len(e["input_ids"]) for e in examples), self.max_length)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            T = min(-(-T // m) * m, max(self.max_length, T))
        B = len(examples)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        attention = torch.zeros((B, T), dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        law_targets = torch.ones((B, T, NUM_LAWS), dtype=torch.float32)
        target_mask = torch.zeros((B, T), dtype=torch.bool)
        for i, e in enumerate(examples):
            n = min(len(e["input_ids"]), T)
            input_ids[i, :n] = torch.tensor(e["input_ids"][:n], dtype=torch.long)
            attention[i, :n] = 1
            labels[i, :n] = torch.tensor(e["labels"][:n], dtype=torch.long)
            law_targets[i, :n] = torch.tensor(e["law_targets"][:n], dtype=torch.float32).reshape(n, NUM_LAWS)
            target_mask[i, :n] = torch.tensor(e["target_mask"][:n], dtype=torch.bool)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "law_targets": law_targets,
            "target_mask": target_mask,
        }


class JsonlDataset(Dataset):
    """A KALA JSONL file (or a list of records) as encoded examples, encoded once and cached.

    Records are encoded in batches of ``chunk`` the first time an item of the batch is asked for.

    ``split`` keeps only "train" or "validation" records.
    """

    def __init__(self, source: str | Path | Sequence[dict[str, Any]], tokenizer, max_length: int = 512,
                 split: str | None = None, chunk: int = 512):
        from .io import load_jsonl

        if isinstance(source, (str, Path)):
            records = load_jsonl(source, split=split)
        else:
            records = [r for r in source if split is None or r["split"] == split]
        self.records = records
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chunk = chunk
        self._cache: list[dict[str, list] | None] = [None] * len(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, list]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} records")
        i %= len(self)
        item = self._cache[i]
        if item is None:
            start = i - i % self.chunk
            stop = min(start + self.chunk, len(self))
            for j, enc in enumerate(encode_records(self.records[start:stop], self.tokenizer, self.max_length)):
                self._cache[start + j] = enc
            item = self._cache[i]
        return item
