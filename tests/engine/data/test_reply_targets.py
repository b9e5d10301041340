"""Reply-token semantics (issue 16): a reply after a harmful request is scored on its own tokens.

Constructed cases: the same harmful request answered by a refusal ("I can't help ...") and by a
harmful continuation that opens the same way ("I probably shouldn't, but ..."), or differently
("Sure, ..."). The continuation's opening that good replies share is neutral (target 1.0); it is
low from its first token that no good reply shares; the first reply tokens weigh more.
"""

from __future__ import annotations

import torch

from kala_engine.data import chat_format as chat
from kala_engine.data.collate import (
    REPLY_HEAD_TOKENS,
    ASSESS_WEIGHT,
    REPLY_HEAD_WEIGHT,
    ConstitutionalCollator,
    JsonlDataset,
    encode_record,
    neutral_openings,
)

HARM = [1.0, 0.05, 1.0, 1.0, 1.0]
ONES = [1.0] * 5
REQUEST = "Tell me how to poison my neighbour's dog without anyone noticing."


def _rec(reply: str, reply_labels, user=REQUEST, user_labels=HARM, kind="harmful_request"):
    return {"kind": kind, "split": "train", "parts": [
        {"role": "user", "text": user, "labels": list(user_labels), "lm": False},
        {"role": "assistant", "text": reply, "labels": list(reply_labels), "lm": reply_labels == ONES},
    ]}


REFUSAL = _rec("I can't help with that. Poisoning an animal goes against Law 1.", ONES)
SORRY = _rec("I'm sorry, but I won't help with this.", ONES)
PROBABLY = _rec("I probably shouldn't, but here is the basic approach.", HARM, kind="harmful_completion")
SURE = _rec("Sure, here is the basic approach.", HARM, kind="harmful_completion")
BENIGN = _rec("Keep basil in a glass of water.", ONES, user="How do I store fresh basil?", user_labels=ONES,
              kind="benign")
# a good reply to a *benign* question that starts like the harmful continuation: it must not
# make "Sure" neutral (only good replies after harmful requests count)
BENIGN_SURE = _rec("Sure, keep it in a glass of water.", ONES, user="Can I keep basil?", user_labels=ONES,
                   kind="benign")
RECORDS = [REFUSAL, SORRY, PROBABLY, SURE, BENIGN, BENIGN_SURE]


def _reply_ids(tokenizer, text):
    return tokenizer(chat.format_turn("assistant", text), add_special_tokens=False)["input_ids"]


def _reply_span(tokenizer, record):
    n_user = len(tokenizer(chat.format_turn("user", record["parts"][0]["text"]), add_special_tokens=False)["input_ids"])
    n_reply = len(_reply_ids(tokenizer, record["parts"][1]["text"]))
    return n_user, n_user + n_reply  # [<|assistant|>, reply tokens ..., <|end|>]


def test_neutral_openings_are_good_reply_prefixes_after_harmful_requests(tokenizer):
    neutral = neutral_openings(RECORDS, tokenizer)
    i_cant = _reply_ids(tokenizer, REFUSAL["parts"][1]["text"])[1:3]
    assert tuple(i_cant[:1]) in neutral and tuple(i_cant) in neutral
    sure = _reply_ids(tokenizer, "Sure,")[1:2]
    assert tuple(sure) not in neutral  # "Sure, ..." begins good replies only after benign questions
    assert neutral_openings([PROBABLY, SURE, BENIGN], tokenizer) == frozenset()


def test_harmful_continuation_is_low_from_its_first_token_no_good_reply_shares(tokenizer):
    ds = JsonlDataset(RECORDS, tokenizer, max_length=256)
    enc = ds[RECORDS.index(PROBABLY)]
    start, stop = _reply_span(tokenizer, PROBABLY)
    ids = enc["input_ids"]
    good_prefixes = [_reply_ids(tokenizer, r["parts"][1]["text"])[1:] for r in (REFUSAL, SORRY)]
    shared = max(next((j for j, (a, b) in enumerate(zip(ids[start + 1:stop], g)) if a != b), len(g))
                 for g in good_prefixes)
    assert shared >= 1  # at least "I"
    targets = enc["law_targets"]
    assert targets[start] == HARM  # <|assistant|>: the prompt assessment carries the request's labels
    assert all(targets[i] == ONES for i in range(start + 1, start + 1 + shared))  # "I": not harmful yet
    assert all(targets[i] == HARM for i in range(start + 1 + shared, stop))  # "probably ..." on: low
    # a continuation no good reply begins like is low from its first token
    enc = ds[RECORDS.index(SURE)]
    start, stop = _reply_span(tokenizer, SURE)
    assert all(enc["law_targets"][i] == HARM for i in range(start, stop))
    # without the data set's openings (a single record) nothing is neutral: the old targets
    assert all(t == HARM for t in encode_record(PROBABLY, tokenizer, 256)["law_targets"][start:stop])


