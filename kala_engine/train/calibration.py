"""Per-law thresholds calibrated on held-out data, saved with a trained model.

A freshly trained small model's law scores are compressed (harmful prompts at 0.6-0.8 where
benign ones sit near 1.0), so the constitution's default threshold of 0.5 flags nothing. After
training, on the validation split - template families the model never saw - two sets of
thresholds are calibrated apart (issue 16), each from one quantile level shared by the five laws
(:func:`joint_thresholds`; a flag or a stop fires when *any* law is under, so the limits hold for
the union, not per law):

* **prompt thresholds** (``config.law_thresholds``), from the prompt assessment (law scores at
  the ``<|assistant|>`` token, as at generation time): the constitution's, moved toward the
  benign limit (at most ``max_fpr`` of the benign prompts flagged) only as far as needed to flag
  ``1 - max_fpr`` of the harmful prompts (:func:`prompt_thresholds`);
* **reply thresholds** (``config.reply_thresholds``), from the lowest score over the tokens of
  each ethical or benign reply: at most ``max_fpr`` of the good replies and at most
  :data:`MAX_REFUSALS_STOPPED` of the good replies *to harmful requests* (refusals, safe answers)
  stopped.

One shared set used to be the lower of the two: a refusal names the harm it refuses, so its
lowest token sits below most benign prompts' assessments, and the prompt flags paid for it (every
law's prompt false-flag rate ended far under ``max_fpr``) while refusals were still cut short.
Both sets become the model's defaults in chat, ``kala eval`` and the app; the numbers behind them
go into run.json. An explicit threshold judges prompt and reply alike and always wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kala_engine.constitution import NUM_LAWS, is_violated, load_constitution
from kala_engine.data import chat_format as chat

BENIGN_KINDS = ("benign", "benign_alarming")
MIN_NEGATIVES, MIN_POSITIVES = 20, 5


def prompt_of(record: dict) -> tuple[str, list[float]] | None:
    """The record's prompt up to its first user turn (ending in <|assistant|>) and that turn's labels."""
    messages = []
    for p in record["parts"]:
        messages.append({"role": p["role"], "content": p["text"]})
        if p["role"] == "user":
            return chat.format_conversation(messages), [float(x) for x in p["labels"]]
        if p["role"] != "system":
            return None
    return None


@torch.no_grad()
def prompt_scores(model, tokenizer, prompts: Sequence[str], max_length: int = 256, batch_size: int = 16) -> torch.Tensor:
    """Law scores at each prompt's last token, (N, 5)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    pad = tokenizer.pad_token_id
    for i in range(0, len(prompts), batch_size):
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"][-max_length:] for p in prompts[i:i + batch_size]]
        T = max(len(x) for x in ids)
        x = torch.full((len(ids), T), pad, dtype=torch.long)
        m = torch.zeros((len(ids), T), dtype=torch.long)
        for j, row in enumerate(ids):
            x[j, : len(row)] = torch.tensor(row)
            m[j, : len(row)] = 1
        s = model(x.to(device), attention_mask=m.to(device), use_cache=False).law_scores.float()
        last = (m.sum(1) - 1).to(device)
        out.append(s[torch.arange(len(ids), device=device), last].cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, NUM_LAWS)


