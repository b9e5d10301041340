"""Reading and writing constitutional JSONL: strict line-by-line checks and atomic writes.

A write goes to a temporary file beside the target and is renamed over it only when complete,
so an error (or a kill) never leaves a partial dataset behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from kala_engine.data.schema import SPLITS, validate_record


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Open ``path`` for writing text; the file appears (replacing any old one) only on success."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{parent}: output folder does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps_record(record: dict[str, Any]) -> str:
    """One record as one JSON line (no trailing newline); non-ASCII kept readable."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically, one JSON object per line; returns the number written."""
    n = 0
    with atomic_writer(path) as f:
        for record in records:
            f.write(dumps_record(record) + "\n")
            n += 1
    return n


def _open_binary(path: Path):
    """The file's bytes; ``.gz`` and ``.xz`` files (as the hub serves datasets) are decompressed on the fly."""
    if path.suffix not in (".gz", ".xz"):
        return path.open("rb")
    return _Decompressed(path)


class _Decompressed:
    """Lines of a gzip/xz file; a damaged archive raises ValueError naming the file (never a traceback)."""

    def __init__(self, path: Path):
        import gzip
        import lzma

        self.path = path
        self.errors = (OSError, EOFError, lzma.LZMAError)
        self.f = gzip.open(path, "rb") if path.suffix == ".gz" else lzma.open(path, "rb")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False

    def __iter__(self):
        try:
            yield from self.f
        except self.errors as e:
            raise ValueError(f"{self.path}: damaged {self.path.suffix[1:]} file ({e})") from None


def iter_jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, value, error)`` for every non-blank line of a JSONL file.

    ``error`` is None when the line decoded; otherwise ``value`` is None and ``error`` says why
    (not UTF-8, not JSON). Blank lines are skipped. Raises FileNotFoundError for a missing file.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder; give a JSONL file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, None, f"not valid UTF-8 (byte {e.start})"
                continue
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as e:
                yield lineno, None, f"malformed JSON: {e.msg} (column {e.colno})"
            except RecursionError:
                yield lineno, None, "malformed JSON: nested too deeply"


def iter_checked_records(path: str | os.PathLike):
    """Yield ``(lineno, record_or_None, reasons)`` for every non-empty line of a KALA JSONL file.

    ``reasons`` is empty for a valid record; duplicate ids are reported at their second line.
    A file with no records yields one ``(1, None, ["the file holds no records"])``.
    """
    seen_ids: dict[str, int] = {}
    count = 0
    for lineno, value, error in iter_jsonl_lines(path):
        count += 1
        reasons = [error] if error else validate_record(value)
        if not reasons:
            rid = value["id"]
            if rid in seen_ids:
                reasons = [f"duplicate id {rid!r} (first on line {seen_ids[rid]})"]
            else:
                seen_ids[rid] = lineno
        yield lineno, (None if reasons else value), reasons
    if count == 0:
        yield 1, None, ["the file holds no records"]


def validate_file(path: str | os.PathLike) -> list[str]:
    """Every problem in a KALA JSONL file as ``FILE:LINE: reason`` (empty list: the file is valid)."""
    return [f"{path}:{lineno}: {r}" for lineno, _, reasons in iter_checked_records(path) for r in reasons]


def load_jsonl(path: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """Load and check a KALA JSONL dataset, optionally keeping only one split.

    Raises FileNotFoundError when the file is missing and ValueError ``"FILE:LINE: reason"`` for
    the first bad record (run ``kala data validate FILE`` to see them all).
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} or None, got {split!r}")
    records = []
    for lineno, value, error in iter_jsonl_lines(path):
        reasons = [error] if error else validate_record(value)
        if reasons:
            raise ValueError(f"{path}:{lineno}: {reasons[0]} (run 'kala data validate {path}' to list every problem)")
        if split is None or value["split"] == split:
            records.append(value)
    return records
