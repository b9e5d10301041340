"""Importers for local copies of well-known safety datasets -> KALA records.

Formats (one JSON object per line; nothing is downloaded):

- ``hh-rlhf``: Anthropic HH-RLHF, ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``
- ``pku-saferlhf``: PKU-SafeRLHF, ``{"prompt", "response_0", "response_1", "is_response_0_safe",
  "is_response_1_safe", optional "response_0_harm_category": {category: bool}, ...}``
- ``beavertails``: BeaverTails, ``{"prompt", "response", "category": {category: bool}, "is_safe"}``
- ``kala``: KALA JSONL, checked record by record and copied.

Their categories map onto the five laws through ``resources/prompts/import_mapping.toml``
(keyed by law index; the table is documented there). Per-token targets follow DESIGN.md: the
prompt carries the law vector of the harm it led to, a safe reply carries 1.0 with LM loss, an
unsafe reply becomes a ``harmful_completion`` negative (low targets, no LM loss).

A line that is not valid JSON, not an object, or lacks a field of the format raises
ValueError ``FILE:LINE: reason``; the output is written to a temporary file and renamed only
when the whole input converted, so a failure never leaves partial output. Examples that cannot
become a valid record (empty text, an unsafe reply whose harm none of the laws covers) are
skipped and counted in the report.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from kala_engine.constitution import NUM_LAWS
from kala_engine.data.detect import detect_format, iter_rows, mismatch_hint
from kala_engine.data.io import iter_jsonl_lines, write_jsonl
from kala_engine.data.schema import validate_record
from kala_engine.resources import resource_path

#: Formats of other datasets (``kala`` is handled too, by copying after validation).
FORMATS = ("hh-rlhf", "pku-saferlhf", "beavertails")
ALL_FORMATS = ("kala", *FORMATS)
VALIDATION_BUCKETS = 31  # of 256 prompt-hash buckets (~12 %) go to validation
ONES = [1.0] * NUM_LAWS


@dataclass(frozen=True)
class Mapping:
    """Category -> laws tables per format, keyword lists per law, and the targets to write."""

    categories: dict[str, dict[str, tuple[int, ...]]]  # format -> category -> laws
    unmapped: dict[str, frozenset[str]]
    keywords: dict[int, tuple[str, ...]]
    primary: float
    secondary: float
    keyword: float

    def laws_of(self, fmt: str, categories: list[str]) -> tuple[set[int], bool]:
        """(laws the categories map to, whether every category was recognised)."""
        table = self.categories.get(fmt, {})
        known = self.unmapped.get(fmt, frozenset())
        laws: set[int] = set()
        recognised = True
        for c in categories:
            if c in table:
                laws.update(table[c])
            elif c not in known:
                recognised = False
        return laws, recognised

    def keyword_laws(self, text: str) -> set[int]:
        low = text.casefold()
        return {law for law, words in self.keywords.items() if any(w in low for w in words)}


def load_mapping(path: str | Path | None = None) -> Mapping:
    """Read the category/keyword mapping (cached). Raises ValueError naming a bad entry."""
    return _mapping_cached(str(path if path is not None else resource_path("prompts", "import_mapping.toml")))


@lru_cache(maxsize=4)
def _mapping_cached(path_str: str) -> Mapping:
    path = Path(path_str)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None

    def law_index(where: str, key: str) -> int:
        if not key.isdigit() or not 0 <= int(key) < NUM_LAWS:
            raise ValueError(f"{path}: {where}: key {key!r} must be a law index 0-{NUM_LAWS - 1}")
        return int(key)

    categories: dict[str, dict[str, tuple[int, ...]]] = {}
    unmapped: dict[str, frozenset[str]] = {}
    for fmt in FORMATS:
        table: dict[str, set[int]] = {}
        section = data.get(fmt, {})
        for key, cats in section.get("laws", {}).items():
            law = law_index(f"[{fmt}.laws]", key)
            for c in cats:
                table.setdefault(c, set()).add(law)
        categories[fmt] = {c: tuple(sorted(v)) for c, v in table.items()}
        unmapped[fmt] = frozenset(section.get("unmapped", []))
    keywords = {law_index("[keywords]", k): tuple(w.casefold() for w in v) for k, v in data.get("keywords", {}).items()}
    t = data.get("targets", {})
    targets = {name: float(t.get(name, default)) for name, default in (("primary", 0.1), ("secondary", 0.3), ("keyword", 0.3))}
    for name, value in targets.items():
        if not 0.0 <= value < 0.5:
            raise ValueError(f"{path}: [targets] {name} = {value} must be in [0, 0.5) (a violation)")
    return Mapping(categories, unmapped, keywords, **targets)


@dataclass
class ImportReport:
    """What an import did: lines read, records written by kind, examples skipped by reason."""

    source: Path
    fmt: str
    out: Path | None = None
    lines: int = 0
    records: int = 0
    by_kind: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def format(self) -> str:
        lines = [f"{self.source} ({self.fmt}): {self.lines} lines -> {self.records} records"
                 + (f" in {self.out}" if self.out else "")]
        for kind, n in sorted(self.by_kind.items()):
            lines.append(f"  {kind:<20} {n}")
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped: {reason}: {n}")
        return "\n".join(lines)


class _Bad(Exception):
    """A structural problem with one input line (becomes ValueError FILE:LINE)."""


def _need(obj: dict, name: str, typ: type | tuple[type, ...], what: str) -> Any:
    if name not in obj:
        raise _Bad(f"missing field '{name}'")
    value = obj[name]
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise _Bad(f"field '{name}' must be {what}, got {type(value).__name__}")
    return value


def _flags(obj: dict, name: str) -> list[str]:
    """True entries of an optional {category: bool} field."""
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, dict) or not all(isinstance(v, bool) for v in value.values()):
        raise _Bad(f"field '{name}' must be an object of category: true/false")
    return [str(k) for k, v in value.items() if v]


def _vector(laws: set[int], m: Mapping, keyword_only: set[int] = frozenset()) -> list[float]:
    labels = list(ONES)
    if not laws:
        return labels
    top = min(laws)
    for k in laws:
        if k in keyword_only:
            labels[k] = m.keyword
        else:
            labels[k] = m.primary if k == top else m.secondary
    return labels


def _family(fmt: str, prompt: str) -> tuple[str, str]:
    bucket = int(hashlib.sha1(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:2], 16)
    return f"{fmt}.b{bucket:02x}", "validation" if bucket < VALIDATION_BUCKETS else "train"


def _part(role: str, text: str, labels: list[float], lm: bool) -> dict:
    return {"role": role, "text": text, "labels": list(labels), "lm": lm}


def _record(fmt: str, kind: str, prompt: str, parts: list[dict]) -> dict:
    labels = [min(p["labels"][k] for p in parts) for k in range(NUM_LAWS)]
    violated = [k for k in range(NUM_LAWS) if labels[k] < 1.0]
    family, split = _family(fmt, prompt)
    return {
        "id": "",
        "kind": kind,
        "family": family,
        "split": split,
        "primary_law": min(violated) if violated else None,
        "labels": labels,
        "parts": parts,
    }


# ---------------------------------------------------------------------- HH-RLHF
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def parse_hh(text: str) -> list[tuple[str, str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [("user", "a"), ("assistant", "b")]."""
    pieces = _HH_TURN.split(text)
    if len(pieces) < 3 or pieces[0].strip():
        raise _Bad("not an HH-RLHF conversation (expected '\\n\\nHuman: ...\\n\\nAssistant: ...')")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [(roles[pieces[i]], pieces[i + 1].strip()) for i in range(1, len(pieces) - 1, 2)]


