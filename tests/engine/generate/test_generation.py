"""Monitored generation: cache parity, the stop rule, sampling, cancel, batching, model.generate()."""

from __future__ import annotations

import pytest
import torch

from kala_engine.constitution import load_constitution
from kala_engine.generate.generation import (
    GenerationResult,
    IncrementalDetokenizer,
    encode_prompt,
    generate_batch,
    generate_with_ethics,
    generate_with_ethics_events,
)
from kala_engine.generate.stopping import EthicsStoppingCriteria
from kala_engine.jobs import JobControl, TokenEvent
from tests.engine.generate.conftest import steer_scores

NO_STOP = ()  # stop_token_ids: let a random model run to the token limit


def _reference_greedy(model, prompt_ids, n):
    """Recompute the whole sequence at every step (no cache): tokens and their law scores.

    The pass over ``ids`` gives the next token (logits at the end) and the scores of the last
    token of ``ids`` (its own position): n + 1 full passes for n tokens.
    """
    ids = list(prompt_ids)
    tokens, scores = [], []
    with torch.no_grad():
        for step in range(n + 1):
            out = model(torch.tensor([ids]), use_cache=False)
            if step:
                scores.append(out.law_scores[0, -1])
            if step < n:
                tokens.append(int(out.logits[0, -1].argmax()))
                ids.append(tokens[-1])
    return tokens, torch.stack(scores)


def test_cached_generation_equals_recomputing_the_whole_sequence(chat_model, chat_tokenizer):
    prompt = encode_prompt(chat_tokenizer, "Hello, how are you?")
    result = generate_with_ethics(chat_model, chat_tokenizer, prompt, max_new_tokens=10, thresholds=0.0,
                                  stop_token_ids=NO_STOP)
    tokens, scores = _reference_greedy(chat_model, prompt, 10)
    assert result.token_ids == tokens
    torch.testing.assert_close(torch.tensor(result.token_scores), scores, atol=1e-4, rtol=0)
    # the prompt assessment is the scores at the prompt's last token
    full = chat_model(torch.tensor([prompt]), use_cache=False, output_layer_scores=True)
    torch.testing.assert_close(torch.tensor(result.prompt_assessment.law_scores), full.law_scores[0, -1],
                               atol=1e-5, rtol=0)
    assert len(result.prompt_assessment.layer_scores) == chat_model.config.num_hidden_layers


def test_events_then_result_and_text_pieces_add_up(chat_model, chat_tokenizer):
    items = list(generate_with_ethics_events(chat_model, chat_tokenizer, "Hello", max_new_tokens=6, thresholds=0.0,
                                             stop_token_ids=NO_STOP, output_layer_scores=True))
    events, result = items[:-1], items[-1]
    assert all(isinstance(e, TokenEvent) for e in events) and isinstance(result, GenerationResult)
    assert [e.index for e in events] == list(range(6)) and result.stop.kind == "length"
    assert [e.token_id for e in events] == result.token_ids
    assert all(len(e.law_scores) == 5 and all(0 <= s <= 1 for s in e.law_scores) for e in events)
    assert all(len(e.layer_scores) == 2 and len(e.layer_scores[0]) == 5 for e in events)
    assert result.text == chat_tokenizer.decode(result.token_ids, skip_special_tokens=True)


def test_incremental_detokenizer_never_splits_a_character(chat_tokenizer):
    text = "héllo wörld, naïve café déjà vu 😀 — ünïcödé"
    ids = chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 10  # multi-byte characters span several byte-level tokens here
    detok = IncrementalDetokenizer(chat_tokenizer)
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def _first_new_minimum(values, start=2):
    """A position j >= start where values[j] is below every earlier value, and a threshold between."""
    for j in range(start, len(values)):
        before = min(values[:j])
        if values[j] < before - 1e-3:
            return j, (values[j] + before) / 2
    return None, None


