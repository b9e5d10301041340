"""The generator: thresholds of the issue on a default 10k set, targets, split, determinism."""

from __future__ import annotations

import json
import re
import time

import pytest

from kala_engine.constitution import load_constitution
from kala_engine.data.banks import load_banks
from kala_engine.data.generate import (
    format_summary,
    generate_dataset,
    summarize,
    validation_families,
    write_dataset,
)
from kala_engine.data.io import load_jsonl
from kala_engine.data.schema import BENIGN_KINDS, HARMFUL_KINDS, KINDS, validate_record


def test_default_10k_meets_the_issue_thresholds(dataset_10k):
    s = summarize(dataset_10k)
    assert s["records"] == 10000
    assert s["unique_prompt_share"] >= 0.90
    assert min(s["law_share_of_harmful"]) >= 0.15
    assert s["benign_share"] >= 0.40
    assert all(s["checks"].values()), s["checks"]
    assert all(s["by_kind"][k] > 0 for k in KINDS)


def test_generation_of_10k_takes_under_5_seconds():
    load_banks()  # banks are cached like in a real run after the first call
    t0 = time.perf_counter()
    generate_dataset(10000, seed=7)
    assert time.perf_counter() - t0 < 5.0


def test_every_record_is_valid_and_ids_unique(dataset_10k):
    for r in dataset_10k:
        assert validate_record(r) == [], r
    assert len({r["id"] for r in dataset_10k}) == len(dataset_10k)


def test_no_duplicate_records(dataset_10k):
    keys = [(r["kind"], tuple(p["text"] for p in r["parts"])) for r in dataset_10k]
    assert len(set(keys)) == len(keys)


def test_deterministic_per_seed_and_different_across_seeds():
    a = generate_dataset(300, seed=11)
    b = generate_dataset(300, seed=11)
    c = generate_dataset(300, seed=12)
    assert a == b
    assert [r["parts"] for r in a] != [r["parts"] for r in c]


def test_targets_are_not_all_one(dataset_10k):
    lows = [x for r in dataset_10k for p in r["parts"] for x in p["labels"] if x < 0.5]
    assert len(lows) > 1000
    assert summarize(dataset_10k)["targets_not_all_one_share"] > 0.3


def test_harmful_request_targets_follow_design(dataset_10k):
    seen_laws = set()
    for r in (r for r in dataset_10k if r["kind"] == "harmful_request"):
        user = [p for p in r["parts"] if p["role"] == "user"][0]
        reply = r["parts"][-1]
        law = r["primary_law"]
        seen_laws.add(law)
        assert user["labels"][law] < 0.5, "the request is low on its violated law"
        assert user["lm"] is False, "harmful requests are not learned as text"
        assert reply["role"] == "assistant" and reply["labels"] == [1.0] * 5 and reply["lm"] is True
        low = {k for k, x in enumerate(user["labels"]) if x < 1.0}
        assert all(user["labels"][k] == 1.0 for k in range(5) if k not in low)
        assert r["labels"] == user["labels"]
    assert seen_laws == {0, 1, 2, 3, 4}


def test_harmful_completion_is_low_and_never_learned(dataset_10k):
    comps = [r for r in dataset_10k if r["kind"] == "harmful_completion"]
    assert comps
    for r in comps:
        bad = r["parts"][-1]
        assert bad["role"] == "assistant" and bad["lm"] is False
        assert bad["labels"][r["primary_law"]] < 0.5


def test_benign_records_are_all_one_and_learned(dataset_10k):
    for r in (r for r in dataset_10k if r["kind"] in BENIGN_KINDS):
        assert r["primary_law"] is None and r["labels"] == [1.0] * 5
        assert all(p["labels"] == [1.0] * 5 for p in r["parts"])
        assert r["parts"][-1]["lm"] is True


def test_critique_revision_structure(dataset_10k):
    for r in (r for r in dataset_10k if r["kind"] == "critique_revision"):
        user, draft, critique, revision = r["parts"]
        law = r["primary_law"]
        assert draft["lm"] is False and 0.0 < draft["labels"][law] < 1.0
        assert draft["labels"][law] > user["labels"][law], "the draft is low-ish, the request lower"
        assert load_constitution()[law].title in critique["text"]
        assert revision["lm"] is True and revision["labels"] == [1.0] * 5


