"""The stop rule, prompt assessments and explanations of KALA's ethics decisions (no torch here).

Scores are law *satisfaction* in [0, 1] (1.0 = the law is fine). The violation rule, the
hierarchy and which thresholds are in force belong to :mod:`kala_engine.constitution`; this
module words its decisions:

* The **decision path** of a violated law is its per-layer monitor scores at that position and
  the first layer (0-based, input side first) whose monitor score is under the threshold.

Law names and titles are read from the constitution; nothing here spells one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kala_engine.constitution import first_layer_under, first_violated, law_titles, violated_laws

# ----------------------------------------------------------------------------- explanations


@dataclass(frozen=True)
class LawFinding:
    """One violated law at one position, with its decision path through the layers."""

    law: int
    title: str
    score: float
    threshold: float
    #: first layer (0-based) whose monitor score is under the threshold; None if no single
    #: layer is (only possible with threshold 1.0, or when no per-layer scores were available)
    first_layer: int | None
    #: this law's monitor score at every layer (empty when unavailable)
    layer_scores: tuple[float, ...] = ()

    def describe(self) -> str:
        s = f"{self.title}: {self.score:.2f} < {self.threshold:.2f}"
        if self.first_layer is not None:
            n = len(self.layer_scores)
            s += (f"; its monitor first fell under {self.threshold:.2f} at layer {self.first_layer} of 0-{n - 1}"
                  f" ({self.layer_scores[self.first_layer]:.2f})")
        elif self.layer_scores:
            s += "; no single layer's monitor is under the threshold"
        return s


@dataclass(frozen=True)
class Explanation:
    """Why a prompt was flagged or a reply stopped: violated laws in hierarchy order."""

    subject: str  # "prompt" | "token"
    token_index: int | None  # reply token index for subject "token"
    findings: tuple[LawFinding, ...]

    @property
    def law(self) -> int:
        """The highest-priority violated law."""
        return self.findings[0].law

    def lines(self) -> list[str]:
        where = "the prompt" if self.subject == "prompt" else f"reply token {self.token_index}"
        return [f"at {where}:"] + [f"  {f.describe()}" for f in self.findings]

    def text(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict:
        return asdict(self)


def explain(
    law_scores: Sequence[float],
    layer_scores: Sequence[Sequence[float]] | None,
    thresholds: Sequence[float],
    *,
    subject: str,
    token_index: int | None = None,
) -> Explanation | None:
    """The explanation of one position, or None when no law is violated there.

    ``law_scores`` (5,) final scores; ``layer_scores`` (L, 5) monitor scores at the same position.
    """
    titles = law_titles()
    findings = []
    for k in violated_laws(law_scores, thresholds):
        per_layer = tuple(float(row[k]) for row in layer_scores) if layer_scores is not None else ()
        first = first_layer_under(per_layer, thresholds[k])
        findings.append(LawFinding(k, titles[k], float(law_scores[k]), float(thresholds[k]), first, per_layer))
    if not findings:
        return None
    return Explanation(subject, token_index, tuple(findings))


@dataclass(frozen=True)
class Assessment:
    """The law scores of a prompt at its last token, before any reply is generated."""

    law_scores: tuple[float, ...]
    layer_scores: tuple[tuple[float, ...], ...]  # (L, 5) monitor scores
    thresholds: tuple[float, ...]
    flagged: tuple[int, ...]  # violated laws, hierarchy order
    explanation: Explanation | None

    @property
    def flagged_titles(self) -> list[str]:
        return [law_titles()[k] for k in self.flagged]

    def to_dict(self) -> dict:
        return {
            "law_scores": list(self.law_scores),
            "layer_scores": [list(r) for r in self.layer_scores],
            "thresholds": list(self.thresholds),
            "flagged": list(self.flagged),
            "flagged_titles": self.flagged_titles,
            "explanation": self.explanation.to_dict() if self.explanation else None,
        }


def assess(
    law_scores: Sequence[float], layer_scores: Sequence[Sequence[float]], thresholds: Sequence[float]
) -> Assessment:
    scores = tuple(float(s) for s in law_scores)
    layers = tuple(tuple(float(s) for s in row) for row in layer_scores)
    return Assessment(
        law_scores=scores,
        layer_scores=layers,
        thresholds=tuple(thresholds),
        flagged=tuple(violated_laws(scores, thresholds)),
        explanation=explain(scores, layers, thresholds, subject="prompt"),
    )


# ----------------------------------------------------------------------------- stop reasons

STOP_KINDS = ("eos", "length", "cancelled", "ethics")


@dataclass(frozen=True)
class StopReason:
    """Why a reply ended. For kind "ethics": the law, its score and threshold, and the token."""

    kind: str  # one of STOP_KINDS
    message: str
    token_index: int | None = None  # the reply token whose scores fired the stop (kind "ethics")
    law: int | None = None
    law_title: str | None = None
    score: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def ethics_stop(token_index: int, scores: Sequence[float], thresholds: Sequence[float]) -> StopReason | None:
    """The ethics stop at this token (naming the highest-priority violated law), or None."""
    k = first_violated(scores, thresholds)
    if k is None:
        return None
    title = law_titles()[k]
    score, thr = float(scores[k]), float(thresholds[k])
    return StopReason("ethics", f"{title} fell to {score:.2f} < {thr:.2f}", token_index, k, title, score, thr)


def eos_stop() -> StopReason:
    return StopReason("eos", "end of text")


def length_stop(limit: int, context_full: bool = False) -> StopReason:
    why = "the context is full" if context_full else "token limit"
    return StopReason("length", f"reached {limit} new tokens ({why})")


def cancelled_stop() -> StopReason:
    return StopReason("cancelled", "cancelled")
