"""Reading run folders for the Runs and Train pages (no Qt here).

A run folder (written by ``kala_engine.training``) holds ``run.json`` (its config and, when the
engine records it, a status), ``metrics.jsonl`` (one JSON object per optimizer step; validation
lines carry ``"split": "validation"``), ``checkpoints/step-N/`` and, once training completed,
``final/``. Finding and naming run folders is the engine's (:mod:`kala_engine.runs`): any
layout it writes is listed, ``kala demo``'s ``runs/demo-…/run`` too, named by its run.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from kala_engine import run_lock
from kala_engine import runs as engine_runs

from . import engine_api

#: The highest checkpoint of a run folder (kept here for the pages that import it from the app).
last_checkpoint = engine_runs.last_checkpoint


@dataclass
class RunInfo:
    path: Path
    name: str
    status: str  # "finished" | "interrupted" | "running" | "failed" | "cancelled" | "new"
    base: str = ""
    data: str = ""
    steps_done: int = 0
    total_steps: int = 0
    final_lm_loss: float | None = None
    final_ethics_loss: float | None = None
    last_checkpoint: Path | None = None
    modified: float = 0.0
    config: dict = field(default_factory=dict)
    owner: str = ""  # "process N (started ...)" when another process trains in this folder now

    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    @property
    def can_resume(self) -> bool:
        return self.status in ("interrupted", "cancelled") and self.last_checkpoint is not None


def _read_json(p: Path) -> dict:
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


def read_run(run_dir: str | Path, active: Path | None = None, root: str | Path | None = None) -> RunInfo:
    """What a run folder says about itself. ``active`` is the run dir of the running job, if any;
    ``root`` the runs folder it is named relative to (see :func:`kala_engine.runs.run_name`)."""
    run_dir = Path(run_dir)
    meta = _read_json(run_dir / "run.json")
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else meta
    last = engine_runs.last_metrics(run_dir)
    ck = last_checkpoint(run_dir)
    final = (run_dir / "final").is_dir()
    owner = run_lock.owner_of(run_dir)  # another process (a `kala train`) holds the folder
    if active is not None and run_dir.resolve() == Path(active).resolve():
        status = "running"
    elif owner is not None:
        status = "running"
    elif final:
        status = "finished"
    elif isinstance(meta.get("status"), str) and meta["status"] not in ("running", "finished"):
        status = meta["status"]
    elif ck is not None or last:
        status = "interrupted"  # has progress but no final model and nobody is running it
    else:
        status = "new"
    total = int(cfg.get("max_steps") or meta.get("total_steps") or last.get("total_steps") or 0)
    try:
        modified = max(p.stat().st_mtime for p in [run_dir, *run_dir.glob("*")] if p.exists())
    except (OSError, ValueError):
        modified = 0.0
    return RunInfo(
        path=run_dir,
        name=engine_runs.run_name(run_dir, root),
        status=status,
        base=str(cfg.get("base", "")),
        data=str(cfg.get("data", "")),
        steps_done=int(last.get("step", 0) or 0),
        total_steps=total,
        final_lm_loss=last.get("lm_loss"),
        final_ethics_loss=last.get("ethics_loss"),
        last_checkpoint=ck,
        modified=modified,
        config=dict(cfg),
        owner=owner.describe() if owner is not None else "",
    )


def list_runs(runs_dir: str | Path, active: Path | None = None) -> list[RunInfo]:
    """Every run folder under ``runs_dir`` (any layout the engine writes), newest first."""
    runs = [read_run(p, active, runs_dir) for p in engine_runs.find_run_dirs(runs_dir)]
    runs.sort(key=lambda r: r.modified, reverse=True)
    return runs


def load_curves(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(train lines, validation lines) of a run's metrics."""
    return engine_api.read_metrics(Path(run_dir) / "metrics.jsonl")


def delete_run(run: RunInfo | Path, runs_dir: Path) -> None:
    """Remove a run folder; refuses anything outside ``runs_dir``. A run named by the folder
    around it (``kala demo``'s ``demo-…/run``) goes with that folder (its data.jsonl) unless the
    folder holds another run."""
    path = Path(run.path if isinstance(run, RunInfo) else run).resolve()
    root = Path(runs_dir).resolve()
    if root not in path.parents:
        raise ValueError(f"{path} is not inside the runs folder {root}; not deleting it")
    outer = path.parent
    if (path.name in engine_runs.GENERIC_RUN_LEAVES and outer != root
            and engine_runs.find_run_dirs(outer) == [path]):
        path = outer
    shutil.rmtree(path)


def new_run_dir(runs_dir: Path, base: str) -> Path:
    """A fresh, unused run folder name: ``YYYYmmdd-HHMMSS-<base>``."""
    stem = time.strftime("%Y%m%d-%H%M%S") + "-" + re.sub(r"[^A-Za-z0-9._-]+", "_", Path(base).name or "run")
    p = runs_dir / stem
    i = 2
    while p.exists():
        p = runs_dir / f"{stem}-{i}"
        i += 1
    return p
