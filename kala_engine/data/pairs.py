"""Preference pairs: (prompt, chosen reply, rejected reply) records for ``kala align``.

One JSON object per line::

    {"id": str,
     "kind": "preference",
     "source": "harmful_completion" | "critique_revision" | "hh-rlhf" | "pku-saferlhf" | ...,
     "family": str,                  # template family; the train/validation split is made by family
     "split": "train" | "validation",
     "primary_law": int 0-4,         # the highest-priority law the rejected reply violates
     "violated": [int, ...],         # every law the rejected reply violates (its labels < 0.5)
     "prompt": [{"role", "text", "labels"}, ...],   # the context; the last part is the user's
     "chosen": {"text": str, "labels": [5 floats]},  # the preferred reply (violates no law)
     "rejected": {"text": str, "labels": [5 floats]}}

Where pairs come from:

- the generator (:func:`iter_pairs`): a harmful request with its ethical reply preferred to a
  harmful completion of the same request, and a critique -> revision record's revision preferred
  to its flawed draft, and a benign or benign-but-alarming question's answer preferred to a
  needless refusal (neither reply violates a law: both keep target 1.0). The families and the held-out split are the generator's
  (:func:`kala_engine.data.generate.validation_families`), so validation pairs are unseen wordings.
- the importers (:func:`pairs_from_records`): HH-RLHF's chosen over rejected and PKU-SafeRLHF's
  safe over unsafe response, paired back from the records the importer writes (the law labels
  are the importer's category -> law mapping).

For training, a pair becomes two records in the record format (:func:`pair_records`) that
:func:`kala_engine.data.collate.encode_records` encodes: the reply's tokens carry its law
targets, so the ethics heads keep learning on both replies.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kala_engine.constitution import NUM_LAWS
from kala_engine.data.io import iter_jsonl_lines, write_jsonl
from kala_engine.data.schema import ROLES, SPLITS, VIOLATION, _encodable, check_labels, violated_laws

PAIR_KIND = "preference"
PAIR_FIELDS = ("id", "kind", "source", "family", "split", "primary_law", "violated", "prompt", "chosen", "rejected")
#: generated pair sources and their shares (over_refusal: a benign or alarming-worded question, its
#: answer preferred to a needless refusal - without them preference training learns to refuse everything)
PAIR_SOURCES = {"harmful_completion": 0.45, "critique_revision": 0.3, "over_refusal": 0.25}
ONES = [1.0] * NUM_LAWS


# ---------------------------------------------------------------------- validation


def _check_text(value: Any, where: str) -> list[str]:
    if not isinstance(value, str):
        return [f"{where} must be a string"]
    if not value.strip():
        return [f"{where} is empty"]
    if not _encodable(value):
        return [f"{where} holds an unpaired surrogate (not valid UTF-8 text)"]
    return []


def _check_reply(obj: dict, name: str) -> list[str]:
    reply = obj[name]
    if not isinstance(reply, dict):
        return [f"field '{name}' must be an object with 'text' and 'labels'"]
    errors = [f"field '{name}': missing '{f}'" for f in ("text", "labels") if f not in reply]
    if "text" in reply:
        errors += _check_text(reply["text"], f"field '{name}'.text")
    if "labels" in reply:
        errors += check_labels(reply["labels"], f"field '{name}'.labels")
    return errors


def _check_prompt(prompt: Any) -> list[str]:
    if not isinstance(prompt, list) or not prompt:
        return ["field 'prompt' must be a non-empty list of parts"]
    errors = []
    for i, p in enumerate(prompt):
        where = f"prompt[{i}]"
        if not isinstance(p, dict) or any(f not in p for f in ("role", "text", "labels")):
            errors.append(f"{where} must be an object with 'role', 'text' and 'labels'")
            continue
        if p["role"] not in ROLES:
            errors.append(f"{where}.role = {p['role']!r} must be one of {', '.join(ROLES)}")
        errors += _check_text(p["text"], f"{where}.text") + check_labels(p["labels"], f"{where}.labels")
    if not errors and prompt[-1]["role"] != "user":
        errors.append("field 'prompt' must end with a user part (the request the replies answer)")
    return errors


def validate_pair(obj: Any) -> list[str]:
    """Every problem with one decoded JSON value as a pair record (empty list: it is valid)."""
    if not isinstance(obj, dict):
        return [f"pair must be a JSON object, got {type(obj).__name__}"]
    missing = [f for f in PAIR_FIELDS if f not in obj]
    if missing:
        return ["missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(f"'{f}'" for f in missing)]
    errors: list[str] = []
    for name in ("id", "family", "source"):
        if not isinstance(obj[name], str) or not obj[name].strip():
            errors.append(f"field '{name}' must be a non-empty string")
    if obj["kind"] != PAIR_KIND:
        errors.append(f"field 'kind' = {obj['kind']!r} must be {PAIR_KIND!r}")
    if obj["split"] not in SPLITS:
        errors.append(f"field 'split' = {obj['split']!r} must be 'train' or 'validation'")
    errors += _check_prompt(obj["prompt"]) + _check_reply(obj, "chosen") + _check_reply(obj, "rejected")
    if errors:
        return errors
    chosen, rejected = obj["chosen"], obj["rejected"]
    if chosen["text"].strip() == rejected["text"].strip():
        errors.append("the chosen and the rejected reply are the same text")
    if violated_laws(chosen["labels"]):
        errors.append(f"field 'chosen'.labels: the preferred reply violates laws {violated_laws(chosen['labels'])} "
                      f"(a label < {VIOLATION})")
    bad = violated_laws(rejected["labels"])
    violated = obj["violated"]
    if not isinstance(violated, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in violated):
        errors.append("field 'violated' must be a list of law indices")
    elif sorted(violated) != bad:
        errors.append(f"field 'violated' = {violated} must list the laws the rejected reply's labels violate ({bad})")
    law = obj["primary_law"]
    if bad and law != min(bad):
        errors.append(f"field 'primary_law' = {law!r} must be {min(bad)}, the highest-priority law violated")
    elif not bad and law is not None:
        errors.append("field 'primary_law' must be null when the rejected reply violates no law")
    return errors


def validate_pair_file(path: str | Path) -> list[str]:
    """Every problem in a pair file as ``FILE:LINE: reason`` (empty list: the file is valid)."""
    problems, seen, count = [], {}, 0
    for lineno, value, error in iter_jsonl_lines(path):
        count += 1
        reasons = [error] if error else validate_pair(value)
        if not reasons:
            if value["id"] in seen:
                reasons = [f"duplicate id {value['id']!r} (first on line {seen[value['id']]})"]
            seen.setdefault(value["id"], lineno)
        problems += [f"{path}:{lineno}: {r}" for r in reasons]
    if count == 0:
        problems.append(f"{path}:1: the file holds no pairs")
    return problems


def is_pair_file(path: str | Path) -> bool:
    """True when the file's first record looks like a pair (it has 'chosen' and 'rejected')."""
    for _, value, _ in iter_jsonl_lines(path):
        return isinstance(value, dict) and "chosen" in value and "rejected" in value
    return False


