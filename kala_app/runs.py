"""Run folders as the Runs and Train pages show them (no Qt here).

The folder's format is the engine's :class:`kala_engine.train.run_folder.RunFolder` (run.json,
metrics.jsonl, checkpoints/step-N/, final/), read here through it; finding and naming run folders
is :mod:`kala_engine.train.runs`'s: any layout it writes is listed, ``kala demo``'s ``runs/demo-…/run``
too, named by its run. What is added here is the status a page shows.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from kala_engine.train import run_lock
from kala_engine.train import runs as engine_runs
from kala_engine.train.run_folder import RunFolder


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
        return RunFolder(self.path).final_dir

    @property
    def can_resume(self) -> bool:
        return self.status in ("interrupted", "cancelled") and self.last_checkpoint is not None


def read_run(run_dir: str | Path, active: Path | None = None, root: str | Path | None = None) -> RunInfo:
    """What a run folder says about itself. ``active`` is the run dir of the running job, if any;
    ``root`` the runs folder it is named relative to (see :func:`kala_engine.train.runs.run_name`)."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    meta = folder.read_info()
    cfg = folder.config()
    last = folder.last_metrics()
    ck = folder.last_checkpoint()
    final = folder.has_final()
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
    return RunFolder(run_dir).read_metrics()


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


def remove_if_empty_run(run_dir: Path | None) -> bool:
    """Remove a run folder a failed start left behind with nothing in it worth keeping (no
    metrics, no checkpoint, no final model): the Runs page does not list it and nobody could
    resume it. Returns True when it was removed."""
    if run_dir is None or not Path(run_dir).is_dir():
        return False
    folder = RunFolder(run_dir)
    if folder.metrics_file.exists() or folder.checkpoints_dir.exists() or folder.has_final():
        return False
    run_dir = folder.path
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()
