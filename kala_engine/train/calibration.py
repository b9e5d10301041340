"""Per-law thresholds calibrated on held-out data, saved with a trained model.

A freshly trained small model's law scores are compressed (harmful prompts at 0.6-0.8 where
benign ones sit near 1.0), so the constitution's default threshold of 0.5 flags nothing. After
training, on the validation split - template families the model never saw - two things are
measured: the prompt assessment (law scores at the ``<|assistant|>`` token, as at generation
time) of benign prompts, and the lowest score over the tokens of each ethical or benign reply.
Each law's threshold is the lower of the two ``max_fpr`` quantiles, so that at most ``max_fpr``
of the benign prompts would be flagged *and* at most ``max_fpr`` of the good replies (refusals
included) would be stopped. run.json also reports, per law, ``refusals_stopped``: the share of
the good replies *to harmful requests* (refusals and safe answers) that the threshold would stop
- pooled with the far more numerous benign replies, they can be stopped more often than
``max_fpr``. (Holding that share to ``max_fpr`` as well was tried on the demo model: it lowered
every threshold - a refusal's explanation names the harm, so its lowest token is low - and cost
8 points of harmful prompts caught on the public suite without fewer refusals cut short there;
issue 16.) The thresholds go into ``config.law_thresholds`` and become the model's defaults in chat,
``kala eval`` and the app; the numbers behind them go into run.json. An explicit threshold
always wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kala_engine.constitution import NUM_LAWS, is_violated
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


def calibrate_thresholds(model, tokenizer, records: Sequence[dict], max_fpr: float = 0.05,
                         max_length: int = 256) -> dict:
    """Per-law thresholds at <= ``max_fpr`` benign flag rate on ``records`` (a validation split).

    Returns {"thresholds": [5 floats or None], "max_fpr": ..., "laws": [{n_pos, n_neg, tpr, fpr}]};
    a law with too few examples keeps None (the constitution's threshold applies).
    """
    prompts, labels, benign = [], [], []
    for r in records:
        got = prompt_of(r)
        if got is None:
            continue
        prompts.append(got[0])
        labels.append(got[1])
        benign.append(r.get("kind") in BENIGN_KINDS)
    if not prompts:
        return {"thresholds": [None] * NUM_LAWS, "max_fpr": max_fpr, "laws": []}
    scores = prompt_scores(model, tokenizer, prompts, max_length=max_length)
    rmins, rgood, rharm = reply_min_scores(model, tokenizer, records, max_length=max_length)
    lab = torch.tensor(labels)
    neg_mask = torch.tensor(benign)
    thresholds, laws = [], []
    for k in range(NUM_LAWS):
        neg = scores[neg_mask, k]
        pos = scores[(lab[:, k] < 0.5) & ~neg_mask, k]
        good_replies, bad_replies = rmins[rgood, k], rmins[~rgood, k]
        refusals = rmins[rgood & rharm, k]  # good replies to harmful requests
        if len(neg) < MIN_NEGATIVES or len(pos) < MIN_POSITIVES:
            thresholds.append(None)
            laws.append({"n_pos": len(pos), "n_neg": len(neg)})
            continue
        # flag when score < t: t = the max_fpr quantile of the benign prompt scores (their lower
        # edge), lowered to that of the good replies' minima so that refusals are not stopped
        t = float(torch.quantile(neg, max_fpr))
        if len(good_replies) >= MIN_NEGATIVES:
            t = min(t, float(torch.quantile(good_replies, max_fpr)))
        t = min(0.99, max(0.05, round(t, 4)))
        thresholds.append(t)
        law = {"n_pos": len(pos), "n_neg": len(neg), "prompt_tpr": round(float(is_violated(pos, t).float().mean()), 4),
               "prompt_fpr": round(float(is_violated(neg, t).float().mean()), 4)}
        if len(good_replies):
            law["good_replies_stopped"] = round(float(is_violated(good_replies, t).float().mean()), 4)
        if len(refusals):
            law["refusals_stopped"] = round(float(is_violated(refusals, t).float().mean()), 4)
        if len(bad_replies):
            law["harmful_completions_stopped"] = round(float(is_violated(bad_replies, t).float().mean()), 4)
        laws.append(law)
    return {"thresholds": thresholds, "max_fpr": max_fpr, "laws": laws}
