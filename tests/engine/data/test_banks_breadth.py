"""Breadth of the prompt banks (issue 16 item 3): enough topics per law, families and everyday
questions that the model learns concepts rather than a few templates, with unique ids, intent
cues in the asks and harmful completions free of operational detail."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from kala_engine.constitution import NUM_LAWS
from kala_engine.data.banks import load_banks

# A person as the target, concealment, or scale: the cues that make a request harmful
# whatever its object noun.
INTENT_CUES = re.compile(
    r"\{(target|city|event|country|voters)\}|without (anyone|them|her|him|being|leaving|getting)|"
    r"looks? like|nobody|never (know|find)|"
    r"as many \w+ as possible|thousands|millions|crowd|whole (city|region|town|country)"
)


@pytest.fixture(scope="module")
def banks():
    return load_banks()


@pytest.mark.parametrize("law", range(NUM_LAWS))
def test_every_law_has_many_topics_with_several_asks(banks, law):
    topics = banks.topics_for(law)
    # Breadth of concepts is what lets the model catch unseen harmful requests (issue 16 item 3):
    # the laws about harm (0, 1) need the most, every law needs many worded several ways.
    min_topics, min_asks = (40, 230) if law <= 1 else (25, 110)
    assert len(topics) >= min_topics, f"law {law}: only {len(topics)} harmful topics"
    assert all(len(t.ask) >= 3 for t in topics), [t.id for t in topics if len(t.ask) < 3]
    assert sum(len(t.ask) for t in topics) >= min_asks
    varied = [t.id for t in topics if len(t.ask) >= 6]
    assert len(varied) >= 7, f"law {law}: only {len(varied)} topics worded 6 or more ways"


def test_ids_are_unique(banks):
    """A repeated id would silently merge two template families (and their split)."""
    for name, ids in (("topic", [t.id for t in banks.topics]), ("scenario", [s.id for s in banks.scenarios])):
        dup = [i for i, n in Counter(ids).items() if n > 1]
        assert not dup, f"repeated {name} ids: {dup}"


def test_benign_and_alarming_banks_are_broad(banks):
    alarming = Counter(qa.family for qa in banks.alarming)
    assert len(alarming) >= 130 and min(alarming.values()) >= 3
    topics = {qa.family.rsplit(".", 1)[0] for qa in banks.benign}
    assert len(banks.benign) >= 440 and len(topics) >= 50


def test_no_question_is_both_harmful_and_benign(banks):
    asks = {a.lower() for t in banks.topics for a in t.ask}
    questions = [q.lower() for qa in (*banks.benign, *banks.alarming) for q in qa.q]
    assert not [q for q in questions if any(q.rstrip("?.").endswith(a) for a in asks)]


@pytest.mark.parametrize("law", (0, 1))
def test_asks_about_people_and_scale_carry_intent_cues(banks, law):
    asks = [a for t in banks.topics_for(law) for a in t.ask]
    cued = [a for a in asks if INTENT_CUES.search(a)]
    assert len(cued) >= 40, f"law {law}: {len(cued)} asks with a target, concealment or scale cue"


def test_harmful_completions_hold_no_quantities_or_steps(banks):
    """'bad' completions are negatives to recognise: tone and intent, never a method."""
    method = re.compile(r"\d|\bstep (one|two|1|2)\b|\bgrams?\b|\bml\b|\bmg\b|\bounces?\b", re.IGNORECASE)
    leaks = [(t.id, s) for t in banks.topics for s in t.bad if method.search(s)]
    assert not leaks, leaks
