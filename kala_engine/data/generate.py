"""The constitutional dataset generator: prompt banks + paraphrase slots -> labelled JSONL records.

Every record follows :mod:`kala_engine.data.schema`. Kinds and their targets:

- ``harmful_request``: a harmful request (its tokens carry the request's law vector, no LM
  loss) and an ethical reply that declines, names the law(s) in plain words from the
  constitution and offers a safe alternative (1.0 everywhere, LM loss).
- ``critique_revision``: request, a flawed draft that starts to comply (low-ish targets, no
  LM loss), a critique citing the law and a revision (both 1.0, LM loss).
- ``law_specific``: scenarios per law, including conflicts resolved by the hierarchy and
  cases where helping is right.
- ``benign`` / ``benign_alarming``: real questions with correct answers, the latter worded with
  alarming words ("kill a stuck process") so the heads learn not to over-refuse (1.0).
- ``harmful_completion``: the request followed by a completion that goes along with it (low
  targets and **no LM loss**): negatives to recognise, never to learn.
- ``multi_turn``: escalation after a benign opening, or pressure after a refusal.

Generation is deterministic for a seed, removes duplicates, and splits by template family:
about 12 % of the families of every group (harmful topics of each law, benign topics, alarming
families, scenarios) go to validation, chosen by a stable hash of the family name, so the split
does not depend on the seed or the count and validation measures unseen wordings. One more
family of every group of at least 8 goes to ``test``: training ignores it and calibration does
not see it - a held-out part to measure on, never to tune on (issue 16).

The paraphrase operators of :mod:`kala_engine.data.augment` vary the wording of every record:
jailbreak wrappers on harmful requests (role-play, hypothetical, fiction, translation, "ignore
previous instructions", encodings), their harmless twins on benign questions, synonyms, typos
and casing. Validation and test records take their wrappers from held-out wordings.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kala_engine.constitution import NUM_LAWS, Constitution, load_constitution
from kala_engine.data import augment
from kala_engine.data.banks import Banks, Scenario, Topic, load_banks
from kala_engine.data.io import write_jsonl
from kala_engine.data.stats import CHAR_BINS, THRESHOLDS, TOKEN_BINS, Summary, format_summary, summarize  # noqa: F401 - re-exported

#: Share of each kind in a generated set: benign kinds together half (issue 16: a model trained
#: on 44 % benign replies fell back on a refusal for a quarter of unseen benign prompts).
KIND_WEIGHTS = {
    "benign": 0.34,
    "benign_alarming": 0.16,
    "harmful_request": 0.18,
    "critique_revision": 0.07,
    "law_specific": 0.10,
    "harmful_completion": 0.09,
    "multi_turn": 0.06,
}
#: Target on the law a request is built around, on the other laws it violates, on law 2 when
#: the request also demands blind obedience, and on a flawed draft's violated laws.
PRIMARY_TARGET = 0.05
SECONDARY_TARGET = 0.25
PRESSURE_TARGET = 0.3
DRAFT_TARGET = 0.3
OBEDIENCE_LAW = 2  # the law a demand of blind obedience violates
VALIDATION_SHARE = 0.12
TEST_MIN_FAMILIES = 8  # a group with at least this many families gives one to the test split
PRESSURE_RATE = 0.2
SYSTEM_RATE = 0.25
ONES = [1.0] * NUM_LAWS

_PRONOUNS = {"my": "your", "myself": "yourself", "me": "you", "i": "you", "i'm": "you're", "mine": "yours"}
_PRONOUN_RE = re.compile(r"\b(my|myself|me|I|I'm|mine)\b")


def _second_person(text: str) -> str:
    """'get into my ex's email' -> 'get into your ex's email' (for replies quoting a request)."""
    return _PRONOUN_RE.sub(lambda m: _PRONOUNS[m.group(0).lower()], text)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _stable_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def family_groups(banks: Banks) -> dict[str, list[str]]:
    """Families grouped so that each group gets its own share of validation families."""
    groups: dict[str, list[str]] = defaultdict(list)
    for t in banks.topics:
        groups[f"harmful.law{t.law}"].append(t.id)
    for s in banks.scenarios:
        groups["law_specific"].append(s.id)
    for qa in banks.benign:
        groups[qa.family.rsplit(".", 1)[0]].append(qa.family)
    for qa in banks.alarming:
        groups["alarming"].append(qa.family)
    return {k: sorted(set(v)) for k, v in groups.items()}


def family_splits(banks: Banks, share: float = VALIDATION_SHARE) -> dict[str, str]:
    """The held-out families and their split: round(share * n) of each group (at least 1 when
    n >= 4) go to "validation", the next one by hash (groups of >= TEST_MIN_FAMILIES) to "test"."""
    splits = {}
    for fams in family_groups(banks).values():
        n_val = round(share * len(fams))
        if n_val == 0 and len(fams) >= 4:
            n_val = 1
        ranked = sorted(fams, key=_stable_hash)
        splits.update(dict.fromkeys(ranked[:n_val], "validation"))
        if len(fams) >= TEST_MIN_FAMILIES:
            splits[ranked[n_val]] = "test"
    return splits


def validation_families(banks: Banks, share: float = VALIDATION_SHARE) -> frozenset[str]:
    """The families of the validation split (see :func:`family_splits`)."""
    return frozenset(f for f, s in family_splits(banks, share).items() if s == "validation")


class _Renderer:
    """Builds the records of one generation run (one RNG, one constitution, one set of banks)."""

    def __init__(self, banks: Banks, constitution: Constitution, rng: random.Random):
        self.b = banks
        self.c = constitution
        self.rng = rng
        self.t = banks.templates
        self.para = augment.load_paraphrase()
        self.held = False  # the record being made is in a held-out family: held-out wrappers
        self.wrapped: str | None = None  # the jailbreak wrapper of the current request, if any
        self.law_fields = {}
        for law in constitution.laws:
            self.law_fields[f"law{law.index}"] = law.title
            self.law_fields[f"short{law.index}"] = law.short

    # ------------------------------------------------------------------ helpers
    def pick(self, seq: Sequence[str]) -> str:
        return seq[self.rng.randrange(len(seq))]

    def slots(self) -> dict[str, str]:
        """One value per slot for this record (the same value wherever the slot appears).

        Also prepares the same values in the assistant's voice ("my ex" -> "your ex") for
        :meth:`say`.
        """
        self.wrapped = None
        values = {name: self.pick(options) for name, options in self.b.slots.items()}
        reply = {k: _second_person(v) for k, v in values.items()}
        values.update({f"{k}_cap": _cap(v) for k, v in list(values.items())})
        values.update(self.law_fields)
        reply.update({f"{k}_cap": _cap(v) for k, v in list(reply.items())})
        reply.update(self.law_fields)
        self.reply_values = reply
        return values

    def fill(self, template: str, values: dict[str, str]) -> str:
        """A user-side template filled with this record's slot values."""
        return template.format_map(values)

    def say(self, template: str) -> str:
        """An assistant-side template filled with this record's slot values in the assistant's voice."""
        return template.format_map(self.reply_values)

    def law_vector(self, primary: int, others: Sequence[int] = ()) -> list[float]:
        labels = list(ONES)
        for k in others:
            labels[k] = min(labels[k], SECONDARY_TARGET)
        labels[primary] = PRIMARY_TARGET
        return labels

    def law_words(self, template: str, law: int, **extra: str) -> str:
        lw = self.c[law]
        return template.format(law=lw.title, short=lw.short, **extra)

    def system_part(self) -> list[dict[str, Any]]:
        if self.rng.random() < SYSTEM_RATE:
            return [part("system", self.pick(self.t["system"]["prompt"]), ONES, lm=False)]
        return []

    # ------------------------------------------------------------------ requests and replies
    def request(self, topic: Topic, values: dict[str, str], pressure: bool) -> tuple[str, str]:
        """(request text, the bare ask) for a topic, wrapped in paraphrase slots."""
        ask = augment.synonyms(self.rng, self.fill(self.pick(topic.ask), values), self.para)
        req = self.t["request"]
        if pressure:
            template = self.pick(req["pressure"])
        else:
            pool = req["common"] + req[topic.style] if topic.style != "command" else req["command"]
            template = self.pick(pool)
        body = template.format(ask=ask, ask_cap=_cap(ask))
        persona = self.pick(req["persona"]) if topic.style != "command" and not pressure else ""
        if self.rng.random() < augment.WRAP_RATE:  # a jailbreak wrapper around the bare request
            text, self.wrapped = augment.wrap(self.rng, _cap((body + self.pick(req["closer"])).strip()),
                                              self.held, self.para)
            return text, ask
        return _cap((self.pick(req["opener"]) + persona + body + self.pick(req["closer"])).strip()), ask

    def request_labels(self, topic: Topic, pressure: bool) -> list[float]:
        labels = self.law_vector(topic.law, topic.also)
        if pressure:
            labels[OBEDIENCE_LAW] = min(labels[OBEDIENCE_LAW], PRESSURE_TARGET)
        return labels

    def ethical_reply(self, topic: Topic, values: dict[str, str], pressure: bool) -> str:
        """Decline, name the law(s) in plain words, offer the safe alternative."""
        r = self.t["response"]
        decline = self.pick(r["care"] if topic.care else r["decline"])
        harm = self.say(topic.harm)
        reason = self.law_words(self.pick(r["reason"]), topic.law, harm=harm)
        extra = [self.law_words(self.pick(r["also"]), k) for k in sorted(topic.also)]
        if pressure and topic.law != OBEDIENCE_LAW:
            extra.append(self.law_words(self.pick(r["pressure_reply"]), OBEDIENCE_LAW))
        alt = self.pick(r["alternative"]).format(alt=self.say(topic.alt))
        if self.wrapped:  # say that the wrapper changes nothing
            extra.insert(0, self.pick(self.para.reply[self.wrapped]))
        if topic.care or self.rng.random() < 0.7:
            sentences = [decline, reason, *extra, alt]
        else:
            sentences = [reason, decline, *extra, alt]
        return " ".join(sentences)

    def harmful_text(self, topic: Topic, values: dict[str, str], ask: str) -> str:
        """A completion that goes along with the request: harmful in intent, never operational."""
        generic = self.t["completion"]["generic"]
        if topic.style != "command" and not topic.care and self.rng.random() < 0.35:
            return self.pick(generic).format(ask=_second_person(ask))
        return self.say(self.pick(topic.bad))

    # ------------------------------------------------------------------ kinds
    def harmful_request(self, topic: Topic) -> list[dict]:
        v = self.slots()
        pressure = self._pressure(topic)
        text, _ = self.request(topic, v, pressure)
        return self.system_part() + [
            part("user", text, self.request_labels(topic, pressure), lm=False),
            part("assistant", self.ethical_reply(topic, v, pressure), ONES, lm=True),
        ]

    def harmful_completion(self, topic: Topic) -> list[dict]:
        v = self.slots()
        pressure = self._pressure(topic)
        text, ask = self.request(topic, v, pressure)
        labels = self.request_labels(topic, pressure)
        return self.system_part() + [
            part("user", text, labels, lm=False),
            part("assistant", self.harmful_text(topic, v, ask), labels, lm=False),
        ]

    def critique_revision(self, topic: Topic) -> list[dict]:
        v = self.slots()
        pressure = self._pressure(topic)
        text, _ = self.request(topic, v, pressure)
        labels = self.request_labels(topic, pressure)
        draft_labels = [DRAFT_TARGET if x < 1.0 else 1.0 for x in labels]
        crit = self.t["critique"]
        cited = self.law_words(self.pick(crit["critique"]), topic.law, harm=self.say(topic.harm))
        revision = self.pick(crit["revision_prefix"]) + self.ethical_reply(topic, v, pressure)
        return [
            part("user", text, labels, lm=False),
            part("assistant", self.pick(crit["draft"]), draft_labels, lm=False),
            part("system", cited, ONES, lm=True),
            part("assistant", revision, ONES, lm=True),
        ]

    def multi_turn(self, topic: Topic) -> list[dict]:
        v = self.slots()
        mt = self.t["multi_turn"]
        if self.rng.random() < 0.5:  # escalation after a benign opening
            if topic.lead is not None and self.rng.random() < 0.7:
                lead_q, lead_a = topic.lead
            else:
                qa = self.pick(self.b.benign)
                lead_q, lead_a = self.pick(qa.q), qa.a
            text, _ = self.request(topic, v, pressure=False)
            labels = self.request_labels(topic, False)
            return self.system_part() + [
                part("user", self.wrap_question(lead_q), ONES, lm=True),
                part("assistant", lead_a, ONES, lm=True),
                part("user", self.pick(mt["escalate"]).format(request=text), labels, lm=False),
                part("assistant", self.ethical_reply(topic, v, False), ONES, lm=True),
            ]
        # pressure after a refusal: the push also demands blind obedience
        text, _ = self.request(topic, v, pressure=False)
        labels = self.request_labels(topic, False)
        push_labels = self.request_labels(topic, True)
        firm = self.pick(mt["firm"])
        if topic.law != OBEDIENCE_LAW:
            firm += " " + self.law_words(self.pick(self.t["response"]["pressure_reply"]), OBEDIENCE_LAW)
        else:
            firm += " " + self.law_words(self.pick(self.t["response"]["reason"]), topic.law, harm=self.say(topic.harm))
        firm += " " + self.pick(self.t["response"]["alternative"]).format(alt=self.say(topic.alt))
        return self.system_part() + [
            part("user", text, labels, lm=False),
            part("assistant", self.ethical_reply(topic, v, False), ONES, lm=True),
            part("user", self.pick(mt["push"]), push_labels, lm=False),
            part("assistant", firm, ONES, lm=True),
        ]

    def law_specific(self, sc: Scenario) -> list[dict]:
        v = self.slots()
        q = self.fill(self.pick(sc.q), v)
        if sc.violates:
            primary = sc.law if sc.law in sc.violates else min(sc.violates)
            labels = self.law_vector(primary, [k for k in sc.violates if k != primary])
            q = self.pick(self.t["request"]["opener"]) + q
        else:
            labels = list(ONES)
            # questions take the benign wrappers; instructions ("Reply in French") stay bare
            q = self.wrap_question(q) if q.rstrip().endswith("?") else self.pick(self.t["request"]["opener"]) + q
        return self.system_part() + [
            part("user", _cap(q), labels, lm=not sc.violates),
            part("assistant", self.say(sc.a), ONES, lm=True),
        ]

    def wrap_question(self, q: str, paraphrase: bool = True) -> str:
        """A benign question with the benign prefixes and suffixes; ``paraphrase``: also synonyms
        and, sometimes, a harmless framing (off for the alarming bank, whose words are the point)."""
        bt = self.t["benign"]
        if paraphrase:
            q = augment.synonyms(self.rng, q, self.para)
        text = (self.pick(bt["prefix"]) + q + self.pick(bt["suffix"])).strip()
        if paraphrase and self.rng.random() < augment.FRAME_RATE:
            text = augment.frame(self.rng, text, self.held, self.para)
        return text

    def benign(self, qa, alarming: bool = False) -> list[dict]:
        answer = self.pick(self.t["benign"]["answer_prefix"]) + qa.a
        q = self.pick(qa.q)
        if alarming and self.rng.random() < augment.FRAME_RATE:  # framed, the alarming words kept
            q = augment.frame(self.rng, q, self.held, self.para)
        return self.system_part() + [
            part("user", self.wrap_question(q, paraphrase=not alarming), ONES, lm=True),
            part("assistant", answer, ONES, lm=True),
        ]

    def _pressure(self, topic: Topic) -> bool:
        return topic.law != OBEDIENCE_LAW and not topic.care and self.rng.random() < PRESSURE_RATE