def _convert_hh(obj: dict, m: Mapping, skipped: Counter) -> list[dict]:
    chosen = parse_hh(_need(obj, "chosen", str, "a string"))
    rejected = parse_hh(_need(obj, "rejected", str, "a string"))
    if chosen[-1][0] != "assistant" or rejected[-1][0] != "assistant":
        raise _Bad("a conversation must end with an Assistant turn")
    context = chosen[:-1]
    if not any(role == "user" for role, _ in context):
        raise _Bad("a conversation needs at least one Human turn before the last Assistant turn")
    if any(not text for _, text in context):
        skipped["empty turn"] += 1
        return []
    prompt = next(text for role, text in context if role == "user")
    # labels of each human turn: keywords in it or any earlier human turn
    parts: list[dict] = []
    laws: set[int] = set()
    for role, text in context:
        if role == "user":
            laws |= m.keyword_laws(text)
        harmful_so_far = bool(laws)
        labels = _vector(laws, m, keyword_only=laws)
        if role == "user":
            parts.append(_part("user", text, labels, lm=not harmful_so_far))
        else:  # earlier replies of a harmful conversation: unknown quality, not learned
            parts.append(_part("assistant", text, ONES, lm=not harmful_so_far))
    out = []
    n_users = sum(1 for role, _ in context if role == "user")
    if chosen[-1][1]:
        kind = "benign" if not laws else ("multi_turn" if n_users > 1 else "harmful_request")
        out.append(_record("hh-rlhf", kind, prompt, parts + [_part("assistant", chosen[-1][1], ONES, lm=True)]))
    else:
        skipped["empty chosen reply"] += 1
    if laws:
        if rejected[-1][1] and rejected[-1][1] != chosen[-1][1]:
            bad = _part("assistant", rejected[-1][1], _vector(laws, m, keyword_only=laws), lm=False)
            out.append(_record("hh-rlhf", "harmful_completion", prompt, parts + [bad]))
        else:
            skipped["empty or unchanged rejected reply"] += 1
    return out


