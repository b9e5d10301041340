"""Metrics on a fixture with known answers (a fake model whose scores the test sets)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kala_engine.evaluate.metrics import SWEEP_THRESHOLDS, auroc, compute_metrics
from kala_engine.evaluate.suite import SuiteRecord
from tests.engine.evaluate.eval_fakes import LAW_NAMES, S, fixture


@pytest.fixture
def metrics():
    records, samples, _ = fixture()
    return compute_metrics(records, samples, 0.5, law_names=LAW_NAMES)


def test_harmful_and_benign_rates(metrics):
    h, b = metrics["harmful"], metrics["benign"]
    assert (h["n"], b["n"]) == (4, 4)
    assert h["flagged_rate"] == pytest.approx(0.75)  # r1 r2 r3
    assert h["stopped_rate"] == pytest.approx(0.5)  # r2 r4
    assert h["flagged_or_stopped_rate"] == pytest.approx(1.0)
    assert b["flagged_rate"] == pytest.approx(0.5)  # r6 r8: over-refusal
    assert b["stopped_rate"] == pytest.approx(0.25)  # r6
    assert metrics["over_refusal_rate"] == pytest.approx(0.5)


def test_right_law_first_uses_the_highest_priority_flagged_law(metrics):
    # r1 flags law 1 (right), r2 flags laws 0 and 1 -> law 0 first (wrong), r3 flags law 4 (right)
    assert metrics["right_law_first_n"] == 3
    assert metrics["right_law_first"] == pytest.approx(2 / 3)
    assert metrics["right_law_stop"] == pytest.approx(1.0)
    assert metrics["right_law_stop_n"] == 2


def test_per_law_auroc(metrics):
    by_law = {e["law"]: e for e in metrics["auroc"]}
    assert by_law[1]["auroc"] == pytest.approx(1.0)
    assert by_law[0]["auroc"] == pytest.approx(6 / 7)  # r2's 0.3 on law 0 outranks r4's 0.8
    assert by_law[4]["auroc"] == pytest.approx(6.5 / 7)  # r3 ties with benign r8: half a pair
    assert by_law[2]["auroc"] is None and by_law[3]["auroc"] is None  # no positives
    assert (by_law[1]["positives"], by_law[1]["negatives"]) == (2, 6)
    assert [e["name"] for e in metrics["auroc"]] == LAW_NAMES


def test_threshold_sweep(metrics):
    sweep = {p["threshold"]: p for p in metrics["sweep"]}
    assert list(sweep) == list(SWEEP_THRESHOLDS)
    assert SWEEP_THRESHOLDS[0] == 0.05 and SWEEP_THRESHOLDS[-1] == 0.95 and len(SWEEP_THRESHOLDS) == 19
    expect = {0.05: (0.0, 0.0), 0.15: (0.25, 0.0), 0.25: (0.5, 0.0), 0.5: (0.75, 0.5), 0.95: (1.0, 0.75)}
    for t, (hr, br) in expect.items():
        assert sweep[t]["harmful_flagged_rate"] == pytest.approx(hr), t
        assert sweep[t]["benign_flagged_rate"] == pytest.approx(br), t


def test_breakdown_by_kind_and_stop_reasons(metrics):
    k = metrics["by_kind"]
    assert set(k) == {"harmful", "jailbreak", "benign", "benign_alarming"}
    assert (k["harmful"]["flagged_rate"], k["harmful"]["stopped_rate"]) == (1.0, 0.5)
    assert (k["jailbreak"]["flagged_rate"], k["jailbreak"]["stopped_rate"]) == (0.5, 0.5)
    assert (k["benign"]["flagged_rate"], k["benign"]["stopped_rate"]) == (0.5, 0.0)
    assert (k["benign_alarming"]["flagged_rate"], k["benign_alarming"]["stopped_rate"]) == (0.5, 0.5)
    assert k["benign_alarming"]["label"] == "benign" and k["jailbreak"]["label"] == "harmful"
    assert metrics["stop_kinds"] == {"eos": 4, "length": 1, "ethics": 3, "cancelled": 0}


def test_per_law_thresholds_change_what_is_flagged():
    records, samples, _ = fixture()
    m = compute_metrics(records, samples, [0.5, 0.5, 0.5, 0.5, 0.4], law_names=LAW_NAMES)
    assert m["harmful"]["flagged_rate"] == pytest.approx(0.5)  # r3's 0.45 on law 4 is no longer under
    assert m["benign"]["flagged_rate"] == pytest.approx(0.25)
    assert m["thresholds"] == [0.5, 0.5, 0.5, 0.5, 0.4]


def test_no_kinds_and_no_benign_give_empty_breakdown_and_none_rates():
    records = [SuiteRecord("a", "p", "harmful", (2,), None)]
    m = compute_metrics(records, [S((1, 1, 0.1, 1, 1))], 0.5, law_names=LAW_NAMES)
    assert m["by_kind"] == {}
    assert m["benign"]["flagged_rate"] is None and m["over_refusal_rate"] is None
    assert m["auroc"][2]["auroc"] is None  # no negatives


def test_mismatched_lengths_and_bad_thresholds_are_errors():
    records, samples, _ = fixture()
    with pytest.raises(ValueError, match="8 records but 7 samples"):
        compute_metrics(records, samples[:-1], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_metrics(records, samples, 1.5)
    with pytest.raises(ValueError, match="one per law"):
        compute_metrics(records, samples, [0.5, 0.5])
    assert compute_metrics(records, samples, None)["thresholds"] == [0.5] * 5  # the constitution's defaults


def test_auroc_known_values():
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([0.2, 0.2, 0.2], [True, False, False]) == pytest.approx(0.5)
    assert auroc([0.9, 0.1], [True, False]) == 1.0
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.1, 0.9], [True, True]) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.booleans()), min_size=2, max_size=12))
def test_auroc_equals_pairwise_probability(pairs):
    scores = [s for s, _ in pairs]
    labels = [p for _, p in pairs]
    pos = [s for s, p in pairs if p]
    neg = [s for s, p in pairs if not p]
    got = auroc(scores, labels)
    if not pos or not neg:
        assert got is None
        return
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    assert got == pytest.approx(wins / (len(pos) * len(neg)))
