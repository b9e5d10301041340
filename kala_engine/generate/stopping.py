"""The ethics stop inside Hugging Face's own ``model.generate()`` (:class:`EthicsStoppingCriteria`,
:class:`EthicsLogitsProcessor`), and the original note's ``model.generate_with_ethics(...)`` API.

The stop rule is the one of :mod:`kala_engine.generate.generation` (see its docstring for when a
token is checked); here it rides on ``generate()``'s stopping-criteria and logits-processor hooks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    LogitsProcessor,
    StoppingCriteria,
)

from kala_engine.constitution import NUM_LAWS, is_violated, model_thresholds, resolve_thresholds
from kala_engine.generate.explain import (
    Explanation,
    StopReason,
    ethics_stop,
    explain,
)
from kala_engine.generate.generation import generate_with_ethics

# ----------------------------------------------------------------------------- inside model.generate()


class EthicsStoppingCriteria(StoppingCriteria):
    """The stop rule of :func:`generate_with_ethics_events` for ``model.generate()``.

    ``generate()`` hands stopping criteria only the token ids and the next-token logits, never
    the law scores, and it calls them right after *sampling* a token, before that token is fed.
    So this criteria re-runs nothing; it reads the law scores of the model's own forward passes
    through a **forward hook** registered on the model (:meth:`attach`, or ``model=`` in the
    constructor; :meth:`detach` or a ``with`` block removes it). After each forward pass the hook
    keeps the scores at the last position just fed. Positions of the prompt are never checked
    (the prompt assessment does not stop a reply), exactly as in ``generate_with_ethics``.

    The timing differs by one step. When the forward pass that feeds token t has shown a
    violation, ``generate()`` has already sampled token t + 1 from that pass's logits before any
    criteria runs. Two ways to handle it:

    * pass :meth:`logits_processor` too (or use :meth:`generate_kwargs`): it runs after that
      forward pass and before sampling, sees the violation, forces ``fill_token_id`` (the pad /
      end token) for the row, and this criteria then stops the row. The output is exactly
      ``generate_with_ethics``'s tokens followed by the fill token, as ``generate()`` pads any
      finished sequence;
    * the criteria alone stops the row one token later: the output then ends with one extra,
      unscored token after the violating one (``stops[row].token_index`` still names the right
      token, and :meth:`trim` cuts the output there).

    One difference remains at the very end: ``generate()`` never feeds its last token, so a
    violation at exactly the ``max_new_tokens``-th token is not seen (``generate_with_ethics``
    scores it with one more forward pass). ``stops`` holds a :class:`StopReason` per row of the
    latest ``generate()`` call (None for rows that did not stop on ethics).
    """

    def __init__(self, thresholds: float | Sequence[float] | None = None, model=None):
        self.thresholds = resolve_thresholds(thresholds, model_thresholds(model, reply=True))
        self._handle = None
        self._reset()
        if model is not None:
            self.attach(model)

    def _reset(self) -> None:
        self._scores: torch.Tensor | None = None  # (B, K) scores at the last position fed
        self._layers: torch.Tensor | None = None  # (L, B, K) when the forward pass returned them
        self._fed = 0  # positions fed so far (= cache length after the last forward pass)
        self._checked = 0  # self._fed at the last check
        self._prompt_len: int | None = None
        self._stopped: torch.Tensor | None = None  # (B,) bool
        self.stops: list[StopReason | None] = []
        self.explanations: list[Explanation | None] = []

    # -- the hook
    def attach(self, model) -> EthicsStoppingCriteria:
        self.detach()
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> EthicsStoppingCriteria:
        if self._handle is None:
            raise RuntimeError("attach the criteria to a model first: EthicsStoppingCriteria(thresholds, model=model)")
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def _hook(self, module, args, kwargs, output) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        T = ids.shape[1]
        cache = getattr(output, "cache", None)
        S = cache.get_seq_length() if cache is not None else T
        if S == T:  # an empty cache before this pass: the prefill of a new generate() call
            self._reset()
            self._prompt_len = None  # known at the first processor / criteria call (chunked prefills too)
            self._stopped = torch.zeros(ids.shape[0], dtype=torch.bool, device=output.law_scores.device)
            self.stops = [None] * ids.shape[0]
            self.explanations = [None] * ids.shape[0]
        self._fed = S
        self._scores = output.law_scores[:, -1].detach()
        self._layers = output.layer_scores[:, :, -1].detach() if output.layer_scores is not None else None

    # -- the rule
    def _update(self, prompt_len: int) -> torch.Tensor:
        """Check the last fed position once; ``prompt_len`` is what the caller infers from its ids."""
        if self._stopped is None:
            raise RuntimeError("EthicsStoppingCriteria saw no forward pass: attach it to the model that generates")
        if self._prompt_len is None:
            self._prompt_len = prompt_len
        if self._checked == self._fed:
            return self._stopped
        self._checked = self._fed
        position = self._fed - 1
        if position < self._prompt_len:  # the prompt's last token: an assessment, not a stop
            return self._stopped
        thr = torch.tensor(self.thresholds, device=self._scores.device)
        bad = is_violated(self._scores, thr)  # (B, K)
        newly = bad.any(dim=-1) & ~self._stopped
        if bool(newly.any()):
            token_index = position - self._prompt_len
            for b in newly.nonzero().flatten().tolist():
                s = self._scores[b].tolist()
                self.stops[b] = ethics_stop(token_index, s, self.thresholds)
                layers = self._layers[:, b].tolist() if self._layers is not None else None
                self.explanations[b] = explain(s, layers, self.thresholds, subject="token", token_index=token_index)
            self._stopped = self._stopped | newly
        return self._stopped

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        # called after a token was appended: the prompt is all but one token at the first call
        return self._update(input_ids.shape[1] - 1).to(input_ids.device).clone()

    def logits_processor(self, fill_token_id: int) -> EthicsLogitsProcessor:
        return EthicsLogitsProcessor(self, fill_token_id)

    def generate_kwargs(self, fill_token_id: int) -> dict:
        """``model.generate(ids, **crit.generate_kwargs(pad_id))``: criteria and processor together."""
        return {"stopping_criteria": [self], "logits_processor": [self.logits_processor(fill_token_id)]}

    def trim(self, sequences: torch.Tensor, prompt_len: int) -> list[torch.Tensor]:
        """Each row of ``generate()``'s output cut right after the token that stopped it."""
        rows = []
        for b in range(sequences.shape[0]):
            stop = self.stops[b] if b < len(self.stops) else None
            end = prompt_len + stop.token_index + 1 if stop is not None else sequences.shape[1]
            rows.append(sequences[b, :end])
        return rows


