"""Records -> token ids, LM labels and per-token law targets; batches for training.

A record is rendered with the one chat template (:func:`kala_engine.data.chat_format.format_turn`), part by
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

Replies after a harmful request (reply-token semantics, issue 16): a reply's own tokens say
whether *the reply* is going wrong, not whether the request was harmful. Two rules make the
first reply tokens - where a refusal and a harmful continuation still look alike - mean that:

- **neutral openings**: in a harmful continuation (an assistant part with low labels after a
  harmful request), the leading tokens that are also how some good reply after a harmful request
  begins (the first :data:`NEUTRAL_MAX_TOKENS` tokens of the good replies of the same data set,
  :func:`neutral_openings`) get target 1.0: "I" is not harmful yet, "I probably shouldn't, but
  here's" is from "probably" on. Without this, "I" after a harmful request is trained both
  ways and a refusal ("I can't ...") is stopped at its first token. The continuation is low from
  its first token that no good reply shares.
- **assessment weight**: the ``<|assistant|>`` token after a user turn, where the prompt
  assessment is read, has weight :data:`ASSESS_WEIGHT` in the ethics loss.
- **reply head weight**: ``target_weight`` is :data:`REPLY_HEAD_WEIGHT` on the first
  :data:`REPLY_HEAD_TOKENS` tokens of every reply after a harmful request (good or harmful), 1.0
  on other targeted tokens and 0 on padding: the switch from the request's low scores to the
  reply's own is learnt where it happens, a handful of tokens among thousands of easy ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from kala_engine.constitution import NUM_LAWS
from kala_engine.data import chat_format as chat

IGNORE_INDEX = -100
#: how many leading tokens of the good replies after a harmful request make up the neutral openings
NEUTRAL_MAX_TOKENS = 8
#: the first tokens of a reply after a harmful request, and their weight in the ethics loss
REPLY_HEAD_TOKENS = 4
REPLY_HEAD_WEIGHT = 4.0
#: weight of the ``<|assistant|>`` token after a user turn: the one position where a prompt is
#: assessed, one token among a record's hundred (issue 16)
ASSESS_WEIGHT = 8.0


def _harmful(labels) -> bool:
    return any(float(x) < 1.0 for x in labels)


def neutral_openings(records: Sequence[dict[str, Any]], tokenizer,
                     max_tokens: int = NEUTRAL_MAX_TOKENS) -> frozenset[tuple[int, ...]]:
    """Every token prefix (1 .. ``max_tokens`` tokens, after the ``<|assistant|>`` token) with
    which a good reply (all labels 1.0) that follows a harmful request begins in ``records``."""
    texts = [chat.format_turn(p["role"], p["text"])
             for r in records for prev, p in zip(r["parts"], r["parts"][1:])
             if prev["role"] == "user" and _harmful(prev["labels"]) and p["role"] == "assistant"
             and not _harmful(p["labels"])]
    if not texts:
        return frozenset()
    out: set[tuple[int, ...]] = set()
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        body = ids[1:1 + max_tokens]  # after the role token
        out.update(tuple(body[:n]) for n in range(1, len(body) + 1))
    return frozenset(out)


def render_record(record: dict[str, Any]) -> str:
    """The record's full text in the chat template, ending with EOS."""
    return "".join(chat.format_turn(p["role"], p["text"]) for p in record["parts"]) + chat.EOS


def encode_record(record: dict[str, Any], tokenizer, max_length: int,
                  neutral: frozenset[tuple[int, ...]] | None = None) -> dict[str, list]:
    """Encode one record: ``input_ids``, ``labels``, ``law_targets`` (T x 5), ``target_mask``,
    ``target_weight``.

    Sequences longer than ``max_length`` are cut at the end (the EOS is then dropped).
    ``neutral``: the data set's :func:`neutral_openings` (None: no opening is neutral).
    """
    return encode_records([record], tokenizer, max_length, neutral)[0]


