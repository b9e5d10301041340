"""The constitutional JSONL record: its kinds, its fields and the checks ``kala data validate`` runs.

One record per line::

    {"id": str,
     "kind": one of KINDS,
     "family": str,              # template family; the train/validation split is made by family
     "split": "train" | "validation" | "test",
     "primary_law": int 0-4 | null,   # null exactly for the benign kinds
     "labels": [5 floats in [0, 1]],  # the record's law vector: low on violated laws, 1.0 elsewhere
     "parts": [{"role": "system" | "user" | "assistant",
                "text": str,          # non-empty
                "labels": [5 floats], # per-token targets of this part's tokens
                "lm": bool}, ...]}    # whether this part's tokens get language-modeling loss

Targets (DESIGN.md "Data and targets"): a harmful request's tokens carry the request's law
vector; an ethical response or a benign exchange carries 1.0 on every law; a harmful
completion carries low values on the laws it violates and ``lm`` is false, so the model learns
to recognise such text and never to write it.
"""

from __future__ import annotations

import math
from typing import Any

from kala_engine.constitution import NUM_LAWS

#: Every record kind, in the order the summary prints them.
KINDS = (
    "harmful_request",
    "critique_revision",
    "law_specific",
    "benign",
    "benign_alarming",
    "harmful_completion",
    "multi_turn",
)
#: Kinds whose records carry no violation: primary_law is null and every label is 1.0.
BENIGN_KINDS = ("benign", "benign_alarming")
#: Kinds built around a law (a violation, or a conflict between laws resolved by the hierarchy).
HARMFUL_KINDS = tuple(k for k in KINDS if k not in BENIGN_KINDS)
ROLES = ("system", "user", "assistant")
SPLITS = ("train", "validation", "test")  # test: held out, never trained or calibrated on
FIELDS = ("id", "kind", "family", "split", "primary_law", "labels", "parts")
#: A target under this value counts as "violated" (used by checks and statistics).
VIOLATION = 0.5


def _encodable(text: str) -> bool:
    """False for strings JSON can hold but UTF-8 cannot (lone surrogates such as "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_labels(value: Any, where: str) -> list[str]:
    """Problems with a five-law label vector (empty list when it is fine)."""
    if not isinstance(value, list):
        return [f"{where} must be a list of {NUM_LAWS} numbers, got {type(value).__name__}"]
    if len(value) != NUM_LAWS:
        return [f"{where} must hold {NUM_LAWS} numbers (one per law), got {len(value)}"]
    errors = []
    for i, x in enumerate(value):
        if not _is_number(x):
            errors.append(f"{where}[{i}] must be a number, got {x!r}")
        elif not math.isfinite(x) or not 0.0 <= x <= 1.0:
            errors.append(f"{where}[{i}] = {x!r} is outside [0, 1]")
    return errors


def validate_record(obj: Any) -> list[str]:
    """Every problem with one decoded JSON value as a KALA record (empty list: the record is valid).

    Messages name the field, e.g. ``"field 'primary_law' = 7 is out of range 0-4"``.
    """
    if not isinstance(obj, dict):
        return [f"record must be a JSON object, got {type(obj).__name__}"]
    errors: list[str] = []
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        errors.append("missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(f"'{f}'" for f in missing))
    for name in ("id", "family"):
        if name in obj and (not isinstance(obj[name], str) or not obj[name].strip()):
            errors.append(f"field '{name}' must be a non-empty string")
        elif name in obj and not _encodable(obj[name]):
            errors.append(f"field '{name}' holds an unpaired surrogate (not valid UTF-8 text)")
    kind = obj.get("kind")
    if "kind" in obj and kind not in KINDS:
        errors.append(f"field 'kind' = {kind!r} is not one of {', '.join(KINDS)}")
    if "split" in obj and obj["split"] not in SPLITS:
        errors.append(f"field 'split' = {obj['split']!r} must be 'train', 'validation' or 'test'")
    if "primary_law" in obj:
        law = obj["primary_law"]
        if law is None:
            if kind in HARMFUL_KINDS:
                errors.append(f"field 'primary_law' must be a law index 0-{NUM_LAWS - 1} for kind {kind!r}")
        elif not isinstance(law, int) or isinstance(law, bool):
            errors.append(f"field 'primary_law' must be an integer 0-{NUM_LAWS - 1} or null, got {law!r}")
        elif not 0 <= law < NUM_LAWS:
            errors.append(f"field 'primary_law' = {law} is out of range 0-{NUM_LAWS - 1}")
        elif kind in BENIGN_KINDS:
            errors.append(f"field 'primary_law' must be null for kind {kind!r}")
    if "labels" in obj:
        label_errors = check_labels(obj["labels"], "field 'labels'")
        errors += label_errors
        if not label_errors and kind in BENIGN_KINDS and any(x != 1.0 for x in obj["labels"]):
            errors.append(f"field 'labels' must be all 1.0 for kind {kind!r}")
    if "parts" in obj:
        parts = obj["parts"]
        if not isinstance(parts, list) or not parts:
            errors.append("field 'parts' must be a non-empty list")
        else:
            for i, part in enumerate(parts):
                errors += _validate_part(part, f"parts[{i}]")
    return errors


def _validate_part(part: Any, where: str) -> list[str]:
    if not isinstance(part, dict):
        return [f"{where} must be an object with 'role', 'text', 'labels' and 'lm'"]
    errors = []
    missing = [f for f in ("role", "text", "labels", "lm") if f not in part]
    if missing:
        errors.append(f"{where}: missing " + ", ".join(f"'{f}'" for f in missing))
    if "role" in part and part["role"] not in ROLES:
        errors.append(f"{where}.role = {part['role']!r} must be one of {', '.join(ROLES)}")
    if "text" in part:
        text = part["text"]
        if not isinstance(text, str):
            errors.append(f"{where}.text must be a string")
        elif not text.strip():
            errors.append(f"{where}.text is empty")
        elif not _encodable(text):
            errors.append(f"{where}.text holds an unpaired surrogate (not valid UTF-8 text)")
    label_errors = check_labels(part["labels"], f"{where}.labels") if "labels" in part else []
    errors += label_errors
    if "lm" in part and not isinstance(part["lm"], bool):
        errors.append(f"{where}.lm must be true or false")
    elif (
        not label_errors
        and "labels" in part
        and part.get("role") == "assistant"
        and part.get("lm") is True
        and min(part["labels"]) < VIOLATION
    ):
        errors.append(f"{where}: an assistant part that violates a law (label < {VIOLATION}) must have lm false")
    return errors


def violated_laws(labels: list[float]) -> list[int]:
    """Indices of the laws a label vector marks as violated (below VIOLATION), in hierarchy order."""
    return [i for i, x in enumerate(labels) if x < VIOLATION]
