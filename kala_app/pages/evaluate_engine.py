"""The engine calls of the Evaluate page, each importing its engine module when called (the
evaluation modules import torch: the app starts without it), and :class:`RecordingBackend`,
which keeps the samples so far so the page can draw partial results while the job runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def default_suite_path() -> Path:
    from kala_engine.evaluate.suite import default_suite_path as f

    return Path(f())


def load_suite(path: str | Path | None) -> list:
    """The suite's records; raises the engine's SuiteError (a ValueError) listing bad lines."""
    from kala_engine.evaluate.suite import load_suite as f

    return f(path)


def make_backend(model_dir: str) -> Any:
    """The evaluation backend of a saved model folder."""
    from kala_engine.evaluate.backend import KALABackend

    return KALABackend(model_dir)


def make_eval_job(backends: Sequence[Any], records: Sequence[Any], threshold: float | None,
                  max_new_tokens: int) -> Callable:
    """The evaluation job; ``threshold`` None = each model's calibrated per-law thresholds."""
    from kala_engine.evaluate.evaluation import make_eval_job as f

    return f(backends, records, threshold=threshold, max_new_tokens=max_new_tokens)


def partial_metrics(records: Sequence[Any], samples: Sequence[Any], threshold: float | None,
                    backend: Any) -> dict:
    """The metrics of the first ``len(samples)`` prompts, as the job computes them at the end."""
    from kala_engine.constitution import resolve_thresholds
    from kala_engine.evaluate.metrics import compute_metrics

    th = list(resolve_thresholds(threshold, getattr(backend, "default_thresholds", None)))
    return compute_metrics(list(records[: len(samples)]), list(samples), th,
                           law_names=getattr(backend, "law_names", None))


def build_report(runs: Sequence[Any], suite: str, max_new_tokens: int) -> dict:
    from kala_engine.evaluate.report import build_report as f

    return f(runs, suite=suite, max_new_tokens=max_new_tokens)


def write_report(out: str | Path, report: dict, runs: Sequence[Any]) -> Path:
    from kala_engine.evaluate.report import write_report_dir

    return Path(write_report_dir(out, report, runs))


class RecordingBackend:
    """Passes every call to ``inner`` and keeps the samples it returns, in order, so that the page
    can draw the results so far while the job runs (appended on the job thread, read on the UI
    thread as a copy)."""

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "samples", [])

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "assess_and_reply":
            def one(*a, **kw):
                sample = attr(*a, **kw)
                self.samples.append(sample)
                return sample
            return one
        if name == "assess_and_reply_many":
            def many(*a, **kw):
                got = list(attr(*a, **kw))
                self.samples.extend(got)
                return got
            return many
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)  # e.g. the job's control, the display name


__all__ = ["RecordingBackend", "build_report", "default_suite_path", "load_suite", "make_backend",
           "make_eval_job", "partial_metrics", "write_report"]
