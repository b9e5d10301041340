"""Run folders: how to find them again and what to call them (no torch, no Qt).

``kala_engine.train.trainer`` writes a run folder (its format is :class:`~kala_engine.train.run_folder.RunFolder`'s)::

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

from dataclasses import dataclass
from pathlib import Path

from kala_engine.train.run_folder import FINAL_DIR, RunFolder, checkpoint_step

#: Last parts of a run folder's path that do not name the run (``kala demo`` writes ``…/run``).
GENERIC_RUN_LEAVES = frozenset({"run"})
#: How deep under the runs folder run folders are looked for (``demo-…/run`` is 2).
MAX_DEPTH = 3
#: The separator between a run's name and its model folder in a model's label.
SEP = " · "



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
            if RunFolder(c).is_run():
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
    from kala_engine.paths import user_data_dir

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
        folder = RunFolder(run_dir)
        if folder.has_final():
            out.append(ModelEntry(folder.final_dir, run_dir, name, "final"))
        for step, d in folder.checkpoint_dirs():
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
    if path.name == FINAL_DIR and RunFolder(path.parent).is_run():
        run_dir, kind = path.parent, "final"
    elif (step := checkpoint_step(path)) is not None:
        run_dir, kind = path.parent.parent, "checkpoint"
    name = run_name(run_dir, root) if run_dir is not None else ""
    return ModelEntry(path, run_dir, name, kind, step)
