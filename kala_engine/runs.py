"""Run folders: how to find them again and what to call them (no torch, no Qt).

``kala_engine.training`` writes a run folder (see its docstring)::

    RUN/run.json  RUN/metrics.jsonl  RUN/tokenizer/  RUN/checkpoints/step-N/  RUN/final/

and puts it wherever it is told: ``kala train --run-dir DIR``, the app's
``<data>/runs/<time>-<base>``, or ``kala demo``'s ``<data>/runs/demo-<time>/run`` (beside the
demo's ``data.jsonl``). Everything that lists runs or models - the Runs, Train, Chat and Evaluate
pages, ``kala eval`` and its reports - finds them here and names them the same way:

* a run is named by its path under the runs folder, a last part that says nothing (``run``) left
  out: ``demo-20261129-234242``, ``20261130-101500-kala-tiny``, ``sweeps/lr-1e-3``;
* a model by its run and its folder: ``demo-20261129-234242 · final``, ``… · step-300``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
#: Last parts of a run folder's path that do not name the run (``kala demo`` writes ``…/run``).
GENERIC_RUN_LEAVES = frozenset({"run"})
#: How deep under the runs folder run folders are looked for (``demo-…/run`` is 2).
MAX_DEPTH = 3
#: The separator between a run's name and its model folder in a model's label.
SEP = " · "

_STEP_DIR = re.compile(r"^step-(\d+)$")


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run folder: it holds run.json, metrics.jsonl, final/ or checkpoints/."""
    p = Path(path)
    return ((p / RUN_FILE).is_file() or (p / METRICS_FILE).is_file() or (p / FINAL_DIR).is_dir()
            or (p / CHECKPOINTS_DIR).is_dir())


def find_run_dirs(root: str | Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every run folder under ``root`` (not ``root`` itself), newest first.

    A run folder is not searched further (its checkpoints are not runs); hidden folders and
    temporary ``*.tmp`` folders are skipped.
    """
    root = Path(root)
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir())
        except OSError:
            return
        for c in children:
            if c.name.startswith(".") or c.name.endswith(".tmp"):
                continue
            if is_run_dir(c):
                found.append(c)
            elif depth < max_depth:
                walk(c, depth + 1)

    if root.is_dir():
        walk(root, 1)
    found.sort(key=_mtime, reverse=True)
    return found


def _mtime(p: Path) -> float:
    try:
        return max(q.stat().st_mtime for q in [p, *p.iterdir()])
    except (OSError, ValueError):
        return 0.0


def run_name(run_dir: str | Path, root: str | Path | None = None) -> str:
    """The name of a run: its path under ``root`` (``/``-joined), without a last ``run`` part."""
    run_dir = Path(run_dir)
    parts: list[str] = []
    if root is not None:
        try:
            parts = list(run_dir.resolve().relative_to(Path(root).resolve()).parts)
        except ValueError:
            parts = []
    if not parts:
        parts = [run_dir.parent.name, run_dir.name] if run_dir.parent.name else [run_dir.name]
        parts = parts[-1:] if parts[-1] not in GENERIC_RUN_LEAVES else parts
    if len(parts) > 1 and parts[-1] in GENERIC_RUN_LEAVES:
        parts = parts[:-1]
    return "/".join(parts) or str(run_dir)


def checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of a run's checkpoints, newest step first."""
    ck = Path(run_dir) / CHECKPOINTS_DIR
    out = []
    if ck.is_dir():
        for p in ck.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
    out.sort(reverse=True)
    return out


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint folder of the highest step, or None."""
    cks = checkpoint_dirs(run_dir)
    return cks[0][1] if cks else None


@dataclass(frozen=True)
class ModelEntry:
    """A loadable model folder and the run it belongs to (if any)."""

    path: Path
    #: the run folder that holds it (None for a model folder outside any run)
    run_dir: Path | None
    #: the run's name (``demo-20261129-234242``); "" outside a run
    run: str
    #: "final", "checkpoint" or "folder"
    kind: str
    step: int | None = None

    @property
    def label(self) -> str:
        """``run · final`` / ``run · step-300``; a folder outside any run is named by itself."""
        return f"{self.run}{SEP}{self.path.name}" if self.run else (self.path.name or str(self.path))

    def to_dict(self) -> dict:
        return {"name": self.label, "path": str(self.path), "run": self.run,
                "run_dir": str(self.run_dir) if self.run_dir else None}


def default_runs_dir() -> Path:
    from .paths import user_data_dir

    return user_data_dir() / "runs"


def find_models(root: str | Path | None = None) -> list[ModelEntry]:
    """Every model under the runs folder ``root``: each run's final/ (newest run first), then its
    checkpoints that are loadable model folders (they have a config.json), newest step first.

    Training checkpoints that hold only the trained tensors and the optimizer state (to resume)
    are not listed.
    """
    root = Path(root) if root is not None else default_runs_dir()
    out: list[ModelEntry] = []
    for run_dir in find_run_dirs(root):
        name = run_name(run_dir, root)
        final = run_dir / FINAL_DIR
        if final.is_dir():
            out.append(ModelEntry(final, run_dir, name, "final"))
        for step, d in checkpoint_dirs(run_dir):
            if (d / "config.json").is_file():
                out.append(ModelEntry(d, run_dir, name, "checkpoint", step))
    return out


def describe_model(path: str | Path, root: str | Path | None = None) -> ModelEntry:
    """The :class:`ModelEntry` of any model folder (a run's final/ or checkpoint, or elsewhere);
    runs under ``root`` (default: the user's runs folder) are named relative to it."""
    path = Path(path)
    if root is None:
        root = default_runs_dir()
    run_dir, kind, step = None, "folder", None
    if path.name == FINAL_DIR and is_run_dir(path.parent):
        run_dir, kind = path.parent, "final"
    elif path.parent.name == CHECKPOINTS_DIR and (m := _STEP_DIR.match(path.name)):
        run_dir, kind, step = path.parent.parent, "checkpoint", int(m.group(1))
    name = run_name(run_dir, root) if run_dir is not None else ""
    return ModelEntry(path, run_dir, name, kind, step)


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(train lines, validation lines) of a run's metrics.jsonl (or of the run folder given);
    unreadable and torn lines are skipped."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    train: list[dict] = []
    val: list[dict] = []
    if not p.is_file():
        return train, val
    with p.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict):
                (val if d.get("split") == "validation" else train).append(d)
    return train, val


def last_metrics(path: str | Path) -> dict:
    """The last complete training line of a (possibly large) metrics file, read from its end."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    if not p.is_file():
        return {}
    with p.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 65536))
        tail = f.read().decode("utf-8", errors="replace").splitlines()
    for line in reversed(tail):
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and d.get("split") != "validation":
            return d
    return {}
