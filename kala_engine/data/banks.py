"""The prompt banks under ``resources/prompts/``: loaded once, checked, and exposed as plain objects.

Files (all TOML, documented at their top):

- ``harmful.toml``       harmful request topics per law (asks, harm, alternative, completions)
- ``law_specific.toml``  scenarios per law, including conflicts resolved by the hierarchy
- ``benign.toml``        everyday questions with short, correct answers
- ``alarming.toml``      safe requests worded with alarming words (anti over-refusal)
- ``slots.toml``         paraphrase slots and the templates of requests and responses

Law names never appear in these files; they come from the constitution at render time.
"""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from kala_engine.constitution import NUM_LAWS
from kala_engine.resources import resource_path

STYLES = ("howto", "command", "write")


class BankError(ValueError):
    """A prompt bank file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Topic:
    """One harmful-request template family."""

    id: str
    law: int
    also: tuple[int, ...]
    style: str
    ask: tuple[str, ...]
    harm: str
    alt: str
    bad: tuple[str, ...]
    lead: tuple[str, str] | None
    care: bool


@dataclass(frozen=True)
class QA:
    """A benign question (paraphrases) and its answer, in one template family."""

    family: str
    q: tuple[str, ...]
    a: str


@dataclass(frozen=True)
class Scenario:
    """A law-specific scenario: requests, the laws they violate (maybe none) and the answer."""

    id: str
    law: int
    violates: tuple[int, ...]
    q: tuple[str, ...]
    a: str


@dataclass(frozen=True)
class Banks:
    topics: tuple[Topic, ...]
    scenarios: tuple[Scenario, ...]
    benign: tuple[QA, ...]
    alarming: tuple[QA, ...]
    slots: dict[str, tuple[str, ...]]
    templates: dict[str, dict[str, tuple[str, ...]]]  # section -> name -> strings
    folder: Path

    def topics_for(self, law: int) -> list[Topic]:
        return [t for t in self.topics if t.law == law]

    def scenarios_for(self, law: int) -> list[Scenario]:
        return [s for s in self.scenarios if s.law == law]


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BankError(f"{path}: prompt bank missing; reinstall KALA Studio or check KALA_RESOURCES") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BankError(f"{path}: not valid TOML: {e}") from None


def _strings(path: Path, where: str, value: Any, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BankError(f"{path}: {where} must be a list of strings")
    if not value and not allow_empty:
        raise BankError(f"{path}: {where} must not be empty")
    return tuple(value)


def _law(path: Path, where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < NUM_LAWS:
        raise BankError(f"{path}: {where} must be a law index 0-{NUM_LAWS - 1}, got {value!r}")
    return value


def _check_fields(path: Path, where: str, text: str, allowed: set[str]) -> None:
    """Every {field} in a template must be a known slot (catches typos at load time)."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        raise BankError(f"{path}: {where}: bad template {text!r}: {e}") from None
    unknown = names - allowed
    if unknown:
        raise BankError(f"{path}: {where}: unknown slot(s) {sorted(unknown)} in {text!r}")


def load_banks(folder: str | Path | None = None) -> Banks:
    """Load and check every prompt bank (cached per folder)."""
    return _load_cached(str(folder if folder is not None else resource_path("prompts")))


def _read_topic(path: Path, n: int, t: dict, slot_names: set[str]) -> Topic:
    """One ``[[topic]]`` of harmful.toml, checked (laws, style, lead, every text's slot fields)."""
    where = f"topic[{n}] ({t.get('id', '?')})"
    law = _law(path, f"{where}.law", t.get("law"))
    also = tuple(_law(path, f"{where}.also", x) for x in t.get("also", []))
    if law in also:
        raise BankError(f"{path}: {where}: 'also' repeats the topic's own law {law}")
    style = t.get("style", "howto")
    if style not in STYLES:
        raise BankError(f"{path}: {where}.style must be one of {STYLES}, got {style!r}")
    lead = t.get("lead")
    if lead is not None:
        lead = _strings(path, f"{where}.lead", lead)
        if len(lead) != 2:
            raise BankError(f"{path}: {where}.lead must be [question, answer]")
    topic = Topic(
        id=str(t.get("id") or f"topic{n}"),
        law=law,
        also=also,
        style=style,
        ask=_strings(path, f"{where}.ask", t.get("ask")),
        harm=_strings(path, f"{where}.harm", t.get("harm"))[0],
        alt=_strings(path, f"{where}.alt", t.get("alt"))[0],
        bad=_strings(path, f"{where}.bad", t.get("bad")),
        lead=lead,
        care=bool(t.get("care", False)),
    )
    for text in (*topic.ask, *topic.bad, topic.harm, topic.alt):
        _check_fields(path, where, text, slot_names)
    return topic


