"""One training run's folder: the one owner of its format (no torch, no Qt; the app reads it too).

::

    RUN/run.json          the run's config, plan, versions and status (written atomically)
    RUN/metrics.jsonl     one JSON object per optimizer step; validation lines carry "split": "validation"
    RUN/tokenizer/        the tokenizer the run trained with
    RUN/checkpoints/step-N/   what a resume needs (written under a temporary name, then renamed)
    RUN/final/            the final model (save_pretrained, written the same way)

Training writes it through :class:`RunFolder`; the CLI, run discovery (:mod:`kala_engine.train.runs`)
and the app's Runs and Train pages read it through the same class. What goes *into* a checkpoint
(tensors, optimizer and RNG state) is the trainer's business (:mod:`kala_engine.train.trainer`); where
and how atomically it lands is this module's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
#: the split of a validation line in metrics.jsonl (training lines have none)
VALIDATION = "validation"

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_step(path: str | Path) -> int | None:
    """N for a checkpoint folder ``…/checkpoints/step-N``, else None."""
    p = Path(path)
    m = _STEP_DIR.match(p.name)
    return int(m.group(1)) if m and p.parent.name == CHECKPOINTS_DIR else None


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


class RunFolder:
    """A run folder at ``path`` (it need not exist yet)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- layout
    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def final_dir(self) -> Path:
        return self.path / FINAL_DIR

    def is_run(self) -> bool:
        """Whether the folder holds a run: run.json, metrics.jsonl, final/ or checkpoints/."""
        return (self.run_file.is_file() or self.metrics_file.is_file() or self.final_dir.is_dir()
                or self.checkpoints_dir.is_dir())

    def has_progress(self) -> bool:
        """Whether a run already trained here (metrics or checkpoints): a new run must not start over it."""
        return self.metrics_file.exists() or bool(self.checkpoint_steps())

    def has_final(self) -> bool:
        return self.final_dir.is_dir()

    # -- run.json
    def read_info(self) -> dict:
        """run.json as a dict; {} when missing or unreadable (a damaged file is not the caller's crash)."""
        try:
            d = json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return d if isinstance(d, dict) else {}

    def config(self) -> dict:
        """The run's TrainConfig as saved (older folders kept it at the top level)."""
        info = self.read_info()
        return dict(info["config"]) if isinstance(info.get("config"), dict) else info

    def write_info(self, info: dict) -> None:
        """Replace run.json atomically."""
        tmp = self.run_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self.run_file)

    def update_info(self, **fields) -> None:
        """Set some fields of run.json (status, step, ...), keeping the rest."""
        info = self.read_info()
        info.update(fields)
        self.write_info(info)

    # -- metrics.jsonl
    def append_metrics(self, line: dict) -> None:
        """One line, flushed to disk (a kill loses at most the line being written)."""
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _metric_lines(self) -> Iterator[dict]:
        if not self.metrics_file.is_file():
            return
        with self.metrics_file.open("r", encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line
                if isinstance(d, dict):
                    yield d

    def read_metrics(self) -> tuple[list[dict], list[dict]]:
        """(train lines, validation lines); unreadable and torn lines are skipped."""
        train: list[dict] = []
        val: list[dict] = []
        for d in self._metric_lines():
            (val if d.get("split") == VALIDATION else train).append(d)
        return train, val

    def last_metrics(self) -> dict:
        """The last complete training line, read from the end of a (possibly large) file."""
        if not self.metrics_file.is_file():
            return {}
        with self.metrics_file.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().decode("utf-8", errors="replace").splitlines()
        for line in reversed(tail):
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict) and d.get("split") != VALIDATION:
                return d
        return {}

    def truncate_metrics(self, step: int) -> None:
        """Drop the lines after ``step`` (written by a run that died before its next checkpoint)."""
        if not self.metrics_file.is_file():
            return
        keep = [json.dumps(d) for d in self._metric_lines() if d.get("step", 0) <= step]
        tmp = self.metrics_file.with_suffix(".tmp")
        tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
        os.replace(tmp, self.metrics_file)

    # -- checkpoints
    def checkpoint_dirs(self) -> list[tuple[int, Path]]:
        """(step, folder) of the checkpoints, newest step first."""
        out = []
        if self.checkpoints_dir.is_dir():
            for p in self.checkpoints_dir.iterdir():
                step = checkpoint_step(p)
                if step is not None and p.is_dir():
                    out.append((step, p))
        out.sort(reverse=True)
        return out

    def checkpoint_steps(self) -> list[int]:
        """The checkpointed steps, oldest first."""
        return sorted(step for step, _ in self.checkpoint_dirs())

    def last_checkpoint(self) -> Path | None:
        """The checkpoint folder of the highest step, or None."""
        cks = self.checkpoint_dirs()
        return cks[0][1] if cks else None

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step}"

    @contextmanager
    def writing_checkpoint(self, step: int, keep: int) -> Iterator[Path]:
        """Yield an empty temporary folder to fill; on success it becomes ``checkpoints/step-N``
        (synced, then renamed: never half written) and only the ``keep`` newest are kept."""
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        with self._atomic_folder(self.checkpoint_dir(step), self.checkpoints_dir / f".tmp-step-{step}-{os.getpid()}",
                                 fsync=True) as tmp:
            yield tmp
        for old in self.checkpoint_steps()[:-keep]:
            shutil.rmtree(self.checkpoint_dir(old), ignore_errors=True)

    @contextmanager
    def writing_tokenizer(self) -> Iterator[Path]:
        """Yield an empty temporary folder to save the tokenizer into; it becomes ``tokenizer/``."""
        with self._atomic_folder(self.tokenizer_dir, self.path / f".{TOKENIZER_DIR}.tmp") as tmp:
            yield tmp

    # -- final/
    @contextmanager
    def writing_final(self) -> Iterator[Path]:
        """Yield an empty temporary folder to save the final model into; it becomes ``final/``."""
        with self._atomic_folder(self.final_dir, self.path / f"{FINAL_DIR}.tmp") as tmp:
            yield tmp

    @staticmethod
    @contextmanager
    def _atomic_folder(dest: Path, tmp: Path, fsync: bool = False) -> Iterator[Path]:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if fsync:
            _fsync_tree(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