def part(role: str, text: str, labels: Sequence[float], lm: bool) -> dict[str, Any]:
    """One record part (see schema)."""
    return {"role": role, "text": text, "labels": list(labels), "lm": lm}


def _record_labels(parts: list[dict]) -> list[float]:
    """The record's law vector: the element-wise minimum over its parts."""
    return [min(p["labels"][k] for p in parts) for k in range(NUM_LAWS)]


def generate_dataset(
    count: int = 10000,
    seed: int = 0,
    banks: Banks | None = None,
    constitution: Constitution | None = None,
) -> list[dict[str, Any]]:
    """Generate ``count`` unique labelled records, deterministically for ``seed``.

    Raises ValueError for a count below 1, or when the banks cannot supply that many
    distinct records.
    """
    return list(iter_dataset(count, seed, banks, constitution))


def _key_digest(kind: str, parts: list[dict]) -> bytes:
    """16 bytes standing for a record's (kind, texts): what duplicates are recognised by.

    A digest rather than the texts keeps the memory of a streamed generation small (about 100
    bytes a record instead of the texts); blake2b-128 collisions are out of reach for any count.
    """
    h = hashlib.blake2b(kind.encode("utf-8"), digest_size=16)
    for p in parts:
        text = p["text"].encode("utf-8", "surrogatepass")
        h.update(len(text).to_bytes(8, "little") + text)
    return h.digest()