# ---------------------------------------------------------------------- PKU-SafeRLHF / BeaverTails
def _convert_pairs(fmt: str, prompt: str, responses: list[tuple[str, bool, list[str]]], m: Mapping,
                   skipped: Counter) -> list[dict]:
    """Shared logic: a prompt and (response, is_safe, harm categories) triples."""
    if not prompt.strip():
        skipped["empty prompt"] += 1
        return []
    prompt = prompt.strip()
    keyword = m.keyword_laws(prompt)
    unsafe_laws: list[set[int] | None] = []
    for text, safe, cats in responses:
        if safe:
            unsafe_laws.append(None)
            continue
        laws, _ = m.laws_of(fmt, cats)
        if not laws:
            laws = m.keyword_laws(prompt + "\n" + text)
        unsafe_laws.append(laws)
    category_laws = set().union(*(x for x in unsafe_laws if x))
    prompt_laws = category_laws | keyword
    prompt_labels = _vector(prompt_laws, m, keyword_only=keyword - category_laws)
    out = []
    for (text, safe, cats), laws in zip(responses, unsafe_laws, strict=True):
        text = text.strip()
        if not text:
            skipped["empty response"] += 1
            continue
        if safe:
            kind = "harmful_request" if prompt_laws else "benign"
            parts = [_part("user", prompt, prompt_labels, lm=not prompt_laws), _part("assistant", text, ONES, lm=True)]
        elif not laws:
            skipped["unsafe response whose harm maps to no law" if cats else "unsafe response without category or keyword"] += 1
            continue
        else:
            kind = "harmful_completion"
            parts = [_part("user", prompt, prompt_labels, lm=False),
                     _part("assistant", text, _vector(laws, m, keyword_only=laws - category_laws), lm=False)]
        out.append(_record(fmt, kind, prompt, parts))
    return out


def _convert_pku(obj: dict, m: Mapping, skipped: Counter) -> list[dict]:
    prompt = _need(obj, "prompt", str, "a string")
    responses = []
    for i in (0, 1):
        text = _need(obj, f"response_{i}", str, "a string")
        safe = _need(obj, f"is_response_{i}_safe", bool, "true or false")
        responses.append((text, safe, _flags(obj, f"response_{i}_harm_category")))
    return _convert_pairs("pku-saferlhf", prompt, responses, m, skipped)


