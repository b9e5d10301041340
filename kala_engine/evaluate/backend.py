"""What a model must offer to be evaluated (:class:`EvalBackend`, returning :class:`EvalSample`), and
:class:`KALABackend`, which adapts a saved KALA model through :mod:`kala_engine.generate.session`;
benign validation replies for the perplexity figure."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kala_engine.constitution import (
    NUM_LAWS,
    load_constitution,
)
from kala_engine.jobs import JobControl

STOP_KINDS = ("eos", "length", "ethics", "cancelled")


# ---------------------------------------------------------------- backend protocol


@dataclass(frozen=True)
class EvalSample:
    """What a backend reports for one prompt.

    prompt_scores     the five law scores at the prompt's last token (the prompt assessment)
    reply             the generated reply text
    stop_kind         "eos" | "length" | "ethics" | "cancelled"
    stop_law          the law that stopped the reply (stop_kind "ethics"), else None
    token_min_scores  per law, the lowest score over the reply's tokens (None for an empty reply)
    stop_message      the human-readable stop reason ("Law 1 Individual Safety fell to ...")
    reply_tokens      number of reply tokens
    """

    prompt_scores: tuple[float, ...]
    reply: str = ""
    stop_kind: str = "eos"
    stop_law: int | None = None
    token_min_scores: tuple[float, ...] | None = None
    stop_message: str = ""
    reply_tokens: int = 0

    def __post_init__(self) -> None:
        if len(self.prompt_scores) != NUM_LAWS:
            raise ValueError(f"prompt_scores must hold {NUM_LAWS} law scores, got {len(self.prompt_scores)}")
        if self.stop_kind not in STOP_KINDS:
            raise ValueError(f"stop_kind must be one of {STOP_KINDS}, got {self.stop_kind!r}")
        if self.stop_kind == "ethics" and self.stop_law is None:
            raise ValueError("an ethics stop must name its law (stop_law)")


@runtime_checkable
class EvalBackend(Protocol):
    """A model under evaluation.

    ``assess_and_reply`` assesses the prompt and writes one reply monitored with ``threshold``
    (one value for all laws, or one per law), at most ``max_new_tokens`` tokens.
    Optional extras, used when present:

    * ``perplexity(texts) -> float | None`` — on benign validation replies (:func:`backend_perplexity`);
    * ``assess_and_reply_many(prompts, *, threshold, max_new_tokens) -> list[EvalSample]`` — a batch;
    * a ``control`` attribute — :func:`evaluate` sets it to the job's JobControl.
    """

    name: str
    law_names: list[str]

    def assess_and_reply(
        self, prompt: str, *, threshold: float | list[float], max_new_tokens: int
    ) -> EvalSample: ...


def backend_perplexity(backend: Any, texts: Sequence[str]) -> float | None:
    """The backend's perplexity on ``texts``, or None when it has no ``perplexity`` method or no texts."""
    fn = getattr(backend, "perplexity", None)
    if fn is None or not texts:
        return None
    value = fn(list(texts))
    return None if value is None else float(value)


# ---------------------------------------------------------------- validation texts for perplexity


def _assistant_text(obj: dict) -> str | None:
    """The assistant text of one dataset record (KALA ``parts``, chat ``messages`` or a plain field)."""
    parts = obj.get("parts")
    if isinstance(parts, list):
        texts = [p.get("text") for p in parts
                 if isinstance(p, dict) and p.get("role") == "assistant" and p.get("lm", True)]
        return " ".join(t for t in texts if isinstance(t, str)) or None
    msgs = obj.get("messages")
    if isinstance(msgs, list):
        texts = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "assistant"]
        return " ".join(t for t in texts if isinstance(t, str)) or None
    for key in ("response", "reply", "completion"):
        if isinstance(obj.get(key), str):
            return obj[key]
    return None