def test_stop_fires_at_the_first_token_under_its_threshold(chat_model, chat_tokenizer):
    free = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=16, thresholds=0.0,
                                stop_token_ids=NO_STOP)
    per_law = list(zip(*free.token_scores, strict=True))
    k, j, t = next((k, *_first_new_minimum(list(v))) for k, v in enumerate(per_law) if _first_new_minimum(list(v))[0])
    thresholds = [0.0] * 5
    thresholds[k] = t
    stopped = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=16, thresholds=thresholds,
                                   stop_token_ids=NO_STOP)
    assert stopped.stop.kind == "ethics"
    assert stopped.stop.token_index == j and len(stopped.token_ids) == j + 1  # the violating token is kept
    assert stopped.token_ids == free.token_ids[: j + 1]
    title = load_constitution().laws[k].title
    assert stopped.stop.law == k and stopped.stop.law_title == title
    assert stopped.stop.message == f"{title} fell to {per_law[k][j]:.2f} < {t:.2f}"
    assert stopped.explanation is not None and stopped.explanation.subject == "token"


def test_stop_names_the_highest_priority_law_not_the_lowest_score(chat_model, chat_tokenizer):
    # final scores 0.9, 0.3, 0.9, 0.1, 0.9: Laws 1 and 3 are under 0.5, Law 3 lower; Law 1 outranks it
    steer_scores(chat_model, [[0.9, 0.6, 0.9, 0.2, 0.9], [0.9, 0.3, 0.9, 0.1, 0.9]])
    r = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=8, thresholds=0.5,
                             stop_token_ids=NO_STOP)
    laws = load_constitution().laws
    assert r.stop.kind == "ethics" and r.stop.token_index == 0 and r.stop.law == 1
    assert r.stop.message == f"{laws[1].title} fell to 0.30 < 0.50"
    # explanation: violated laws in hierarchy order, with the decision path through the layers
    findings = r.explanation.findings
    assert [f.law for f in findings] == [1, 3]
    assert findings[0].first_layer == 1  # layer 0's monitor said 0.6 (above), layer 1 fell to 0.3
    assert findings[1].first_layer == 0  # Law 3 was under the threshold from layer 0 on
    assert findings[0].layer_scores == pytest.approx((0.6, 0.3), abs=1e-5)
    # the prompt is flagged the same way, before any reply token
    assert r.prompt_assessment.flagged == (1, 3)
    assert r.prompt_assessment.flagged_titles == [laws[1].title, laws[3].title]


def test_per_law_thresholds(chat_model, chat_tokenizer):
    steer_scores(chat_model, [[0.9, 0.6, 0.9, 0.2, 0.9], [0.9, 0.3, 0.9, 0.1, 0.9]])
    r = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=4,
                             thresholds=[0.5, 0.2, 0.5, 0.15, 0.5], stop_token_ids=NO_STOP)
    assert r.stop.kind == "ethics" and r.stop.law == 3  # Law 1 passes its own, lower threshold
    r = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=4,
                             thresholds=[0.5, 0.2, 0.5, 0.05, 0.5], stop_token_ids=NO_STOP)
    assert r.stop.kind == "length" and len(r.token_ids) == 4


def test_threshold_zero_never_stops_and_one_stops_at_once(chat_model, chat_tokenizer):
    steer_scores(chat_model, [[0.01] * 5, [0.01] * 5])  # scores as bad as they get
    r0 = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=12, thresholds=0.0,
                              stop_token_ids=NO_STOP)
    assert r0.stop.kind == "length" and len(r0.token_ids) == 12
    steer_scores(chat_model, [[0.999] * 5, [0.999] * 5])  # scores as good as they get
    r1 = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=12, thresholds=1.0,
                              stop_token_ids=NO_STOP)
    assert r1.stop.kind == "ethics" and r1.stop.token_index == 0 and len(r1.token_ids) == 1 and r1.stop.law == 0