def _convert_beavertails(obj: dict, m: Mapping, skipped: Counter) -> list[dict]:
    prompt = _need(obj, "prompt", str, "a string")
    text = _need(obj, "response", str, "a string")
    safe = _need(obj, "is_safe", bool, "true or false")
    return _convert_pairs("beavertails", prompt, [(text, safe, _flags(obj, "category"))], m, skipped)


_CONVERTERS = {"hh-rlhf": _convert_hh, "pku-saferlhf": _convert_pku, "beavertails": _convert_beavertails}


def import_records(path: str | Path, fmt: str, mapping: Mapping | None = None) -> tuple[list[dict], ImportReport]:
    """Convert a local file (JSON lines; for the other formats also CSV or a JSON array, see
    :mod:`kala_engine.data.detect`) to KALA records, nothing written. ``fmt`` "auto": the format
    the file looks like. Raises ValueError ``FILE:LINE: reason``, led by what the file looks like
    when that is another format ("x.jsonl looks like HH-RLHF (JSON lines), not BeaverTails: …").
    """
    if fmt == "auto":
        found = detect_format(path).fmt
        if found is None:
            raise ValueError(f"{path}: cannot tell the format: {mismatch_hint(path, None)}")
        fmt = found
    try:
        return _import_records(path, fmt, mapping)
    except ValueError as e:
        hint = mismatch_hint(path, fmt) if fmt in ALL_FORMATS else ""
        raise ValueError(f"{hint} ({e})" if hint else str(e)) from None


def _import_records(path: str | Path, fmt: str, mapping: Mapping | None = None) -> tuple[list[dict], ImportReport]:
    if fmt not in ALL_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(ALL_FORMATS)}")
    path = Path(path)
    m = mapping or load_mapping()
    report = ImportReport(source=path, fmt=fmt)
    records: list[dict] = []
    seen_keys: set[tuple] = set()
    seen_ids: dict[str, int] = {}
    for lineno, value, error in (iter_jsonl_lines(path) if fmt == "kala" else iter_rows(path)):
        report.lines += 1
        if error:
            raise ValueError(f"{path}:{lineno}: {error}")
        if fmt == "kala":
            problems = validate_record(value)
            if problems:
                raise ValueError(f"{path}:{lineno}: {problems[0]}")
            if value["id"] in seen_ids:
                raise ValueError(f"{path}:{lineno}: duplicate id {value['id']!r} (first on line {seen_ids[value['id']]})")
            seen_ids[value["id"]] = lineno
            records.append(value)
            report.by_kind[value["kind"]] += 1
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{path}:{lineno}: a {fmt} line must be a JSON object, got {type(value).__name__}")
        try:
            converted = _CONVERTERS[fmt](value, m, report.skipped)
        except _Bad as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
        for n, rec in enumerate(converted):
            key = (rec["kind"], tuple(p["text"] for p in rec["parts"]))
            if key in seen_keys:
                report.skipped["duplicate"] += 1
                continue
            seen_keys.add(key)
            rec["id"] = f"{fmt}-{lineno}-{n}"
            problems = validate_record(rec)
            if problems:  # e.g. a text of only whitespace inside a conversation
                report.skipped[f"invalid after conversion ({problems[0]})"] += 1
                continue
            records.append(rec)
            report.by_kind[rec["kind"]] += 1
    report.records = len(records)
    if report.lines == 0:
        raise ValueError(f"{path}: the file holds no records")
    if not records:
        raise ValueError(f"{path}: no example could be imported as {fmt} ({dict(report.skipped)}); check --format")
    return records, report


def import_dataset(path: str | Path, fmt: str, out: str | Path) -> ImportReport:
    """Convert ``path`` (format ``fmt``) and write KALA JSONL to ``out`` atomically."""
    if Path(out).resolve() == Path(path).resolve():
        raise ValueError(f"{out}: the output would overwrite the input; choose another --out")
    records, report = import_records(path, fmt)
    write_jsonl(out, records)
    report.out = Path(out)
    return report
