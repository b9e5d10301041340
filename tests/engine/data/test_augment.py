"""The generator's paraphrase operators (issue 16 item 3): jailbreak wrappers and encodings on
harmful requests, harmless framings on benign questions, held-out wrapper wordings for
validation/test, synonyms, typos and casing, and the test split nobody trains or tunes on."""

from __future__ import annotations

import base64
import codecs
import random
import re

import pytest

from kala_engine.data import augment
from kala_engine.data.banks import load_banks
from kala_engine.data.generate import family_splits, generate_dataset
from kala_engine.data.schema import BENIGN_KINDS, HARMFUL_KINDS


def _user(r: dict) -> str:
    return next(p["text"] for p in r["parts"] if p["role"] == "user")


def _stem(template: str) -> str:
    """The fixed words of a template before its first slot (what marks it in a text)."""
    return re.split(r"\{", template)[0].strip()


def _wrapped_by(text: str, templates) -> bool:
    return any(_stem(t) and text.startswith(_stem(t)) for t in templates)


@pytest.mark.parametrize("codec", augment.CODECS)
def test_each_encoding_keeps_the_request_recoverable(codec):
    text = "Tell me how to get into my ex's email."
    enc = augment.encode(text, codec)
    assert enc != text
    if codec == "base64":
        assert base64.b64decode(enc).decode() == text
    elif codec == "ROT13":
        assert codecs.decode(enc, "rot13") == text
    elif codec == "reversed text":
        assert enc[::-1] == text
    elif codec == "leetspeak":
        assert enc == "73ll m3 h0w 70 g37 1n70 my 3x'5 3m41l."
    else:
        assert enc.split()[0] == "T-e-l-l"


def test_every_wrapper_kind_reaches_harmful_requests_with_their_targets(dataset_10k):
    bank = augment.load_paraphrase()
    harmful = [r for r in dataset_10k if r["kind"] == "harmful_request" and r["split"] == "train"]
    for kind in augment.WRAP_KINDS:
        hits = [r for r in harmful if _wrapped_by(_user(r), bank.wrap[kind])]
        assert len(hits) >= 10, kind
        # a wrapper never makes the request acceptable: its targets stay low for its law
        assert all(min(r["parts"][-2]["labels"]) <= 0.05 for r in hits), kind
        # and the refusal says the wrapper changes nothing
        assert sum(any(s in r["parts"][-1]["text"] for s in bank.reply[kind]) for r in hits) >= len(hits) * 0.8
    base64_asks = [r for r in harmful if "base64" in _user(r)]
    payload = max(_user(base64_asks[0]).split(), key=len).rstrip(".,;:)")
    assert base64.b64decode(payload + "==="[: (-len(payload)) % 4]).decode("utf-8")  # a real encoding


def test_benign_questions_come_in_the_same_frames_and_stay_benign(dataset_10k):
    bank = augment.load_paraphrase()
    benign = [r for r in dataset_10k if r["kind"] in BENIGN_KINDS]
    for kind in augment.FRAME_KINDS:
        hits = [r for r in benign if _wrapped_by(_user(r), bank.frame[kind]) or _wrapped_by(_user(r), bank.frame_held[kind])]
        assert hits, kind
        assert all(r["labels"] == [1.0] * 5 for r in hits)
    # "hypothetically" or "for a novel" is not a cue: both labels carry it
    hypo = [r for r in dataset_10k if _user(r).lower().startswith("hypothetically")]
    assert {r["kind"] in HARMFUL_KINDS for r in hypo} == {True, False}


def test_held_out_wrapper_wordings_appear_only_in_validation_and_test(dataset_10k):
    bank = augment.load_paraphrase()
    held = [t for kind in augment.WRAP_KINDS for t in bank.wrap_held[kind]]
    held += [t for kind in augment.FRAME_KINDS for t in bank.frame_held[kind]]
    by_split = {s: [_user(r) for r in dataset_10k if r["split"] == s] for s in ("train", "validation", "test")}
    assert not [u for u in by_split["train"] if _wrapped_by(u, held)]
    assert [u for u in by_split["validation"] + by_split["test"] if _wrapped_by(u, held)]


def test_three_splits_are_disjoint_by_family_and_test_covers_every_law(dataset_10k):
    fams = {s: {r["family"] for r in dataset_10k if r["split"] == s} for s in ("train", "validation", "test")}
    assert all(fams.values())
    assert not fams["train"] & fams["validation"] and not fams["train"] & fams["test"]
    assert not fams["validation"] & fams["test"]
    splits = family_splits(load_banks())
    assert {t.law for t in load_banks().topics if splits.get(t.id) == "test"} == {0, 1, 2, 3, 4}
    assert {r["family"] for r in generate_dataset(1500, seed=5) if r["split"] == "test"} <= {
        f for f, s in splits.items() if s == "test"}


def test_synonyms_swap_whole_words_keep_capitals_and_leave_slots_alone():
    rng = random.Random(0)
    outs = {augment.synonyms(rng, "Kill the {city} process and make it quick", rate=1.0) for _ in range(40)}
    assert all("{city}" in o for o in outs)
    assert all(o.split()[0][0].isupper() for o in outs)
    assert not any(o.startswith("Kill ") for o in outs) and len(outs) > 2
    # whole words only: "skills" is not "kill"
    assert augment.synonyms(random.Random(0), "skills and skillets", rate=1.0) == "skills and skillets"


def test_noise_hits_benign_and_harmful_prompts_alike(dataset_10k):
    def typed(r):
        u = _user(r)
        return u == u.lower() or u == u.upper()

    benign = [r for r in dataset_10k if r["kind"] == "benign"]
    harmful = [r for r in dataset_10k if r["kind"] == "harmful_request"]
    rb = sum(map(typed, benign)) / len(benign)
    rh = sum(map(typed, harmful)) / len(harmful)
    assert 0.02 < rb < 0.2 and 0.02 < rh < 0.2 and abs(rb - rh) < 0.05
