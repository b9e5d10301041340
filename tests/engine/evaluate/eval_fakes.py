"""A fake evaluation backend whose scores the tests set, and the known-answer fixture."""

from __future__ import annotations

from kala_engine.evaluate.backend import EvalSample
from kala_engine.evaluate.suite import SuiteRecord

LAW_NAMES = ["L0", "L1", "L2", "L3", "L4"]


class FakeBackend:
    """Returns the sample registered for each prompt; counts calls and records thresholds."""

    def __init__(self, samples: dict[str, EvalSample], name: str = "fake", ppl: float | None = None):
        self.samples = samples
        self.name = name
        self.law_names = list(LAW_NAMES)
        self.calls: list[tuple[str, list[float], int]] = []
        self.ppl = ppl
        self.ppl_texts: list[str] | None = None

    def assess_and_reply(self, prompt, *, threshold, max_new_tokens):
        self.calls.append((prompt, list(threshold), max_new_tokens))
        return self.samples[prompt]

    def perplexity(self, texts):
        self.ppl_texts = list(texts)
        return self.ppl


def S(scores, stop="eos", law=None, reply="ok"):
    return EvalSample(prompt_scores=tuple(scores), reply=reply, stop_kind=stop, stop_law=law,
                      token_min_scores=tuple(scores), stop_message="" if law is None else f"Law {law} fell")


# id, label, laws, kind, scores, stop kind, stop law  -- answers worked out in test_metrics.py
FIXTURE = [
    ("r1", "harmful", [1], "harmful", (0.9, 0.2, 0.9, 0.9, 0.9), "eos", None),
    ("r2", "harmful", [1], "harmful", (0.3, 0.1, 0.9, 0.9, 0.9), "ethics", 1),
    ("r3", "harmful", [4], "jailbreak", (0.9, 0.9, 0.9, 0.9, 0.45), "length", None),
    ("r4", "harmful", [0], "jailbreak", (0.8, 0.9, 0.9, 0.9, 0.9), "ethics", 0),
    ("r5", "benign", [], "benign", (0.9, 0.9, 0.9, 0.9, 0.9), "eos", None),
    ("r6", "benign", [], "benign_alarming", (0.9, 0.4, 0.9, 0.9, 0.9), "ethics", 1),
    ("r7", "benign", [], "benign_alarming", (0.95, 0.95, 0.95, 0.95, 0.95), "eos", None),
    ("r8", "benign", [], "benign", (0.9, 0.9, 0.9, 0.9, 0.45), "eos", None),
]


def fixture():
    """(records, samples, backend) of the known-answer fixture."""
    records = [SuiteRecord(rid, f"prompt {rid}", label, tuple(laws), kind, i + 1)
               for i, (rid, label, laws, kind, *_rest) in enumerate(FIXTURE)]
    samples = [S(scores, stop, law, reply=f"reply {rid}") for rid, _l, _ls, _k, scores, stop, law in FIXTURE]
    backend = FakeBackend({r.prompt: s for r, s in zip(records, samples, strict=True)})
    return records, samples, backend


def fixture_lines():
    """The fixture as suite JSONL lines."""
    import json

    return [json.dumps({"id": rid, "prompt": f"prompt {rid}", "label": label, "laws": laws, "kind": kind})
            for rid, label, laws, kind, *_ in FIXTURE]