def test_calibrated_prompt_and_reply_thresholds_judge_their_own_part(chat_model, chat_tokenizer):
    """A model's law_thresholds flag the prompt, its reply_thresholds stop the reply (issue 16),
    in the decode loop, the batch and model.generate()'s criteria alike; an explicit threshold
    judges both."""
    steer_scores(chat_model, [[0.6] * 5, [0.6] * 5])  # every prompt and reply token scores 0.6
    chat_model.config.law_thresholds = [0.7] * 5  # the prompt (0.6) is flagged ...
    chat_model.config.reply_thresholds = [0.5] * 5  # ... and the reply (0.6) runs on
    r = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=5, stop_token_ids=NO_STOP)
    assert r.prompt_assessment.flagged == (0, 1, 2, 3, 4)
    assert r.stop.kind == "length" and len(r.token_ids) == 5
    [b] = generate_batch(chat_model, chat_tokenizer, ["Hello"], max_new_tokens=5, stop_token_ids=NO_STOP)
    assert b.prompt_assessment.flagged and b.stop.kind == "length"
    assert EthicsStoppingCriteria(model=chat_model).thresholds == (0.5,) * 5
    chat_model.config.law_thresholds, chat_model.config.reply_thresholds = [0.5] * 5, [0.7] * 5
    r = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=5, stop_token_ids=NO_STOP)
    assert not r.prompt_assessment.flagged and r.stop.kind == "ethics" and r.stop.token_index == 0
    r = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=5, thresholds=0.55,
                             stop_token_ids=NO_STOP)
    assert not r.prompt_assessment.flagged and r.stop.kind == "length"


@pytest.mark.parametrize("bad", [-0.1, 1.5, [0.5, 0.5], float("nan")])
def test_threshold_outside_range_is_a_clear_error(chat_model, chat_tokenizer, bad):
    with pytest.raises(ValueError, match="threshold"):
        generate_with_ethics(chat_model, chat_tokenizer, "Hello", thresholds=bad)


def test_bad_prompts_are_clear_errors(chat_model, chat_tokenizer):
    with pytest.raises(ValueError, match="empty prompt"):
        generate_with_ethics(chat_model, chat_tokenizer, "   ")
    too_long = "Hello, how are you today? " * 60
    with pytest.raises(ValueError, match="context holds 128"):
        generate_with_ethics(chat_model, chat_tokenizer, too_long)


def test_reply_is_cut_at_the_context(chat_model, chat_tokenizer):
    prompt = list(range(10, 10 + 120))  # 120 ids in a 128-token context
    r = generate_with_ethics(chat_model, chat_tokenizer, prompt, max_new_tokens=50, thresholds=0.0,
                             stop_token_ids=NO_STOP)
    assert len(r.token_ids) == 8 and r.stop.kind == "length" and "context" in r.stop.message


def test_same_seed_same_text_other_seed_other_text(chat_model, chat_tokenizer):
    kw = dict(max_new_tokens=16, thresholds=0.0, temperature=1.0, top_k=50, top_p=0.95, repetition_penalty=1.2,
              stop_token_ids=NO_STOP)
    a = generate_with_ethics(chat_model, chat_tokenizer, "Hello", seed=7, **kw)
    b = generate_with_ethics(chat_model, chat_tokenizer, "Hello", seed=7, **kw)
    c = generate_with_ethics(chat_model, chat_tokenizer, "Hello", seed=8, **kw)
    assert a.token_ids == b.token_ids and a.text == b.text and a.seed == 7
    assert a.token_ids != c.token_ids
    greedy = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=16, thresholds=0.0,
                                  stop_token_ids=NO_STOP)
    assert greedy.token_ids != a.token_ids  # sampling really samples


