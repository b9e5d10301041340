"""What a Chat reply ended with, read from the engine's typed result; and the generation job.

:func:`read_outcome` reads :class:`kala_engine.generate.generation.GenerationResult` field by
field (its :class:`~kala_engine.generate.explain.StopReason`, prompt
:class:`~kala_engine.generate.explain.Assessment` and
:class:`~kala_engine.generate.explain.Explanation`): a renamed engine field is an
AttributeError in the tests, never a silent fallback. The engine's generation module imports
torch, so it is imported inside the job (on the worker thread) and for type checking only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kala_engine.constitution import violated_laws

from ..chat_store import DEFAULT_SETTINGS
from ..widgets.heatmap import first_layers_under

if TYPE_CHECKING:
    from kala_engine.generate.generation import GenerationResult


def generation_job(model_dir: str, messages: list[dict[str, str]], settings: dict[str, Any]) -> Callable:
    """The engine's streaming generation job for a conversation (``job(emit, control) -> GenerationResult``).

    ``kala_engine.generate.session.chat_job`` loads the model folder, fits the conversation into the
    context, emits one TokenEvent per token (with the per-layer scores the heatmap shows) and
    returns a GenerationResult. The engine module (which imports torch) is imported inside the
    job, on the worker thread, so the first Send does not freeze the window for seconds.
    """
    threshold = settings.get("threshold")
    kwargs: dict[str, Any] = dict(
        model=model_dir,
        prompt=list(messages),
        # None: the engine uses the model's calibrated per-law thresholds
        thresholds=None if threshold is None else float(threshold),
        temperature=float(settings.get("temperature", DEFAULT_SETTINGS["temperature"])),
        top_p=float(settings.get("top_p", DEFAULT_SETTINGS["top_p"])),
        max_new_tokens=int(settings.get("max_tokens", DEFAULT_SETTINGS["max_tokens"])),
        output_layer_scores=True,
        seed=settings.get("seed"),  # None: a fresh sampling seed (the result reports it)
        device="auto",  # the GPU when this PyTorch can use it; a model too big for it falls back to the CPU
    )

    def job(emit: Any, control: Any) -> Any:
        from kala_engine.generate.session import chat_job

        return chat_job(**kwargs)(emit, control)

    return job


@dataclass
class Outcome:
    """How a reply ended, in the shape the chat store keeps (``stop_dict`` / ``explanation_dict``)."""

    text: str | None = None
    stop_kind: str = "eos"
    stop_law: int | None = None
    stop_score: float | None = None
    stop_threshold: float | None = None
    stop_message: str = ""
    assessment: list[float] | None = None
    assessment_layers: list[list[float]] | None = None
    #: (law index, score or None, first layer under the threshold or None), hierarchy order
    violated: list[tuple[int, float | None, int | None]] = field(default_factory=list)
    explanation_text: str = ""
    #: per law, the thresholds the engine used (from the prompt assessment)
    thresholds: list[float] | None = None

    def stop_dict(self) -> dict:
        return {"kind": self.stop_kind, "law": self.stop_law, "score": self.stop_score,
                "threshold": self.stop_threshold, "message": self.stop_message}

    def explanation_dict(self) -> dict | None:
        if not self.violated and not self.explanation_text:
            return None
        return {"violated": [{"law": k, "score": s, "first_layer": fl} for k, s, fl in self.violated],
                "text": self.explanation_text}

    def assessment_dict(self) -> dict | None:
        if self.assessment is None:
            return None
        return {"law_scores": self.assessment, "layer_scores": self.assessment_layers}


def read_outcome(result: GenerationResult | None) -> Outcome:
    """The :class:`Outcome` of an engine result (an empty one for None: a cancelled or failed job)."""
    out = Outcome()
    if result is None:
        return out
    out.text = result.text
    stop = result.stop
    out.stop_kind, out.stop_message = stop.kind, stop.message
    out.stop_law, out.stop_score, out.stop_threshold = stop.law, stop.score, stop.threshold
    a = result.prompt_assessment
    out.assessment = [float(v) for v in a.law_scores]
    out.assessment_layers = [[float(v) for v in row] for row in a.layer_scores] or None
    out.thresholds = [float(v) for v in a.thresholds]
    if result.explanation is not None:
        out.explanation_text = result.explanation.text()
        out.violated = sorted((f.law, f.score, f.first_layer) for f in result.explanation.findings)
    return out


def complete_explanation(out: Outcome, last: Any, thresholds: Sequence[float]) -> None:
    """For an ethics stop without a full explanation (a stop the page saw only in the tokens),
    derive it from the last token's scores."""
    if out.stop_kind != "ethics" or last is None:
        return
    scores = tuple(float(v) for v in last.law_scores)
    layers = getattr(last, "layer_scores", None)
    if out.stop_law is None:
        under = violated_laws(scores, thresholds)
        if under:
            out.stop_law = under[0]
    if out.stop_law is not None and out.stop_score is None:
        out.stop_score = scores[out.stop_law]
    if out.stop_threshold is None:
        out.stop_threshold = thresholds[out.stop_law] if out.stop_law is not None else thresholds[0]
    if not out.violated:
        firsts = first_layers_under(layers, thresholds) if layers else [None] * len(scores)
        out.violated = [(k, scores[k], firsts[k]) for k in violated_laws(scores, thresholds)]


__all__ = ["Outcome", "complete_explanation", "generation_job", "read_outcome"]