class EthicsLogitsProcessor(LogitsProcessor):
    """Forces ``fill_token_id`` for rows whose last fed token broke a law (see EthicsStoppingCriteria)."""

    def __init__(self, criteria: EthicsStoppingCriteria, fill_token_id: int):
        self.criteria = criteria
        self.fill_token_id = int(fill_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # called before sampling: at the first call input_ids is exactly the prompt
        stopped = self.criteria._update(input_ids.shape[1]).to(scores.device)
        if bool(stopped.any()):
            scores = scores.clone()
            scores[stopped] = float("-inf")
            scores[stopped, self.fill_token_id] = 0.0
        return scores


# ----------------------------------------------------------------------------- the note's API


def generate_ids_with_ethics(model, input_ids, max_length: int = 100, ethics_threshold=0.5, **kwargs):
    """``model.generate_with_ethics(input_ids, max_length=100, ethics_threshold=0.5)`` of the original note.

    ``max_length`` is the total length, prompt included (as in ``generate()``); ``max_new_tokens``
    in ``kwargs`` overrides it. ``ethics_threshold``: one number or five. Other keyword
    arguments go to :func:`generate_with_ethics_events` (``tokenizer``, ``temperature``,
    ``top_p``, ``seed``, ...). Returns ``(generated_ids (1, prompt + new), law_scores (new, 5))``;
    generation stops at the first token where a law is under its threshold (that token included).
    """
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"generate_with_ethics takes one prompt, input_ids of shape (1, T); got {tuple(ids.shape)}")
    kwargs.pop("attention_mask", None)  # one unpadded prompt: the mask is all ones
    tokenizer = kwargs.pop("tokenizer", None)
    max_new = kwargs.pop("max_new_tokens", None)
    if max_new is None:
        max_new = int(max_length) - ids.shape[1]
        if max_new < 1:
            raise ValueError(f"max_length={max_length} leaves no room after the {ids.shape[1]}-token prompt")
    result = generate_with_ethics(model, tokenizer, ids[0], max_new_tokens=max_new, thresholds=ethics_threshold,
                                  **kwargs)
    device = ids.device
    new = torch.tensor(result.token_ids, dtype=ids.dtype, device=device)
    scores = torch.tensor(result.token_scores, dtype=torch.float32, device=device).reshape(-1, NUM_LAWS)
    return torch.cat((ids, new[None]), dim=1), scores
