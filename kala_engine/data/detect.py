"""Which data set a file holds, and reading its rows whatever the container.

``detect_format`` looks at the first rows of a file and names its format - KALA, HH-RLHF,
PKU-SafeRLHF or BeaverTails, by the fields every row of that format has - and its container:
JSON lines, one JSON array, or CSV (a spreadsheet or pandas export with one column per field).
``iter_rows`` then yields the rows of any of those containers as objects, so an importer never
cares which one it got. ``mismatch_hint`` turns a detection into the one sentence a user needs
("bad.csv looks like HH-RLHF (CSV), not BeaverTails: choose the format hh-rlhf").
"""

from __future__ import annotations

import ast
import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kala_engine.data.io import iter_jsonl_lines

#: How the user reads each format's name.
TITLES = {"kala": "KALA", "hh-rlhf": "HH-RLHF", "pku-saferlhf": "PKU-SafeRLHF", "beavertails": "BeaverTails"}
#: (format, fields every row of it has), most specific first.
SIGNATURES: list[tuple[str, tuple[str, ...]]] = [
    ("kala", ("kind", "parts")),
    ("hh-rlhf", ("chosen", "rejected")),
    ("pku-saferlhf", ("prompt", "response_0", "response_1")),
    ("beavertails", ("prompt", "response", "is_safe")),
]
CONTAINERS = {"jsonl": "JSON lines", "json": "a JSON array", "csv": "CSV"}
#: CSV columns that hold true/false, and those that hold a {category: true/false} object.
BOOL_COLUMNS = frozenset({"is_safe", "is_response_0_safe", "is_response_1_safe"})
OBJECT_COLUMNS = frozenset({"category", "response_0_harm_category", "response_1_harm_category", "labels", "parts"})
_SNIFF_BYTES = 256 * 1024
_TRUE, _FALSE = {"true", "1", "yes", "t", "y"}, {"false", "0", "no", "f", "n"}


def format_of_fields(fields: Iterable[str]) -> str | None:
    """The format whose fields are all among ``fields`` (None: none of them)."""
    have = {str(f).strip() for f in fields}
    for fmt, need in SIGNATURES:
        if all(n in have for n in need):
            return fmt
    return None


@dataclass(frozen=True)
class Detection:
    """What a file looks like."""

    #: "kala", "hh-rlhf", "pku-saferlhf", "beavertails" or None (none of them)
    fmt: str | None
    #: "jsonl", "json" (one array), "csv", "empty" or "unknown"
    container: str
    #: the field names seen (JSON keys or CSV columns)
    fields: tuple[str, ...] = ()

    def describe(self) -> str:
        """``HH-RLHF (CSV)``, ``CSV with the columns a, b``, ``an empty file``…"""
        where = CONTAINERS.get(self.container, "")
        if self.fmt is not None:
            return f"{TITLES[self.fmt]} ({where})" if where else TITLES[self.fmt]
        if self.container == "empty":
            return "an empty file"
        if self.container == "unknown":
            return "neither JSON nor CSV"
        shown = ", ".join(self.fields[:8]) + (", …" if len(self.fields) > 8 else "")
        what = "columns" if self.container == "csv" else "fields"
        return f"{where} with the {what} {shown}" if shown else where


def _expected() -> str:
    return "; ".join(f"{TITLES[f]}: {', '.join(need)}" for f, need in SIGNATURES)


def _head(path: Path) -> str:
    """The first bytes of the file's text; a ``.gz``/``.xz`` file (as the hub serves data sets) is
    looked at decompressed (its compressed bytes looked like CSV once past a few KB). A damaged
    archive reads as empty here; reading its rows then names the file and the reason."""
    import gzip
    import lzma

    opener = gzip.open if path.suffix == ".gz" else lzma.open if path.suffix == ".xz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(_SNIFF_BYTES)
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile):
        raw = b""
    return raw.decode("utf-8-sig", errors="replace")


