"""Ethics benchmark: run a KALA model over an evaluation suite and compute the safety metrics.

The pieces (suite, backend and metrics each in their own module; the job here):

* **Suite** — a JSONL file of records ``{"prompt", "label": "harmful"|"benign", "laws": [k, ...],
  "kind"?: str, "id"?: str}`` read by :func:`load_suite`, which reports every bad line as
  ``FILE:LINE: reason`` (:class:`SuiteError`).
* **Backend** — :class:`EvalBackend`, the small protocol a model must offer: assess a prompt
  (law scores at its last token) and write a monitored reply, returning an :class:`EvalSample`.
  :class:`KALABackend` adapts a saved KALA model through ``kala_engine.generate.generation``; tests use
  a fake backend whose scores they set.
* **Metrics** — :func:`compute_metrics`, a pure function of records, samples and thresholds:
  flagged / stopped rates for harmful and benign prompts (the latter is over-refusal), right law
  first, per-law AUROC, a threshold sweep and a breakdown by kind; and the model's own replies
  (:func:`kala_engine.evaluate.refusal.reply_metrics`: refused, refusals cut short, true misses).
* **Job** — :func:`evaluate` runs a backend over records, emitting :class:`~kala_engine.jobs.Progress`
  and honouring a :class:`~kala_engine.jobs.JobControl` (pause / cancel between prompts).

Conventions. A prompt is *flagged* for the laws its assessment violates - the violation rule and
the thresholds in force are :mod:`kala_engine.constitution`'s (scores are law *satisfaction*,
1.0 = fine; the highest-priority law is the one with the lowest index). Reports are written by :mod:`kala_engine.evaluate.report`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kala_engine.constitution import (
    resolve_thresholds,
    violated_laws,
)
from kala_engine.evaluate.backend import (
    EvalBackend,
    EvalSample,
    backend_perplexity,
)
from kala_engine.evaluate.metrics import compute_metrics
from kala_engine.evaluate.refusal import reply_outcome
from kala_engine.evaluate.suite import (
    SuiteRecord,
)
from kala_engine.jobs import Emit, JobControl, LogLine, Progress

# ---------------------------------------------------------------- per-prompt results


def result_row(record: SuiteRecord, sample: EvalSample, thresholds: Sequence[float]) -> dict[str, Any]:
    """One line of results.jsonl."""
    flagged = violated_laws(sample.prompt_scores, thresholds)
    return {
        "id": record.id,
        "prompt": record.prompt,
        "label": record.label,
        "kind": record.kind,
        "laws": list(record.laws),
        "prompt_scores": [round(float(s), 6) for s in sample.prompt_scores],
        "flagged": bool(flagged),
        "flagged_laws": flagged,
        "reply": sample.reply,
        "stop_reason": sample.stop_kind,
        "stop_law": sample.stop_law,
        "stop_message": sample.stop_message,
        # refused / refusal_cut_short / cut_short / completed (kala_engine.evaluate.refusal)
        "outcome": (outcome := reply_outcome(sample.reply, sample.stop_kind)),
        "refused": outcome in ("refused", "refusal_cut_short"),
        "token_min_scores": None
        if sample.token_min_scores is None
        else [round(float(s), 6) for s in sample.token_min_scores],
    }


# ---------------------------------------------------------------- the job


@dataclass
class EvalRun:
    """The outcome of :func:`evaluate` for one backend."""

    model: str
    records: list[SuiteRecord]
    samples: list[EvalSample]
    thresholds: list[float]
    metrics: dict[str, Any] = field(default_factory=dict)
    #: the model folder evaluated and the name of its run ("" when not known)
    path: str = ""
    run: str = ""
    #: the thresholds that stopped replies, when the model's own reply set did (else ``thresholds``)
    reply_thresholds: list[float] | None = None

    def rows(self) -> list[dict[str, Any]]:
        return [result_row(r, s, self.thresholds) for r, s in zip(self.records, self.samples, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"model": self.model}
        if self.path:
            d["path"] = self.path
        if self.run:
            d["run"] = self.run
        if self.reply_thresholds is not None and self.reply_thresholds != self.thresholds:
            d["reply_thresholds"] = self.reply_thresholds
        d["metrics"] = self.metrics
        return d


def evaluate(
    backend: EvalBackend,
    records: Sequence[SuiteRecord],
    *,
    threshold: float | Sequence[float] | None = None,
    max_new_tokens: int = 48,
    emit: Emit | None = None,
    control: JobControl | None = None,
    perplexity_texts: Sequence[str] | None = None,
    batch_size: int = 8,
) -> EvalRun:
    """Run ``backend`` over ``records`` and compute the metrics.

    Calls ``control.checkpoint()`` before each prompt (or batch), so a caller can pause or
    cancel (``Cancelled`` propagates; :func:`kala_engine.jobs.run_job` turns it into a cancelled
    Finished event), and emits ``Progress(done, total, message)`` after each. With
    ``batch_size > 1`` a backend that offers ``assess_and_reply_many(prompts, *, threshold,
    max_new_tokens)`` gets the prompts that many at a time (much faster on a GPU); other
    backends are asked one prompt at a time. A backend with a ``control`` attribute gets the
    job's control, so it can pause or cancel inside a reply.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not records:
        raise ValueError("no records to evaluate")
    th = list(resolve_thresholds(threshold, getattr(backend, "default_thresholds", None)))
    # a KALA model left to its own calibrated thresholds flags prompts with ``th`` and stops
    # replies with its reply set; other backends (and an explicit threshold) get ``th`` for both
    own = threshold is None and getattr(backend, "monitors_with_own_thresholds", False)
    given = None if own else list(th)
    reply_th = list(resolve_thresholds(None, getattr(backend, "default_reply_thresholds", None))) if own else None
    emit = emit or (lambda _e: None)
    control = control or JobControl()
    name = getattr(backend, "name", type(backend).__name__)
    if hasattr(backend, "control"):  # a backend that can stop mid-reply (pause/cancel within a token)
        backend.control = control
    many = getattr(backend, "assess_and_reply_many", None) if batch_size > 1 else None
    step = batch_size if many is not None else 1
    samples: list[EvalSample] = []
    total = len(records)
    emit(Progress(0, total, f"{name}: evaluating {total} prompts"))
    for start in range(0, total, step):
        control.checkpoint()
        chunk = records[start : start + step]
        if many is not None:
            got = list(many([r.prompt for r in chunk], threshold=given, max_new_tokens=max_new_tokens))
            if len(got) != len(chunk):
                raise RuntimeError(f"{name}: assess_and_reply_many returned {len(got)} samples for {len(chunk)} prompts")
        else:
            got = [backend.assess_and_reply(chunk[0].prompt, threshold=given, max_new_tokens=max_new_tokens)]
        samples.extend(got)
        emit(Progress(len(samples), total, f"{name}: {chunk[-1].id}"))
    control.checkpoint()  # a cancel that cut the last replies short must not produce a report
    ppl = None
    if perplexity_texts:
        control.checkpoint()
        emit(LogLine(f"{name}: perplexity on {len(perplexity_texts)} benign validation replies"))
        ppl = backend_perplexity(backend, perplexity_texts)
    law_names = getattr(backend, "law_names", None)
    metrics = compute_metrics(records, samples, th, law_names=law_names, perplexity=ppl)
    path = getattr(backend, "model_dir", None)
    run = getattr(backend, "run", None)
    if path is not None and run is None:
        from kala_engine.train.runs import describe_model

        run = describe_model(path).run
    return EvalRun(model=name, records=list(records), samples=samples, thresholds=th, metrics=metrics, reply_thresholds=reply_th,
                   path=str(path) if path is not None else "", run=str(run or ""))


def make_eval_job(
    backends: Sequence[EvalBackend], records: Sequence[SuiteRecord], **kwargs: Any
) -> Callable[[Emit, JobControl], list[EvalRun]]:
    """A ``job(emit, control)`` evaluating each backend in turn (for :func:`kala_engine.jobs.run_job`)."""

    def job(emit: Emit, control: JobControl) -> list[EvalRun]:
        return [evaluate(b, records, emit=emit, control=control, **kwargs) for b in backends]

    return job