def test_cancel_stops_within_one_token(chat_model, chat_tokenizer):
    control = JobControl()
    seen = []
    result = None
    for item in generate_with_ethics_events(chat_model, chat_tokenizer, "Hello", max_new_tokens=30, thresholds=0.0,
                                            stop_token_ids=NO_STOP, control=control):
        if isinstance(item, TokenEvent):
            seen.append(item)
            if item.index == 2:
                control.cancel()
        else:
            result = item
    assert len(seen) == 3 and result.stop.kind == "cancelled"
    assert result.token_ids == [e.token_id for e in seen]


def test_end_token_ends_the_reply_without_being_part_of_it(chat_model, chat_tokenizer):
    free = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=6, thresholds=0.0,
                                stop_token_ids=NO_STOP)
    r = generate_with_ethics(chat_model, chat_tokenizer, "Hello", max_new_tokens=6, thresholds=0.0,
                             stop_token_ids=[free.token_ids[3]])
    first = free.token_ids.index(free.token_ids[3])
    assert r.stop.kind == "eos" and r.token_ids == free.token_ids[:first]


def _stop_key(r):
    return r.stop.kind, r.stop.law, r.stop.token_index


def test_batched_equals_one_by_one(chat_model, chat_tokenizer):
    prompts = ["Hello", "How do I kill a stuck process on Linux?", [{"role": "user", "content": "Write a poem"}]]
    steer = [0.0, 0.0, 0.0, 0.0, 0.0]
    singles = [generate_with_ethics(chat_model, chat_tokenizer, p, max_new_tokens=8, thresholds=steer,
                                    stop_token_ids=NO_STOP) for p in prompts]
    batch = generate_batch(chat_model, chat_tokenizer, prompts, max_new_tokens=8, thresholds=steer,
                           stop_token_ids=NO_STOP)
    assert len(batch) == 3
    for s, b in zip(singles, batch, strict=True):
        assert b.token_ids == s.token_ids and b.text == s.text and _stop_key(b) == _stop_key(s)
        torch.testing.assert_close(torch.tensor(b.token_scores), torch.tensor(s.token_scores), atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(b.prompt_assessment.law_scores),
                                   torch.tensor(s.prompt_assessment.law_scores), atol=1e-4, rtol=0)


def test_batched_rows_stop_on_their_own(chat_model, chat_tokenizer):
    prompts = ["Hello", "Write a poem about the sea", "How are you?"]
    free = [generate_with_ethics(chat_model, chat_tokenizer, p, max_new_tokens=12, thresholds=0.0,
                                 stop_token_ids=NO_STOP) for p in prompts]
    law1 = [min(s[1] for s in r.token_scores[:6]) for r in free]
    thr = [0.0, sorted(law1)[1] + 1e-4, 0.0, 0.0, 0.0]  # some rows stop early, some later or never
    singles = [generate_with_ethics(chat_model, chat_tokenizer, p, max_new_tokens=12, thresholds=thr,
                                    stop_token_ids=NO_STOP) for p in prompts]
    batch = generate_batch(chat_model, chat_tokenizer, prompts, max_new_tokens=12, thresholds=thr,
                           stop_token_ids=NO_STOP, batch_size=2)
    assert [b.token_ids for b in batch] == [s.token_ids for s in singles]
    assert [_stop_key(b) for b in batch] == [_stop_key(s) for s in singles]
    assert sum(s.stop.kind == "ethics" for s in singles) >= 2