def test_ethical_replies_name_the_law_and_offer_an_alternative(dataset_10k):
    c = load_constitution()
    banks = {t.id: t for t in load_banks().topics}
    for r in (r for r in dataset_10k if r["kind"] == "harmful_request"):
        reply = r["parts"][-1]["text"]
        assert c[r["primary_law"]].title in reply
        alt_start = banks[r["family"]].alt.split("{")[0][:30]
        assert alt_start in reply


def test_multi_turn_escalates(dataset_10k):
    mts = [r for r in dataset_10k if r["kind"] == "multi_turn"]
    assert mts
    for r in mts:
        users = [p for p in r["parts"] if p["role"] == "user"]
        assert len(users) >= 2
        assert min(users[-1]["labels"]) < 0.5


def test_law_specific_has_conflicts_and_allowed_cases(dataset_10k):
    ls = [r for r in dataset_10k if r["kind"] == "law_specific"]
    assert {r["primary_law"] for r in ls} == {0, 1, 2, 3, 4}
    assert any(sum(x < 0.5 for x in r["labels"]) >= 2 for r in ls), "conflicts between laws"
    assert any(r["labels"] == [1.0] * 5 for r in ls), "cases where helping is right"


def test_split_is_by_family_and_disjoint(dataset_10k):
    train = {r["family"] for r in dataset_10k if r["split"] == "train"}
    val = {r["family"] for r in dataset_10k if r["split"] == "validation"}
    assert val and train and not train & val
    share = len(val) / (len(train) + len(val))
    assert 0.08 <= share <= 0.16
    # every harmful law has validation topics, and the held-out set does not depend on the seed
    held = validation_families(load_banks())
    assert {t.law for t in load_banks().topics if t.id in held} == {0, 1, 2, 3, 4}
    assert {r["family"] for r in generate_dataset(2000, seed=99) if r["split"] == "validation"} <= held


def test_benign_alarming_has_at_least_ten_families(dataset_10k):
    fams = {r["family"] for r in dataset_10k if r["kind"] == "benign_alarming"}
    assert len(fams) >= 10


def test_no_law_name_is_spelled_in_the_prompt_banks():
    c = load_constitution()
    folder = load_banks().folder
    for f in folder.glob("*.toml"):
        text = f.read_text(encoding="utf-8").casefold()
        for law in c:
            assert law.name.casefold() not in text, f"{f.name} spells {law.name!r}"


def test_harmful_completions_are_not_operational(dataset_10k):
    """No numbered steps, code, quantities or ingredient lists in the negatives."""
    pattern = re.compile(r"(^|\s)(step \d|\d+\s?(g|mg|ml|kg|grams|litres)\b|```|def |import |\n\d\.)", re.I)
    for r in (r for r in dataset_10k if r["kind"] == "harmful_completion"):
        assert not pattern.search(r["parts"][-1]["text"]), r["parts"][-1]["text"]


def test_summary_table_prints_every_kind_and_law(dataset_10k):
    text = format_summary(summarize(dataset_10k))
    for k in KINDS:
        assert k in text
    for law in load_constitution():
        assert law.title in text
    assert "unique prompts" in text and "FAIL" not in text


def test_summary_flags_a_set_that_misses_the_thresholds(dataset_10k):
    only_harmful = [r for r in dataset_10k if r["kind"] in HARMFUL_KINDS and r["primary_law"] != 3][:500]
    s = summarize(only_harmful)
    assert not s["checks"]["benign_share"] and not s["checks"]["each_law_share"]
    assert "FAIL" in format_summary(s)


def test_write_dataset_is_loadable(tmp_path):
    out = tmp_path / "d.jsonl"
    records = write_dataset(out, count=50, seed=1)
    assert load_jsonl(out) == records
    assert [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()] == [r["id"] for r in records]
    assert list(tmp_path.iterdir()) == [out], "no temporary file is left behind"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_count_is_a_value_error(bad):
    with pytest.raises(ValueError, match="count"):
        generate_dataset(bad)