def encode_records(records: Sequence[dict[str, Any]], tokenizer, max_length: int,
                   neutral: frozenset[tuple[int, ...]] | None = None) -> list[dict[str, list]]:
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
        target_weight: list[float] = []
        prev_user: list[float] | None = None
        for p in record["parts"]:
            ids = encoded[pos]
            pos += 1
            targets = [float(x) for x in p["labels"]]
            input_ids += ids
            labels += ids if p["lm"] else [IGNORE_INDEX] * len(ids)
            part_targets = [targets] * len(ids)
            weights = [1.0] * len(ids)
            if p["role"] == "assistant" and prev_user is not None and part_targets:
                # the <|assistant|> token is where a prompt is assessed (the last prompt token at
                # generation time): it carries the user turn's law vector, not the reply's
                part_targets[0] = prev_user
                weights[0] = ASSESS_WEIGHT
                if _harmful(prev_user):  # a reply after a harmful request: see the module docstring
                    head = range(1, min(len(ids), 1 + REPLY_HEAD_TOKENS))
                    weights[head.start:head.stop] = [REPLY_HEAD_WEIGHT] * len(head)
                    if neutral and _harmful(targets):
                        n = 1
                        while n < len(ids) and tuple(ids[1:n + 1]) in neutral:
                            part_targets[n] = [1.0] * NUM_LAWS
                            n += 1
            law_targets += part_targets
            target_mask += [True] * len(ids)
            target_weight += weights
            prev_user = targets if p["role"] == "user" else None
        input_ids.append(eos)
        labels.append(eos if record["parts"][-1]["lm"] else IGNORE_INDEX)
        law_targets.append([1.0] * NUM_LAWS)
        target_mask.append(False)
        target_weight.append(0.0)
        out.append(
            {
                "input_ids": input_ids[:max_length],
                "labels": labels[:max_length],
                "law_targets": law_targets[:max_length],
                "target_mask": target_mask[:max_length],
                "target_weight": target_weight[:max_length],
            }
        )
    return out


class ConstitutionalCollator:
    """Pads encoded examples (right side, pad id) into a batch of tensors.

    Returns ``input_ids (B,T) long, attention_mask (B,T) long, labels (B,T) long (-100 on
    padding), law_targets (B,T,5) float, target_mask (B,T) bool, target_weight (B,T) float``
    (the per-token weight of the law targets, 0 on padding; 1.0 where an example has none),
    with T the longest example
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
        target_weight = torch.zeros((B, T), dtype=torch.float32)
        for i, e in enumerate(examples):
            n = min(len(e["input_ids"]), T)
            input_ids[i, :n] = torch.tensor(e["input_ids"][:n], dtype=torch.long)
            attention[i, :n] = 1
            labels[i, :n] = torch.tensor(e["labels"][:n], dtype=torch.long)
            law_targets[i, :n] = torch.tensor(e["law_targets"][:n], dtype=torch.float32).reshape(n, NUM_LAWS)
            target_mask[i, :n] = torch.tensor(e["target_mask"][:n], dtype=torch.bool)
            target_weight[i, :n] = torch.tensor(e["target_weight"][:n], dtype=torch.float32) if "target_weight" in e \
                else target_mask[i, :n].float()
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "law_targets": law_targets,
            "target_mask": target_mask,
            "target_weight": target_weight,
        }


class JsonlDataset(Dataset):
    """A KALA JSONL file (or a list of records) as encoded examples, encoded once and cached.

    Records are encoded in batches of ``chunk`` the first time an item of the batch is asked for.

    ``split`` keeps only the records of one split ("train", "validation" or "test"). The neutral openings of harmful
    continuations (:func:`neutral_openings`) come from the records kept.
    """

    def __init__(self, source: str | Path | Sequence[dict[str, Any]], tokenizer, max_length: int = 512,
                 split: str | None = None, chunk: int = 512):
        from kala_engine.data.io import load_jsonl

        if isinstance(source, (str, Path)):
            records = load_jsonl(source, split=split)
        else:
            records = [r for r in source if split is None or r["split"] == split]
        self.records = records
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chunk = chunk
        self._cache: list[dict[str, list] | None] = [None] * len(records)
        self.neutral = neutral_openings(records, tokenizer)

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
            for j, enc in enumerate(encode_records(self.records[start:stop], self.tokenizer, self.max_length,
                                                   self.neutral)):
                self._cache[start + j] = enc
            item = self._cache[i]
        return item
