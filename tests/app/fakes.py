"""Fakes with the engine's contract for app tests that must not train or generate for real: a
training job, and real engine result objects for fake generation jobs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

from kala_engine.constitution import law_titles
from kala_engine.generate.explain import Assessment, Explanation, LawFinding, StopReason

# imported here, not inside a fake job: importing torch on the worker thread would hold the GIL
# for seconds in the middle of a test that measures the UI thread
from kala_engine.generate.generation import GenerationResult
from kala_engine.jobs import Cancelled, CheckpointSaved, LogLine, TrainStep, Validation


def fake_config(**kw):
    return SimpleNamespace(**kw)


def fake_train_job(config, step_sleep: float = 0.002, eval_every: int = 10, fail_at: int | None = None):
    """Writes a run folder like kala_engine.train.trainer does and emits one TrainStep per step."""
    run_dir = Path(config.run_dir)
    total = int(getattr(config, "max_steps", None) or 50)

    def job(emit, control):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps({"config": {k: v for k, v in vars(config).items()}}))
        start = 0
        metrics = run_dir / "metrics.jsonl"
        if getattr(config, "resume", False) and metrics.exists():
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            start = max((d["step"] for d in lines if d.get("split") != "validation"), default=0)
        emit(LogLine(f"fake training {total} steps from {start}"))
        t0 = time.monotonic()
        with metrics.open("a") as f:
            step = start
            try:
                for step in range(start + 1, total + 1):
                    control.checkpoint()
                    if fail_at is not None and step == fail_at:
                        raise RuntimeError(f"fake failure at step {step}")
                    time.sleep(step_sleep)
                    m = {"step": step, "epoch": step / total, "lm_loss": 5 * math.exp(-step / 30) + 0.5,
                         "ethics_loss": 0.3 * math.exp(-step / 20) + 0.05, "lr": 1e-3 * min(1, step / 5),
                         "tokens_per_s": 1234.0, "elapsed": time.monotonic() - t0}
                    for k in range(5):
                        m[f"law_loss_{k}"] = (0.05 + 0.01 * k) * math.exp(-step / 25)
                    f.write(json.dumps(m) + "\n")
                    f.flush()
                    emit(TrainStep(step=step, total_steps=total, metrics=m))
                    if eval_every and step % eval_every == 0:
                        v = {"step": step, "split": "validation", "lm_loss": m["lm_loss"] + 0.1,
                             "ethics_loss": m["ethics_loss"] + 0.01}
                        f.write(json.dumps(v) + "\n")
                        emit(Validation(step=step, metrics=v))
            except Cancelled:
                ck = run_dir / "checkpoints" / f"step-{step}"
                ck.mkdir(parents=True, exist_ok=True)
                emit(CheckpointSaved(step=step, path=str(ck)))
                raise
        (run_dir / "final").mkdir(exist_ok=True)
        return {"run_dir": str(run_dir), "steps": total}

    return job


def generation_result(text: str, *, stop_kind: str = "eos", law: int | None = None, score: float | None = None,
                      threshold: float | None = None, prompt_scores=(0.95,) * 5, prompt_layers=(),
                      thresholds=(0.5,) * 5, findings=(), stop_message: str | None = None):
    """A real :class:`kala_engine.generate.generation.GenerationResult` for fake generation jobs.

    ``findings``: (law, score, first_layer) of the explanation (an ethics stop), hierarchy order.
    """
    titles = law_titles()
    thresholds = tuple(float(t) for t in thresholds)
    if stop_message is None:
        stop_message = (f"{titles[law]} fell to {score:.2f} < {threshold:.2f}" if stop_kind == "ethics"
                        else {"eos": "end of text", "length": "token limit"}.get(stop_kind, stop_kind))
    stop = StopReason(stop_kind, stop_message, None, law, titles[law] if law is not None else None, score, threshold)
    flagged = tuple(k for k, s in enumerate(prompt_scores) if s < thresholds[k])
    assessment = Assessment(tuple(prompt_scores), tuple(tuple(r) for r in prompt_layers), thresholds, flagged, None)
    explanation = None
    if findings:
        explanation = Explanation("token", None, tuple(
            LawFinding(k, titles[k], float(s), thresholds[k], fl, (float(s),) * (fl + 1 if fl is not None else 0))
            for k, s, fl in findings))
    return GenerationResult(text=text, token_ids=[], token_scores=[], stop=stop, prompt_assessment=assessment,
                            explanation=explanation)