def load_pairs(path: str | Path) -> list[dict]:
    """The pairs of a file; ValueError listing every ``FILE:LINE: reason`` when any line is bad."""
    problems = validate_pair_file(path)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ValueError(f"{path}: {len(problems)} bad pair line(s):\n" + "\n".join(shown))
    return [v for _, v, _ in iter_jsonl_lines(path)]


# ---------------------------------------------------------------------- making pairs


def make_pair(pid: str, source: str, family: str, split: str, prompt: list[dict], chosen: str,
              chosen_labels: list[float], rejected: str, rejected_labels: list[float]) -> dict:
    bad = violated_laws(rejected_labels)
    return {"id": pid, "kind": PAIR_KIND, "source": source, "family": family, "split": split,
            "primary_law": min(bad) if bad else None, "violated": bad,
            "prompt": [{"role": p["role"], "text": p["text"], "labels": list(p["labels"])} for p in prompt],
            "chosen": {"text": chosen, "labels": list(chosen_labels)},
            "rejected": {"text": rejected, "labels": list(rejected_labels)}}


def iter_pairs(count: int, seed: int = 0) -> Iterator[dict]:
    """``count`` distinct generated pairs (deterministic for a seed); see the module docstring."""
    from kala_engine.constitution import load_constitution
    from kala_engine.data.banks import load_banks
    from kala_engine.data.generate import _Renderer, validation_families

    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    banks = load_banks()
    rng = random.Random(seed)
    r = _Renderer(banks, load_constitution(), rng)
    held_out = validation_families(banks)
    topics = [banks.topics_for(k) for k in range(NUM_LAWS)]
    sources, weights = list(PAIR_SOURCES), list(PAIR_SOURCES.values())
    seen: set[tuple] = set()
    made = attempts = 0
    while made < count:
        attempts += 1
        if attempts > 30 * count + 1000:
            raise ValueError(f"could only generate {made} distinct pairs out of {count}; ask for fewer")
        source = rng.choices(sources, weights)[0]
        if source == "over_refusal":
            family, parts = r.benign(banks.benign if rng.random() < 0.5 else banks.alarming)
            prompt, chosen, rejected = parts[:-1], parts[-1]["text"], r.pick(r.t["response"]["decline"])
            key = (prompt[-1]["text"], chosen, rejected)
            if key not in seen:
                seen.add(key)
                yield make_pair(f"pair-s{seed}-{made:06d}", source, family,
                                "validation" if family in held_out else "train", prompt, chosen, ONES, rejected, ONES)
                made += 1
            continue
        topic = r.pick(topics[rng.randrange(NUM_LAWS)])
        v = r.slots()
        pressure = r._pressure(topic)
        text, ask = r.request(topic, v, pressure)
        labels = r.request_labels(topic, pressure)
        prompt = r.system_part() + [{"role": "user", "text": text, "labels": labels}]
        if source == "harmful_completion":
            chosen, rejected, rejected_labels = r.ethical_reply(topic, v, pressure), r.harmful_text(topic, v, ask), labels
        else:
            from kala_engine.data.generate import DRAFT_TARGET

            crit = r.t["critique"]
            chosen = r.pick(crit["revision_prefix"]) + r.ethical_reply(topic, v, pressure)
            rejected = r.pick(crit["draft"])
            rejected_labels = [DRAFT_TARGET if x < 1.0 else 1.0 for x in labels]
        key = (text, chosen, rejected)
        if key in seen or chosen.strip() == rejected.strip():
            continue
        seen.add(key)
        split = "validation" if topic.id in held_out else "train"
        yield make_pair(f"pair-s{seed}-{made:06d}", source, topic.id, split, prompt, chosen, ONES, rejected,
                        rejected_labels)
        made += 1