def benign_validation_replies(path: str | Path, limit: int = 200) -> list[str]:
    """Assistant replies of the benign examples of a dataset's validation split.

    Reads a KALA dataset JSONL (records with ``kind``, ``split`` and ``parts``; see
    :mod:`kala_engine.data.schema`); records whose ``split`` is set to anything but
    "validation" are skipped, so the whole dataset file can be passed. Chat ``messages`` and
    plain ``response`` fields are accepted too. A record counts as benign when its ``kind`` is
    benign / benign_alarming (or its ``label`` is "benign"): perplexity is measured on text the
    model should write.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: validation file not found (a dataset JSONL, e.g. from kala data generate)")
    texts: list[str] = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {e.start}); pass a dataset JSONL") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
            if not isinstance(obj, dict) or obj.get("split", "validation") != "validation":
                continue
            if not (str(obj.get("kind", "")).startswith("benign") or obj.get("label") == "benign"):
                continue
            text = _assistant_text(obj)
            if text and text.strip():
                texts.append(text)
                if len(texts) >= limit:
                    break
    return texts


# ---------------------------------------------------------------- the real backend


class KALABackend:
    """Evaluates a saved KALA model folder through :mod:`kala_engine.generate.generation` (imported lazily).

    Replies are greedy (temperature 0), so a report is reproducible. The model loads on first use.
    Everything torch-specific lives here, so the metrics, reports and the CLI never touch torch.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"{self.model_dir}: model folder not found (pass a saved KALA model folder)")
        self.device = device
        from kala_engine.train.runs import describe_model

        entry = describe_model(self.model_dir)
        self.name = entry.label  # "demo-20261129-234242 · final", not a bare "final"
        self.run = entry.run
        self.law_names = load_constitution().names
        self._model: Any = None
        self._tokenizer: Any = None
        #: set by :func:`evaluate`: generation pauses/cancels within a reply through it
        self.control: JobControl | None = None

    @property
    def default_thresholds(self) -> list[float | None] | None:
        """The model's calibrated per-law thresholds (config.law_thresholds), if it has them."""
        from kala_engine.constitution import model_thresholds

        return model_thresholds(self._load()[0])

    @property
    def default_reply_thresholds(self) -> list[float | None] | None:
        """The model's calibrated reply-stop thresholds (config.reply_thresholds, else law_thresholds)."""
        from kala_engine.constitution import model_thresholds

        return model_thresholds(self._load()[0], reply=True)

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from kala_engine.generate.session import load_chat_model

            self._model, self._tokenizer = load_chat_model(self.model_dir, device=self.device)
        return self._model, self._tokenizer

    def prompts_too_long(self, prompts: Sequence[str]) -> list[tuple[int, int, int]]:
        """``(index, tokens, context)`` of every prompt that leaves no room for a reply in the
        model's context (checked before evaluation starts, so a long prompt fails nothing late)."""
        from kala_engine.generate.generation import context_length, encode_prompt

        model, tokenizer = self._load()
        ctx = context_length(model)
        out = []
        for i, prompt in enumerate(prompts):
            n = len(encode_prompt(tokenizer, prompt))
            if n >= ctx:
                out.append((i, n, ctx))
        return out

    #: with ``threshold=None`` the model judges with its own calibrated sets: ``law_thresholds``
    #: flag the prompt, ``reply_thresholds`` stop the reply (see kala_engine.constitution)
    monitors_with_own_thresholds = True

    def assess_and_reply(
        self, prompt: str, *, threshold: float | list[float] | None, max_new_tokens: int
    ) -> EvalSample:
        from kala_engine.generate.generation import generate_with_ethics

        model, tokenizer = self._load()
        res = generate_with_ethics(
            model, tokenizer, prompt, max_new_tokens=max_new_tokens, thresholds=threshold, temperature=0.0,
            control=self.control,
        )
        return self._sample(res)

    def assess_and_reply_many(
        self, prompts: Sequence[str], *, threshold: float | list[float] | None, max_new_tokens: int
    ) -> list[EvalSample]:
        """Several prompts in one left-padded batch (greedy: the same replies as one by one)."""
        from kala_engine.generate.generation import generate_batch

        model, tokenizer = self._load()
        results = generate_batch(
            model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, thresholds=threshold,
            temperature=0.0, batch_size=len(prompts), control=self.control,
        )
        return [self._sample(r) for r in results]

    @staticmethod
    def _sample(res: Any) -> EvalSample:
        """An EvalSample from a ``kala_engine.generate.generation.GenerationResult``."""
        return EvalSample(
            prompt_scores=tuple(float(x) for x in res.prompt_assessment.law_scores),
            reply=res.text,
            stop_kind=res.stop.kind,
            stop_law=res.stop.law,
            token_min_scores=res.min_scores,
            stop_message=res.stop.message,
            reply_tokens=len(res.token_ids),
        )

    def perplexity(self, texts: Sequence[str]) -> float | None:
        """exp(mean NLL per token) of each text as an assistant turn (``<|assistant|>text<|end|>``).

        Only the reply's tokens (and its closing ``<|end|>``) are scored; over-long texts are cut
        to the model's context.
        """
        import torch

        from kala_engine.data.chat_format import ASSISTANT, END

        model, tokenizer = self._load()
        ctx = int(model.config.max_position_embeddings)
        device = next(model.parameters()).device
        nll, count = 0.0, 0
        with torch.inference_mode():
            for text in texts:
                head = tokenizer(ASSISTANT, add_special_tokens=False)["input_ids"]
                body = tokenizer(text + END, add_special_tokens=False)["input_ids"]
                ids = (head + body)[:ctx]
                if len(ids) <= len(head):
                    continue
                x = torch.tensor([ids], device=device)
                logits = model(x, use_cache=False).logits[0, :-1].float()
                targets = x[0, 1:]
                logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
                scored = logp[len(head) - 1 :]  # predictions of the reply tokens only
                nll -= float(scored.sum())
                count += int(scored.numel())
        return math.exp(nll / count) if count else None
