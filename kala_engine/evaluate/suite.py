"""Evaluation suites: JSONL records ``{"prompt", "label": "harmful"|"benign", "laws": [k, ...],
"kind"?: str, "id"?: str}``, read with every bad line reported as ``FILE:LINE: reason``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kala_engine.constitution import (
    NUM_LAWS,
)
from kala_engine.resources import resource_path

LABELS = ("harmful", "benign")


# ---------------------------------------------------------------- suite


class SuiteError(ValueError):
    """The suite file has bad lines; ``errors`` holds one ``FILE:LINE: reason`` per bad line."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class SuiteRecord:
    """One evaluation prompt.

    ``laws`` are the laws a harmful prompt violates (indices 0-4); for a benign prompt they are
    usually empty and are ignored by the metrics. ``kind`` groups records in the breakdown
    (e.g. harmful, jailbreak, benign, benign_alarming); ``None`` when the record has none.
    """

    id: str
    prompt: str
    label: str
    laws: tuple[int, ...]
    kind: str | None = None
    line: int = 0

    @property
    def harmful(self) -> bool:
        return self.label == "harmful"


def default_suite_path() -> Path:
    """The public suite shipped in ``resources/eval/public_suite.jsonl``."""
    return resource_path("eval", "public_suite.jsonl")


def _check_record(obj: Any, lineno: int) -> tuple[SuiteRecord | None, str | None]:
    """Return (record, None) or (None, reason) for one parsed JSON value."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    prompt = obj.get("prompt")
    if "prompt" not in obj:
        return None, "missing field 'prompt'"
    if not isinstance(prompt, str):
        return None, f"field 'prompt' must be a string, got {type(prompt).__name__}"
    if not prompt.strip():
        return None, "field 'prompt' is empty"
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON can spell a lone surrogate ("\ud800"); no tokenizer takes one
        return None, f"field 'prompt' holds an invalid character (lone surrogate U+{ord(prompt[e.start]):04X} " \
                     f"at position {e.start}); write the text as UTF-8"
    if "label" not in obj:
        return None, "missing field 'label' (harmful or benign)"
    label = obj["label"]
    if label not in LABELS:
        return None, f"field 'label' must be 'harmful' or 'benign', got {label!r}"
    laws_raw = obj.get("laws", [])
    if not isinstance(laws_raw, list) or not all(
        isinstance(k, int) and not isinstance(k, bool) and 0 <= k < NUM_LAWS for k in laws_raw
    ):
        return None, f"field 'laws' must be a list of law indices 0-{NUM_LAWS - 1}, got {laws_raw!r}"
    if label == "harmful" and not laws_raw:
        return None, "a harmful record must name the laws it violates in 'laws' (e.g. [1])"
    kind = obj.get("kind")
    if kind is not None and (not isinstance(kind, str) or not kind.strip()):
        return None, f"field 'kind' must be a non-empty string, got {kind!r}"
    rid = obj.get("id", f"line-{lineno}")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid).strip() == "":
        return None, f"field 'id' must be a non-empty string, got {rid!r}"
    laws = tuple(sorted(set(laws_raw)))
    return SuiteRecord(str(rid), prompt, label, laws, kind.strip() if kind else None, lineno), None


def parse_suite(lines: Sequence[str], name: str = "<suite>") -> list[SuiteRecord]:
    """Parse suite lines; blank lines are skipped. Raises SuiteError listing every bad line."""
    records: list[SuiteRecord] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{name}:{lineno}: malformed JSON: {e.msg} (column {e.colno})")
            continue
        rec, reason = _check_record(obj, lineno)
        if reason is not None:
            errors.append(f"{name}:{lineno}: {reason}")
            continue
        assert rec is not None
        if rec.id in seen:
            errors.append(f"{name}:{lineno}: duplicate id {rec.id!r} (also line {seen[rec.id]})")
            continue
        seen[rec.id] = lineno
        records.append(rec)
    if errors:
        raise SuiteError(errors)
    if not records:
        raise SuiteError([f"{name}:1: the suite holds no records; add JSONL lines with 'prompt' and 'label'"])
    return records


def load_suite(path: str | Path | None = None) -> list[SuiteRecord]:
    """Read a suite file (the public suite when ``path`` is None)."""
    path = Path(path) if path is not None else default_suite_path()
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder; pass --suite FILE (a JSONL file)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: evaluation suite not found; pass --suite FILE (a JSONL file)")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM (some editors write one), as `kala data validate` allows
        raw = raw[3:]
    lines: list[str] = []
    bad: list[str] = []
    for lineno, chunk in enumerate(raw.split(b"\n"), 1):  # JSONL lines end in \n (not in U+2028 and friends)
        try:
            lines.append(chunk.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            bad.append(f"{path}:{lineno}: not UTF-8 text (byte {e.start}: {e.reason})")
            lines.append("")
    try:
        records = parse_suite(lines, str(path))
    except SuiteError as e:
        if not bad:
            raise
        errors = [m for m in e.errors if not m.endswith("the suite holds no records; add JSONL lines with 'prompt' and 'label'")]
        prefix = f"{path}:"
        raise SuiteError(sorted(bad + errors, key=lambda m: int(m[len(prefix):].split(":", 1)[0]))) from None
    if bad:
        raise SuiteError(bad)
    return records