@torch.no_grad()
def reply_min_scores(model, tokenizer, records: Sequence[dict], max_length: int = 256
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per record with a reply after its first user turn: the lowest law scores over the reply's
    tokens, as generation would score them, (N, 5); whether the reply is a good one (all
    labels 1.0) rather than a harmful completion; and whether it answers a harmful request (a
    user turn with a label under 1.0)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    mins, good, after_harm = [], [], []
    for r in records:
        got = prompt_of(r)
        parts = r["parts"]
        idx = next((i for i, p in enumerate(parts) if p["role"] == "user"), None)
        if got is None or idx is None or idx + 1 >= len(parts) or parts[idx + 1]["role"] != "assistant":
            continue
        reply = parts[idx + 1]
        p_ids = tokenizer(got[0], add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(reply["text"], add_special_tokens=False)["input_ids"]
        ids = (p_ids + r_ids)[-max_length:]
        n_reply = min(len(r_ids), len(ids) - 1)
        if n_reply < 1:
            continue
        s = model(torch.tensor([ids], device=device), use_cache=False).law_scores[0, -n_reply:].float()
        mins.append(s.min(dim=0).values.cpu())
        good.append(all(float(x) >= 1.0 for x in reply["labels"]))
        after_harm.append(any(x < 1.0 for x in got[1]))
    model.train(was_training)
    if not mins:
        return torch.zeros(0, NUM_LAWS), torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)
    return torch.stack(mins), torch.tensor(good), torch.tensor(after_harm)


#: at most this share of the good replies *to harmful requests* (refusals, safe answers) may be
#: stopped by the reply thresholds (issue 16: "refusals cut short by the stop <= 2 %")
MAX_REFUSALS_STOPPED = 0.02
_LEVELS = 200  # grid of the joint quantile search


def joint_thresholds(columns: Sequence[torch.Tensor], limits: Sequence[float],
                     fixed: Sequence[float | None] | None = None) -> list[float | None] | None:
    """Per-law thresholds from one shared quantile level: the largest ``q`` on a grid such that, for
    each set ``i`` of ``columns`` (an (N_i, 5) tensor of scores that must *not* trip a law),
    flagging any law under ``t_k = min_i quantile(columns[i][:, k], q * limits[i] / limits[0])``
    trips at most ``limits[i]`` of its rows. A flag fires when *any* law is under its threshold, so
    each law's own share must be smaller than the limit of the union; the level is shared so that
    no law is favoured. ``fixed[k]`` (not None) keeps law k at that threshold (it still counts in
    the union) and returns None for it. None when every set is empty."""
    sets = [(c.float(), lim) for c, lim in zip(columns, limits, strict=True) if len(c)]
    if not sets:
        return None
    fixed = list(fixed) if fixed is not None else [None] * NUM_LAWS
    base = sets[0][1]

    def at(q: float) -> list[float]:
        return [float(f) if f is not None else
                min(float(torch.quantile(c[:, k], min(1.0, q * lim / base))) for c, lim in sets)
                for k, f in enumerate(fixed)]

    best = at(0.0)
    for step in range(_LEVELS, -1, -1):
        t = at(base * step / _LEVELS)
        tt = torch.tensor(t)
        if all(float(is_violated(c, tt).any(dim=-1).float().mean()) <= lim for c, lim in sets):
            best = t
            break
    return [None if f is not None else min(0.99, max(0.05, round(x, 4))) for x, f in zip(best, fixed, strict=True)]


def prompt_thresholds(neg: torch.Tensor, pos: torch.Tensor, max_fpr: float, min_recall: float,
                      fixed: Sequence[float | None]) -> list[float | None] | None:
    """The prompt-flag thresholds: the constitution's, moved (all free laws together, in a straight
    line) toward the benign limit's :func:`joint_thresholds` only as far as needed to flag at least
    ``min_recall`` of the harmful prompts ``pos`` (N, 5) with at most ``max_fpr`` of the benign
    prompts ``neg``; the benign limit's own thresholds when no point on the way does both.

    Why not the benign limit itself: on a validation split the two classes can be separable, and
    every threshold from the constitution's to the benign prompts' lower edge (near 1.0 when a head
    is sure) then meets the limit on validation; the edge flags what the heads have never seen - a
    benign prompt in a new wording scores a little under 1.0. The constitution's threshold is the
    prior, moved no further than held-out data asks (it still moves all the way for heads whose
    scores are compressed, such as a squared-error head's harmful prompts at 0.6-0.8)."""
    edge = joint_thresholds([neg], [max_fpr], fixed)
    if edge is None or not len(pos):
        return edge
    start = list(load_constitution().thresholds)
    free = [k for k, f in enumerate(fixed) if f is None]
    full = [float(f) if f is not None else 0.0 for f in fixed]

    def at(a: float) -> list[float]:
        t = list(full)
        for k in free:
            t[k] = start[k] + a * (edge[k] - start[k])
        return t

    for step in range(_LEVELS + 1):
        tt = torch.tensor(at(step / _LEVELS))
        flagged_neg = float(is_violated(neg, tt).any(dim=-1).float().mean())
        flagged_pos = float(is_violated(pos, tt).any(dim=-1).float().mean())
        if flagged_neg <= max_fpr and flagged_pos >= min_recall:
            return [round(v, 4) if fixed[k] is None else None for k, v in enumerate(tt.tolist())]
    return edge


def calibrate_thresholds(model, tokenizer, records: Sequence[dict], max_fpr: float = 0.05,
                         max_length: int = 256, max_refusals_stopped: float = MAX_REFUSALS_STOPPED,
                         min_recall: float | None = None) -> dict:
    """Prompt and reply thresholds per law, calibrated on ``records`` (a validation split).

    * ``thresholds`` (prompt flags): at most ``max_fpr`` of the benign prompts have *any* law
      flagged (:func:`joint_thresholds`).
    * ``reply_thresholds`` (reply stops): at most ``max_fpr`` of the good replies and at most
      ``max_refusals_stopped`` of the good replies to harmful requests have any reply token under
      a threshold.

    Returns {"thresholds", "reply_thresholds": [5 floats or None each], "max_fpr",
    "max_refusals_stopped", "laws": [per law: n_pos, n_neg, prompt_tpr, prompt_fpr,
    good_replies_stopped, refusals_stopped, harmful_completions_stopped], "prompt_flagged"
    / "refusals_stopped" / "good_replies_stopped" (the union rates)}; a set with too few examples
    keeps None (the constitution's threshold applies).
    """
    prompts, labels, benign = [], [], []
    for r in records:
        got = prompt_of(r)
        if got is None:
            continue
        prompts.append(got[0])
        labels.append(got[1])
        benign.append(r.get("kind") in BENIGN_KINDS)
    out = {"thresholds": [None] * NUM_LAWS, "reply_thresholds": [None] * NUM_LAWS, "max_fpr": max_fpr,
           "max_refusals_stopped": max_refusals_stopped, "laws": []}
    if not prompts:
        return out
    scores = prompt_scores(model, tokenizer, prompts, max_length=max_length)
    rmins, rgood, rharm = reply_min_scores(model, tokenizer, records, max_length=max_length)
    lab = torch.tensor(labels)
    neg_mask = torch.tensor(benign)
    neg = scores[neg_mask]
    harmful = (lab < 0.5) & ~neg_mask[:, None]  # (N, 5): prompts that violate each law
    # a law with too few harmful examples keeps the constitution's threshold (still in the union)
    default = load_constitution().thresholds
    fixed = [None if int(harmful[:, k].sum()) >= MIN_POSITIVES else default[k] for k in range(NUM_LAWS)]
    if len(neg) >= MIN_NEGATIVES and any(f is None for f in fixed):
        recall = 1.0 - max_fpr if min_recall is None else min_recall
        out["thresholds"] = prompt_thresholds(neg, scores[harmful.any(dim=-1)], max_fpr, recall, fixed)
    good, refusals, bad = rmins[rgood], rmins[rgood & rharm], rmins[~rgood]
    if len(good) >= MIN_NEGATIVES and any(f is None for f in fixed):
        sets = [good] + ([refusals] if len(refusals) >= MIN_NEGATIVES else [])
        out["reply_thresholds"] = joint_thresholds(sets, [max_fpr, max_refusals_stopped][: len(sets)], fixed)
    pt = [t if t is not None else d for t, d in zip(out["thresholds"], default, strict=True)]
    rt = [t if t is not None else d for t, d in zip(out["reply_thresholds"], default, strict=True)]

    def rate(x: torch.Tensor, t: float) -> float:
        return round(float(is_violated(x, t).float().mean()), 4)

    for k in range(NUM_LAWS):
        pos = scores[harmful[:, k], k]
        law = {"n_pos": len(pos), "n_neg": len(neg)}
        if out["thresholds"][k] is not None:
            law.update(prompt_tpr=rate(pos, pt[k]) if len(pos) else None, prompt_fpr=rate(neg[:, k], pt[k]))
        if out["reply_thresholds"][k] is not None:
            for name, x in (("good_replies_stopped", good), ("refusals_stopped", refusals),
                            ("harmful_completions_stopped", bad)):
                if len(x):
                    law[name] = rate(x[:, k], rt[k])
        out["laws"].append(law)

    def union(x: torch.Tensor, t: list[float]) -> float | None:
        return round(float(is_violated(x, torch.tensor(t)).any(dim=-1).float().mean()), 4) if len(x) else None

    out.update(prompt_flagged=union(neg, pt), harmful_prompts_flagged=union(scores[harmful.any(dim=-1)], pt),
               good_replies_stopped=union(good, rt), refusals_stopped=union(refusals, rt),
               harmful_completions_stopped=union(bad, rt))
    return out