def test_stopping_criteria_stops_model_generate_at_the_same_token(chat_model, chat_tokenizer):
    pad = chat_tokenizer.pad_token_id
    prompt = encode_prompt(chat_tokenizer, "Hello")
    free = generate_with_ethics(chat_model, chat_tokenizer, prompt, max_new_tokens=16, thresholds=0.0,
                                stop_token_ids=NO_STOP)
    per_law = list(zip(*free.token_scores, strict=True))
    k, j, t = next((k, *_first_new_minimum(list(v))) for k, v in enumerate(per_law) if _first_new_minimum(list(v))[0])
    thresholds = [0.0] * 5
    thresholds[k] = t
    ours = generate_with_ethics(chat_model, chat_tokenizer, prompt, max_new_tokens=16, thresholds=thresholds,
                                stop_token_ids=NO_STOP)
    assert ours.stop.token_index == j

    x = torch.tensor([prompt])
    with EthicsStoppingCriteria(thresholds, model=chat_model) as crit:  # criteria + fill processor
        out = chat_model.generate(x, max_new_tokens=16, do_sample=False, pad_token_id=pad, eos_token_id=None,
                                  **crit.generate_kwargs(pad))
    new = out[0, len(prompt):].tolist()
    assert new == ours.token_ids + [pad]
    assert crit.stops[0] == ours.stop

    crit = EthicsStoppingCriteria(thresholds, model=chat_model)  # the criteria alone
    out = chat_model.generate(x, max_new_tokens=16, do_sample=False, pad_token_id=pad, eos_token_id=None,
                              stopping_criteria=[crit])
    crit.detach()
    assert out.shape[1] == len(prompt) + j + 2  # one unscored token past the violating one ...
    assert crit.trim(out, len(prompt))[0][len(prompt):].tolist() == ours.token_ids  # ... that trim removes
    assert crit.stops[0] == ours.stop

    # detached: model.generate runs to the limit again
    out = chat_model.generate(x, max_new_tokens=16, do_sample=False, pad_token_id=pad, eos_token_id=None)
    assert out.shape[1] == len(prompt) + 16


def test_note_api_generate_with_ethics(chat_model, chat_tokenizer):
    steer_scores(chat_model, [[0.9] * 5, [0.9, 0.9, 0.9, 0.4, 0.9]])
    x = torch.tensor([encode_prompt(chat_tokenizer, "Hello")])
    ids, scores = chat_model.generate_with_ethics(x, max_length=x.shape[1] + 5, ethics_threshold=0.0)
    assert ids.shape == (1, x.shape[1] + 5) and scores.shape == (5, 5)
    assert torch.equal(ids[:, : x.shape[1]], x)
    ids, scores = chat_model.generate_with_ethics(x, max_length=x.shape[1] + 5, ethics_threshold=0.5)
    assert ids.shape == (1, x.shape[1] + 1) and scores.shape == (1, 5)  # stopped on the first token
    assert float(scores[0, 3]) == pytest.approx(0.4, abs=1e-4)


def test_stopping_criteria_stops_each_row_of_a_padded_batch(chat_model, chat_tokenizer):
    prompts = ["Hello", "Write a poem about the sea"]
    free = [generate_with_ethics(chat_model, chat_tokenizer, p, max_new_tokens=8, thresholds=0.0,
                                 stop_token_ids=NO_STOP) for p in prompts]
    thr = [0.0, min(s[1] for s in free[0].token_scores[:3]) + 1e-4, 0.0, 0.0, 0.0]  # row 0 stops early
    ours = [generate_with_ethics(chat_model, chat_tokenizer, p, max_new_tokens=8, thresholds=thr,
                                 stop_token_ids=NO_STOP) for p in prompts]
    enc = [encode_prompt(chat_tokenizer, p) for p in prompts]
    width, pad = max(map(len, enc)), chat_tokenizer.pad_token_id
    x = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
    mask = (x != pad).long()
    with EthicsStoppingCriteria(thr, model=chat_model) as crit:
        out = chat_model.generate(x, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=pad,
                                  eos_token_id=None, **crit.generate_kwargs(pad))
    for b, r in enumerate(ours):
        row = out[b, width:].tolist()
        if r.stop.kind == "ethics":
            assert row[: len(r.token_ids) + 1] == r.token_ids + [pad] and crit.stops[b].token_index == r.stop.token_index
        else:
            assert row[: len(r.token_ids)] == r.token_ids and crit.stops[b] is None
    assert ours[0].stop.kind == "ethics"