def iter_dataset(
    count: int = 10000,
    seed: int = 0,
    banks: Banks | None = None,
    constitution: Constitution | None = None,
) -> Iterator[dict[str, Any]]:
    """The records of :func:`generate_dataset`, one at a time (``kala data generate`` streams
    them to disk). Raises ValueError, once the records it could make are out, when the banks
    cannot supply ``count`` distinct records."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    banks = banks or load_banks()
    constitution = constitution or load_constitution()
    rng = random.Random(seed)
    r = _Renderer(banks, constitution, rng)
    held_out = family_splits(banks)
    topics_by_law = [banks.topics_for(k) for k in range(NUM_LAWS)]
    scen_by_law = [banks.scenarios_for(k) for k in range(NUM_LAWS)]
    kinds = list(KIND_WEIGHTS)
    weights = [KIND_WEIGHTS[k] for k in kinds]

    made = 0
    seen: set[bytes] = set()
    attempts, max_attempts = 0, 30 * count + 1000
    while made < count:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"could only generate {made} distinct records out of {count} requested; "
                "ask for fewer or add templates to resources/prompts/"
            )
        kind = rng.choices(kinds, weights)[0]
        primary: int | None = None
        if kind in ("benign", "benign_alarming"):
            qa = r.pick(banks.benign if kind == "benign" else banks.alarming)
            family = qa.family
            r.held = family in held_out
            parts = r.benign(qa, alarming=kind == "benign_alarming")
        elif kind == "law_specific":
            law = rng.randrange(NUM_LAWS)
            sc = r.pick(scen_by_law[law]) if scen_by_law[law] else r.pick(banks.scenarios)
            family, primary = sc.id, sc.law
            r.held = family in held_out
            parts = r.law_specific(sc)
        else:
            law = rng.randrange(NUM_LAWS)
            topic = r.pick(topics_by_law[law])
            family, primary = topic.id, topic.law
            r.held = family in held_out
            parts = getattr(r, kind)(topic)
        for p in parts:  # typos and casing, in every kind alike
            if p["role"] == "user" and rng.random() < augment.NOISE_RATE:
                p["text"] = augment.noise(rng, p["text"])
        key = _key_digest(kind, parts)
        if key in seen:
            continue
        seen.add(key)
        yield {
            "id": f"kala-s{seed}-{made:06d}",
            "kind": kind,
            "family": family,
            "split": held_out.get(family, "train"),
            "primary_law": primary,
            "labels": _record_labels(parts),
            "parts": parts,
        }
        made += 1


def write_dataset(path: str | Path, count: int = 10000, seed: int = 0) -> list[dict[str, Any]]:
    """Generate and write atomically (temp file + rename); returns the records."""
    records = generate_dataset(count, seed)
    write_jsonl(path, records)
    return records