def _read_scenario(path: Path, n: int, s: dict, slot_names: set[str]) -> Scenario:
    """One ``[[scenario]]`` of law_specific.toml, checked."""
    law_fields = {f"law{i}" for i in range(NUM_LAWS)} | {f"short{i}" for i in range(NUM_LAWS)}
    where = f"scenario[{n}] ({s.get('id', '?')})"
    sc = Scenario(
        id=str(s.get("id") or f"scenario{n}"),
        law=_law(path, f"{where}.law", s.get("law")),
        violates=tuple(_law(path, f"{where}.violates", x) for x in s.get("violates", [])),
        q=_strings(path, f"{where}.q", s.get("q")),
        a=_strings(path, f"{where}.a", s.get("a"))[0],
    )
    for text in sc.q:
        _check_fields(path, where, text, slot_names)
    _check_fields(path, where, sc.a, slot_names | law_fields)
    return sc


def _read_qa(folder: Path) -> tuple[list[QA], list[QA]]:
    """The benign questions (benign.toml) and the benign-but-alarming families (alarming.toml)."""
    path = folder / "benign.toml"
    benign = []
    for topic, items in _read(path).get("topics", {}).items():
        for n, item in enumerate(items):
            where = f"topics.{topic}[{n}]"
            benign.append(QA(f"benign.{topic}.{n:02d}", _strings(path, f"{where}.q", item.get("q")),
                             _strings(path, f"{where}.a", item.get("a"))[0]))
    path = folder / "alarming.toml"
    alarming = []
    for n, fam in enumerate(_read(path).get("family", [])):
        fid = f"alarming.{fam.get('id') or n}"
        for m, item in enumerate(fam.get("items", [])):
            where = f"family[{n}].items[{m}]"
            alarming.append(QA(fid, _strings(path, f"{where}.q", item.get("q")),
                               _strings(path, f"{where}.a", item.get("a"))[0]))
    return benign, alarming


@lru_cache(maxsize=4)
def _load_cached(folder_str: str) -> Banks:
    folder = Path(folder_str)
    slots_path = folder / "slots.toml"
    raw_slots = _read(slots_path)
    slots = {k: _strings(slots_path, f"slots.{k}", v) for k, v in raw_slots.get("slots", {}).items()}
    templates: dict[str, dict[str, tuple[str, ...]]] = {}
    for section, table in raw_slots.items():
        if section == "slots" or not isinstance(table, dict):
            continue
        templates[section] = {k: _strings(slots_path, f"{section}.{k}", v) for k, v in table.items()}
    slot_names = set(slots) | {f"{k}_cap" for k in slots}
    path = folder / "harmful.toml"
    topics = [_read_topic(path, n, t, slot_names) for n, t in enumerate(_read(path).get("topic", []))]
    path = folder / "law_specific.toml"
    scenarios = [_read_scenario(path, n, s, slot_names) for n, s in enumerate(_read(path).get("scenario", []))]
    benign, alarming = _read_qa(folder)
    banks = Banks(tuple(topics), tuple(scenarios), tuple(benign), tuple(alarming), slots, templates, folder)
    for law in range(NUM_LAWS):
        if not banks.topics_for(law):
            raise BankError(f"{folder / 'harmful.toml'}: no topic for law {law}; every law needs at least one")
    if not benign or not alarming:
        raise BankError(f"{folder}: the benign and alarming banks must not be empty")
    return banks