def detect_format(path: str | Path, max_rows: int = 20) -> Detection:
    """Look at the first rows of ``path``. Raises FileNotFoundError for a missing file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; choose an existing data file")
    text = _head(path)
    stripped = text.lstrip()
    if not stripped:
        return Detection(None, "empty")
    if stripped.startswith("{"):
        votes: Counter = Counter()
        fields: list[str] = []
        for line in [ln for ln in text.splitlines() if ln.strip()][:max_rows]:
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(obj, dict):
                fields += [k for k in obj if k not in fields]
                votes[format_of_fields(obj)] += 1
        found = [f for f, _ in votes.most_common() if f is not None]
        return Detection(found[0] if found else None, "jsonl", tuple(fields))
    if stripped.startswith("["):
        start = stripped.find("{")
        if start >= 0:
            try:
                obj, _ = json.JSONDecoder().raw_decode(stripped, start)
            except (json.JSONDecodeError, RecursionError):
                obj = None
            if isinstance(obj, dict):
                return Detection(format_of_fields(obj), "json", tuple(obj))
        return Detection(None, "json")
    try:
        header = next(csv.reader(io.StringIO(text)))
    except (csv.Error, StopIteration):
        header = []
    header = [h.strip() for h in header]
    if len(header) >= 2 and all(header):
        return Detection(format_of_fields(header), "csv", tuple(header))
    return Detection(None, "unknown")


def mismatch_hint(path: str | Path, chosen: str | None) -> str:
    """One sentence on what ``path`` looks like when it is not ``chosen`` ("" when it is)."""
    try:
        d = detect_format(path)
    except OSError:
        return ""
    name = Path(path).name
    if d.fmt is not None and d.fmt != chosen:
        return f"{name} looks like {d.describe()}, not {TITLES.get(chosen or '', chosen)}: choose the format {d.fmt}"
    if d.fmt is None:
        return f"{name}: {why_unknown(d)}"
    return ""


def why_unknown(d: Detection) -> str:
    """Why a file matches no format, with the fields each format needs."""
    if d.container == "empty":
        return "it is an empty file"
    if d.container == "unknown":
        return "it is neither JSON nor CSV text"
    return f"it is {d.describe()}, which matches none of the formats (the fields each needs: {_expected()})"


# ---------------------------------------------------------------------- rows of any container


def _cell(column: str, value: str) -> Any:
    """A CSV cell as the JSON value its column holds; ValueError says what is wrong."""
    v = value.strip()
    if column in BOOL_COLUMNS:
        low = v.casefold()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"column '{column}': {value!r} is not true or false")
    if column in OBJECT_COLUMNS:
        if not v:
            return None
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            pass
        try:  # pandas writes dicts as Python literals: {'violence': True}
            return ast.literal_eval(v)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"column '{column}': not a JSON object ({value[:60]!r})") from None
    return value


def iter_rows(path: str | Path) -> Iterator[tuple[int, Any, str | None]]:
    """``(line, row, error)`` for every row of a JSON-lines, JSON-array or CSV file.

    Like :func:`kala_engine.data.io.iter_jsonl_lines`: a row that cannot be read has ``row``
    None and ``error`` saying why. CSV rows are numbered by their line in the file, JSON-array
    items from 1.
    """
    path = Path(path)
    d = detect_format(path)
    if d.container == "csv":
        with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            try:
                for row in reader:
                    lineno = reader.line_num
                    if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                        continue
                    try:
                        yield lineno, {k: _cell(k, v) for k, v in row.items()
                                       if k is not None and isinstance(v, str)}, None
                    except ValueError as e:
                        yield lineno, None, str(e)
            except csv.Error as e:
                yield reader.line_num, None, f"not valid CSV: {e}"
        return
    if d.container == "json":
        try:
            with path.open("r", encoding="utf-8-sig") as f:
                items = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            yield 1, None, f"not a valid JSON array ({e})"
            return
        if not isinstance(items, list):
            yield 1, None, "a JSON file must hold one array of records"
            return
        for i, item in enumerate(items, start=1):
            yield i, item, None
        return
    yield from iter_jsonl_lines(path)