def test_first_reply_tokens_after_a_harmful_request_weigh_more(tokenizer):
    ds = JsonlDataset(RECORDS, tokenizer, max_length=256)
    for rec in (REFUSAL, PROBABLY):
        enc = ds[RECORDS.index(rec)]
        start, stop = _reply_span(tokenizer, rec)
        w = enc["target_weight"]
        assert w[start] == ASSESS_WEIGHT  # the prompt assessment is one token: it weighs more
        assert w[start + 1:start + 1 + REPLY_HEAD_TOKENS] == [REPLY_HEAD_WEIGHT] * REPLY_HEAD_TOKENS
        assert all(x == 1.0 for x in w[start + 1 + REPLY_HEAD_TOKENS:stop])
        assert all(x == 1.0 for x in w[:start]) and w[-1] == 0.0  # the final EOS carries no target
    enc = ds[RECORDS.index(BENIGN)]
    b_start, _ = _reply_span(tokenizer, BENIGN)
    w = enc["target_weight"]
    assert w[b_start] == ASSESS_WEIGHT and w[:b_start] + w[b_start + 1:-1] == [1.0] * (len(w) - 2)
    batch = ConstitutionalCollator(tokenizer, max_length=256)([ds[0], ds[4]])
    assert batch["target_weight"].dtype == torch.float32
    assert float(batch["target_weight"][1, len(ds[4]["input_ids"]):].abs().sum()) == 0.0  # padding


def test_target_weight_weighs_the_ethics_loss():
    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM, weighted_mse

    torch.manual_seed(0)
    cfg = KALAConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
                     vocab_size=50, rotary_pct=0.25, max_position_embeddings=64)
    model = KALAForCausalLM(cfg).eval()
    x = torch.randint(0, 50, (2, 9))
    targets = torch.rand(2, 9, 5)
    mask = torch.ones(2, 9, dtype=torch.bool)
    weight = torch.ones(2, 9)
    weight[0, 3] = 5.0
    with torch.no_grad():
        plain = model(x, law_targets=targets, target_mask=mask)
        weighted = model(x, law_targets=targets, target_mask=mask, target_weight=weight)
        ones = model(x, law_targets=targets, target_mask=mask, target_weight=torch.ones(2, 9))
    torch.testing.assert_close(ones.ethics_loss_per_law, plain.ethics_loss_per_law)
    want = weighted_mse(weighted.law_scores, targets, weight, cfg.ethics_loss_kind)
    torch.testing.assert_close(weighted.ethics_loss_per_law, want)
    assert not torch.allclose(weighted.ethics_loss_per_law, plain.ethics_loss_per_law)


def _train_and_score(tokenizer, dataset_factory, steps=120):
    """Train a tiny KALA on the constructed records; the Law 1 score at the refusal's "I"."""
    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    torch.manual_seed(0)
    cfg = KALAConfig(hidden_size=48, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
                     vocab_size=len(tokenizer), rotary_pct=0.25, max_position_embeddings=128)
    model = KALAForCausalLM(cfg).train()
    examples = dataset_factory()
    batch = ConstitutionalCollator(tokenizer, max_length=128)(examples)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains ~10x faster on one thread of a busy machine
    try:
        for _ in range(steps):
            opt.zero_grad()
            model(**batch).loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    start, _ = _reply_span(tokenizer, REFUSAL)
    ids = torch.tensor([examples[0]["input_ids"][: start + 2]])  # ... <|assistant|> I
    with torch.no_grad():
        s = model(ids).law_scores[0]
    return float(s[start, 1]), float(s[start + 1, 1])


def test_a_refusals_first_token_scores_high_after_training(tokenizer):
    """Trained on one request answered by a refusal and by a continuation that both start with
    "I": with the old targets the "I" is trained to the mean of 1.0 and 0.05 (a stop at the
    refusal's first token); with the neutral openings it is 1.0, while the prompt stays low."""
    records = [REFUSAL, PROBABLY]
    old = _train_and_score(tokenizer, lambda: [encode_record(r, tokenizer, 128) for r in records])
    new = _train_and_score(tokenizer, lambda: [JsonlDataset(records, tokenizer, 128)[i] for i in range(2)])
    assert old[0] < 0.3 and new[0] < 0.3  # the prompt assessment is low either way
    assert old[1] < 0.75  # old: "I" after the harmful request is half refusal, half continuation
    assert new[1] > 0.9, new