def pairs_from_records(records: list[dict], source: str) -> list[dict]:
    """Pairs from imported records: within one context (the parts before the last reply), a reply
    that violates no law (LM loss) is preferred to a ``harmful_completion`` reply."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for rec in records:
        *context, last = rec["parts"]
        if last["role"] != "assistant" or not context or context[-1]["role"] != "user":
            continue
        key = tuple((p["role"], p["text"]) for p in context)
        g = groups.setdefault(key, {"good": [], "bad": [], "context": context, "rec": rec})
        if rec["kind"] == "harmful_completion":
            g["bad"].append(last)
        elif last["lm"] and not violated_laws(last["labels"]):
            g["good"].append(last)
    out = []
    for g in groups.values():
        for good, bad in zip(g["good"], g["bad"], strict=False):
            if good["text"].strip() == bad["text"].strip() or not violated_laws(bad["labels"]):
                continue
            rec = g["rec"]
            out.append(make_pair(f"{source}-pair-{len(out):06d}", source, rec["family"], rec["split"], g["context"],
                                 good["text"], ONES, bad["text"], bad["labels"]))
    return out


def import_pairs(path: str | Path, fmt: str, out: str | Path) -> str:
    """Convert a local HH-RLHF / PKU-SafeRLHF file into a pair file; returns a one-line report."""
    from kala_engine.data.importers import import_records

    if Path(out).resolve() == Path(path).resolve():
        raise ValueError(f"{out}: the output would overwrite the input; choose another --out")
    records, report = import_records(path, fmt)
    pairs = pairs_from_records(records, report.fmt)
    if not pairs:
        raise ValueError(f"{path}: no (safe reply, unsafe reply) pair of the same prompt found; nothing written")
    write_jsonl(out, pairs)
    n_val = sum(p["split"] == "validation" for p in pairs)
    return f"{path} ({report.fmt}): {report.lines} lines -> {len(pairs)} pairs ({n_val} validation) in {out}"


# ---------------------------------------------------------------------- for training


def pair_records(pair: dict) -> tuple[dict, dict]:
    """(chosen, rejected) as records for :func:`kala_engine.data.collate.encode_records`: the
    context without LM loss, then the reply with its labels; the reply is flagged ``lm`` so its
    tokens are the ones whose log-probability is scored (the preference loss, not an LM loss)."""
    context = [{"role": p["role"], "text": p["text"], "labels": p["labels"], "lm": False} for p in pair["prompt"]]

    def rec(reply: dict) -> dict:
        return {"parts": context + [{"role": "assistant", "text": reply["text"], "labels": reply["labels"],
                                     "lm": True}]}

    return rec(pair["chosen"]), rec(pair["rejected"])


def calibration_records(pairs: list[dict]) -> list[dict]:
    """Validation pairs as records for threshold calibration: the chosen reply after its prompt,
    kind "benign" when the prompt violates no law, else "harmful_request"."""
    out = []
    for p in pairs:
        harmful = any(violated_laws(q["labels"]) for q in p["prompt"] if q["role"] == "user")
        parts = [{"role": q["role"], "text": q["text"], "labels": q["labels"], "lm": False} for q in p["prompt"]]
        parts.append({"role": "assistant", "text": p["chosen"]["text"], "labels": ONES, "lm": True})
        out.append({"id": p["id"], "kind": "harmful_request" if harmful else "benign", "parts": parts})
    return out


def write_pairs(path: str | Path, count: int, seed: int = 0) -> dict[str, Any]:
    """Generate ``count`` pairs into ``path`` atomically; returns counts by source and split."""
    stats: dict[str, Any] = {"by_source": {}, "by_split": {}}

    def stream():
        for p in iter_pairs(count, seed):
            stats["by_source"][p["source"]] = stats["by_source"].get(p["source"], 0) + 1
            stats["by_split"][p["split"]] = stats["by_split"].get(p["split"], 0) + 1
            yield p

    stats["n"] = write_jsonl(path, stream())
    return stats
