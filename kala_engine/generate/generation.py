"""Ethics-monitored generation: every token with its five law scores, and a stop that says why.

Reading order: settings and prompts, the decoding core (one prefill, then one token per step
over the KV cache), the streaming generator :func:`generate_with_ethics_events`, batched
evaluation :func:`generate_batch`, the same stop rule inside ``model.generate()``
(:class:`EthicsStoppingCriteria`), the original note's API, chat sessions and model loading,
and the job wrapper the app's worker runs.

**When is a token checked?** Token *t* is sampled from the logits at the position before it,
then fed to the model; the forward pass that feeds it gives the law scores *at token t's own
position* (its hidden state has read token t) together with the logits for token t + 1. Those
scores are token t's scores: they go into its :class:`~kala_engine.jobs.TokenEvent` and the stop
rule (:mod:`kala_engine.generate.explain`) is applied to them. So a reply of N tokens costs one prefill
and N single-token forward passes (the last one only to score the last token), and a reply
ends *with* the token that fired an ethics stop: it is part of the text, the events and the
result, and ``stop.token_index`` points at it. End-of-reply tokens (``<|end|>``, end of text,
or a role token starting a new turn) are not fed, not scored and not part of the reply.

The prompt assessment is the law scores (and per-layer monitor scores) at the prompt's last
token, from the prefill; it flags laws but never stops a reply by itself.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from kala_engine.constitution import NUM_LAWS, is_violated, model_thresholds, resolve_thresholds
from kala_engine.data.chat_format import ASSISTANT, END, EOS, SYSTEM, USER, format_conversation
from kala_engine.generate.explain import (
    Assessment,
    Explanation,
    StopReason,
    assess,
    cancelled_stop,
    eos_stop,
    ethics_stop,
    explain,
    length_stop,
)
from kala_engine.jobs import Cancelled, Emit, JobControl, TokenEvent

__all__ = [
    "Assessment", "ChatSession", "EthicsLogitsProcessor", "EthicsStoppingCriteria", "Explanation",
    "GenerationResult", "GenerationSettings", "StopReason", "assess_prompt", "chat_job", "generate_batch",
    "generate_ids_with_ethics", "generate_with_ethics", "generate_with_ethics_events", "load_chat_model",
    "IncrementalDetokenizer", "default_stop_ids", "encode_prompt",
]

Prompt = str | Sequence[Mapping[str, str]] | Sequence[int] | torch.Tensor


# ----------------------------------------------------------------------------- settings


@dataclass
class GenerationSettings:
    """How a reply is sampled and monitored. ``temperature`` 0 = greedy."""

    max_new_tokens: int = 128
    #: None = the constitution's per-law thresholds; one number for every law; or five numbers
    thresholds: float | Sequence[float] | None = None
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 discourages repeats (HF / CTRL rule)
    seed: int | None = None  # sampling seed; None = a fresh one, reported in the result
    output_layer_scores: bool = False  # per-layer monitor scores in every TokenEvent

    def check(self) -> None:
        """Raise ValueError naming the first bad field and its allowed range."""
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if int(self.top_k) < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        resolve_thresholds(self.thresholds)


@dataclass
class GenerationResult:
    """A finished (or stopped) reply."""

    text: str
    token_ids: list[int]
    token_scores: list[tuple[float, ...]]  # (tokens, 5) law scores of each reply token
    stop: StopReason
    prompt_assessment: Assessment
    explanation: Explanation | None = None  # for an ethics stop, else the flagged prompt's, else None
    prompt_tokens: int = 0
    #: chat only: messages dropped from the start of the conversation to fit the context
    dropped_turns: int = 0
    seed: int | None = None
    elapsed_s: float = 0.0
    token_layer_scores: list[tuple[tuple[float, ...], ...]] | None = None  # when asked for

    @property
    def min_scores(self) -> tuple[float, ...] | None:
        """Per law, the lowest score over the reply's tokens (None for an empty reply)."""
        if not self.token_scores:
            return None
        return tuple(min(s[k] for s in self.token_scores) for k in range(NUM_LAWS))

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "token_scores": [list(s) for s in self.token_scores],
            "stop": self.stop.to_dict(),
            "prompt_assessment": self.prompt_assessment.to_dict(),
            "explanation": self.explanation.to_dict() if self.explanation else None,
            "prompt_tokens": self.prompt_tokens,
            "dropped_turns": self.dropped_turns,
            "seed": self.seed,
            "elapsed_s": self.elapsed_s,
        }


# ----------------------------------------------------------------------------- prompts and tokens


def _device(model) -> torch.device:
    return next(model.parameters()).device


def context_length(model) -> int:
    return int(model.config.max_position_embeddings)


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt.

    * ``str``: one user turn, rendered with the chat template (ends in ``<|assistant|>``);
    * a list of ``{"role", "content"}`` messages: the conversation, rendered the same way;
    * a list of ints or a 1-D / (1, T) tensor: token ids used as they are.
    """
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.dim() != 1:
            raise ValueError(f"prompt ids must be 1-D or (1, T), got shape {tuple(prompt.shape)}")
        ids = [int(i) for i in prompt.tolist()]
    elif isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("empty prompt: type a message")
        ids = _encode_text(tokenizer, format_conversation([{"role": "user", "content": prompt}]))
    elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
        if not any(str(m.get("content", "")).strip() for m in prompt):
            raise ValueError("empty prompt: the conversation has no text")
        ids = _encode_text(tokenizer, format_conversation(prompt))  # type: ignore[arg-type]
    elif isinstance(prompt, Sequence) and all(isinstance(i, int) for i in prompt):
        ids = [int(i) for i in prompt]  # type: ignore[union-attr]
    else:
        raise TypeError("prompt must be a text, a list of chat messages or a list of token ids")
    if not ids:
        raise ValueError("empty prompt: no tokens to start from")
    return ids


def _encode_text(tokenizer, text: str) -> list[int]:
    if tokenizer is None:
        raise ValueError("a text prompt needs a tokenizer; pass token ids instead")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def default_stop_ids(tokenizer, model) -> set[int]:
    """Tokens that end a reply: ``<|end|>``, end of text, and any role token (a new turn)."""
    ids: set[int] = set()
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        for tok in (END, EOS, USER, SYSTEM, ASSISTANT):
            if tok in vocab:
                ids.add(int(vocab[tok]))
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        return ids
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(e) for e in eos)
    return ids


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces that add up to the decoded text.

    A byte-level BPE token can hold half a UTF-8 character; such a piece is held back (the
    decoded text ends in U+FFFD) until the next tokens complete it (the vLLM / TGI scheme:
    decode a short window before and after the new token and emit the difference).
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window
        self.read = 0  # tokens already turned into text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        if self.tokenizer is None:
            return ""
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def text(self) -> str:
        return self._decode(self.ids) if self.tokenizer is not None else ""


# ----------------------------------------------------------------------------- decoding core


def _logits_processors(temperature: float, top_k: int, top_p: float, repetition_penalty: float) -> LogitsProcessorList:
    """The transformers processors for these settings (the same code ``generate()`` uses)."""
    procs = LogitsProcessorList()
    if repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if temperature > 0:
        if temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            procs.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
    return procs


class _Decoder:
    """One prefill, then one token per step over the KV cache. Rows of a batch are independent.

    ``prefill()`` and ``feed(tokens)`` return the law scores (B, 5) and the per-layer monitor
    scores (L, B, 5) at the position just fed; ``sample()`` draws the next token of every row
    from the logits of that position.
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *,
                 temperature: float, top_k: int, top_p: float, repetition_penalty: float,
                 generator: torch.Generator | None):
        self.model = model
        self.ids = input_ids  # (B, n) everything so far (the repetition penalty reads it)
        self.mask = attention_mask if attention_mask is not None and not bool(attention_mask.all()) else None
        self.processors = _logits_processors(temperature, top_k, top_p, repetition_penalty)
        self.do_sample = temperature > 0
        self.generator = generator
        self.cache = None
        self.logits: torch.Tensor | None = None

    def _forward(self, ids: torch.Tensor):
        out = self.model(ids, attention_mask=self.mask, cache=self.cache, use_cache=True,
                         output_layer_scores=True, logits_to_keep=1)
        self.cache = out.cache
        self.logits = out.logits[:, -1]  # (B, V)
        return out.law_scores[:, -1], out.layer_scores[:, :, -1]  # (B, K), (L, B, K)

    def prefill(self):
        return self._forward(self.ids)

    def sample(self) -> torch.Tensor:
        scores = self.logits.float()
        if self.processors:
            scores = self.processors(self.ids, scores)
        if self.do_sample:
            probs = torch.softmax(scores, dim=-1)
            return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        return scores.argmax(dim=-1)

    def feed(self, tokens: torch.Tensor):
        tokens = tokens[:, None]  # (B, 1)
        self.ids = torch.cat((self.ids, tokens), dim=1)
        if self.mask is not None:
            self.mask = torch.cat((self.mask, torch.ones_like(tokens, dtype=self.mask.dtype)), dim=1)
        return self._forward(tokens)


def _generator(seed: int | None, device: torch.device, sampling: bool) -> tuple[torch.Generator | None, int | None]:
    if not sampling:
        return None, seed
    if seed is None:
        seed = random.SystemRandom().randrange(2**63)
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g, int(seed)


def _check_prompt_fits(n: int, ctx: int) -> None:
    if n >= ctx:
        raise ValueError(
            f"the prompt is {n} tokens but the model's context holds {ctx}: shorten the prompt "
            f"(or start a new conversation) so that there is room for a reply"
        )


def _rows(layer_scores: torch.Tensor) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(r) for r in layer_scores.tolist())


@dataclass(frozen=True)
class _RunSettings:
    """What every row of a generation call shares: the settings and what they resolve to."""

    settings: GenerationSettings
    thr: tuple[float, ...]
    ctx: int
    stop_ids: set[int]
    generator: torch.Generator | None
    seed: int | None
    control: JobControl | None

    @classmethod
    def of(cls, model, tokenizer, settings: GenerationSettings, stop_token_ids, control) -> _RunSettings:
        stop_ids = default_stop_ids(tokenizer, model) if stop_token_ids is None else {int(i) for i in stop_token_ids}
        gen, seed = _generator(settings.seed, _device(model), settings.temperature > 0)
        return cls(settings, resolve_thresholds(settings.thresholds, model_thresholds(model)), context_length(model),
                   stop_ids, gen, seed, control)


def _left_padded(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the rows, left padded: the last token of every row is at -1."""
    B, width = len(prompts), max(len(c) for c in prompts)
    input_ids = torch.full((B, width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((B, width), dtype=torch.long, device=device)
    for b, ids in enumerate(prompts):
        input_ids[b, width - len(ids) :] = torch.tensor(ids, device=device)
        mask[b, width - len(ids) :] = 1
    return input_ids, mask


def _decode_rows(model, tokenizer, prompts: list[list[int]], run: _RunSettings, *, pad: int = 0,
                 stream: bool = False, keep_layers: bool = False) -> Generator[TokenEvent, None, list[GenerationResult]]:
    """The one decode loop, for a batch of rows (left padded with ``pad``; a single reply is a batch of one).

    Prefills, assesses every prompt, then per step: ``control.checkpoint()``, sample a token for
    every running row, end a row on an end token (not fed, not kept), feed the others and check
    the stop rule on their scores; a row also ends at its token budget. With ``stream`` each kept
    token of a row is yielded as a :class:`TokenEvent` (with its text, and its per-layer scores
    when ``keep_layers``) *before* its stop check. Returns the results in row order.
    """
    st, thr, control, max_new_tokens = run.settings, run.thr, run.control, int(run.settings.max_new_tokens)
    B = len(prompts)
    budgets = [min(max_new_tokens, run.ctx - len(ids)) for ids in prompts]
    input_ids, mask = _left_padded(prompts, pad, _device(model))
    dec = _Decoder(model, input_ids, mask, temperature=st.temperature, top_k=st.top_k, top_p=st.top_p,
                   repetition_penalty=st.repetition_penalty, generator=run.generator)
    t0 = time.perf_counter()
    law, layers = dec.prefill()
    law_l, layers_l = law.tolist(), layers.transpose(0, 1).tolist()  # (B, K), (B, L, K)
    assessments = [assess(law_l[b], layers_l[b], thr) for b in range(B)]
    detoks = [IncrementalDetokenizer(tokenizer) for _ in range(B)]
    tokens: list[list[int]] = [[] for _ in range(B)]
    scores: list[list[tuple[float, ...]]] = [[] for _ in range(B)]
    token_layers: list[list] | None = [[] for _ in range(B)] if keep_layers else None
    stops: list[StopReason | None] = [None] * B
    explanations: list[Explanation | None] = [None] * B
    try:
        for step in range(max(budgets)):
            if control is not None:
                control.checkpoint()
            toks = dec.sample()
            toks_l = toks.tolist()
            for b in range(B):
                if stops[b] is None and toks_l[b] in run.stop_ids:
                    stops[b] = eos_stop()
            if all(s is not None for s in stops):
                break
            law, layers = dec.feed(toks)
            law_l = law.tolist()
            for b in range(B):
                if stops[b] is not None:
                    continue
                s, tid = tuple(law_l[b]), toks_l[b]
                tokens[b].append(tid)
                scores[b].append(s)
                per_layer = _rows(layers[:, b]) if keep_layers else None
                if token_layers is not None:
                    token_layers[b].append(per_layer)
                if stream:
                    yield TokenEvent(index=step, token_id=tid, text=detoks[b].push(tid), law_scores=s,
                                     layer_scores=per_layer)
                stops[b] = ethics_stop(step, s, thr)
                if stops[b] is not None:
                    explanations[b] = explain(s, layers[:, b].tolist(), thr, subject="token", token_index=step)
                elif len(tokens[b]) >= budgets[b]:
                    stops[b] = length_stop(budgets[b], context_full=budgets[b] < max_new_tokens)
            if all(s is not None for s in stops):
                break
    except Cancelled:
        stops = [s if s is not None else cancelled_stop() for s in stops]
    elapsed = time.perf_counter() - t0
    out = []
    for b in range(B):
        detoks[b].ids = list(tokens[b])
        out.append(GenerationResult(
            text=detoks[b].text(), token_ids=tokens[b], token_scores=scores[b],
            stop=stops[b] or length_stop(budgets[b]), prompt_assessment=assessments[b],
            explanation=explanations[b] or assessments[b].explanation, prompt_tokens=len(prompts[b]), seed=run.seed,
            elapsed_s=elapsed, token_layer_scores=token_layers[b] if token_layers is not None else None,
        ))
    return out


# ----------------------------------------------------------------------------- streaming generation


@torch.inference_mode()
def generate_with_ethics_events(
    model,
    tokenizer,
    prompt: Prompt,
    *,
    max_new_tokens: int = 128,
    thresholds: float | Sequence[float] | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    control: JobControl | None = None,
    output_layer_scores: bool = False,
    stop_token_ids: Iterable[int] | None = None,
) -> Generator[TokenEvent | GenerationResult, None, GenerationResult]:
    """Generate a reply, yielding one :class:`TokenEvent` per token, then the :class:`GenerationResult`.

    The result is both the last item yielded and the generator's return value. ``prompt`` is a
    user message, a list of chat messages or token ids (:func:`encode_prompt`). ``thresholds``:
    None (the constitution's), one number or five. ``stop_token_ids``: None = the chat
    template's end tokens (:func:`default_stop_ids`); ``()`` = none. ``control.checkpoint()`` is
    called before every token, so a cancel stops the reply within one token (stop kind
    "cancelled"; the tokens so far are kept) and a pause blocks between tokens.

    Raises ValueError for an empty prompt, a prompt that fills the context, or bad settings.
    """
    settings = GenerationSettings(max_new_tokens, thresholds, temperature, top_k, top_p, repetition_penalty, seed,
                                  output_layer_scores)
    settings.check()
    run = _RunSettings.of(model, tokenizer, settings, stop_token_ids, control)
    ids = encode_prompt(tokenizer, prompt)
    _check_prompt_fits(len(ids), run.ctx)
    results = yield from _decode_rows(model, tokenizer, [ids], run, stream=True, keep_layers=output_layer_scores)
    yield results[0]
    return results[0]


def generate_with_ethics(model, tokenizer, prompt: Prompt, *, emit: Emit | None = None, **kwargs) -> GenerationResult:
    """Run :func:`generate_with_ethics_events` to the end; ``emit`` receives every TokenEvent."""
    result = None
    for item in generate_with_ethics_events(model, tokenizer, prompt, **kwargs):
        if isinstance(item, TokenEvent):
            if emit is not None:
                emit(item)
        else:
            result = item
    return result


@torch.inference_mode()
def assess_prompt(model, tokenizer, prompt: Prompt, thresholds: float | Sequence[float] | None = None) -> Assessment:
    """The prompt assessment alone: law and per-layer scores at the prompt's last token."""
    thr = resolve_thresholds(thresholds, model_thresholds(model))
    ids = encode_prompt(tokenizer, prompt)
    _check_prompt_fits(len(ids), context_length(model) + 1)
    out = model(torch.tensor([ids], device=_device(model)), use_cache=False, output_layer_scores=True)
    return assess(out.law_scores[0, -1].tolist(), out.layer_scores[:, 0, -1].tolist(), thr)


# ----------------------------------------------------------------------------- batched prompts


@torch.inference_mode()
def generate_batch(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    thresholds: float | Sequence[float] | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    control: JobControl | None = None,
    batch_size: int = 8,
    stop_token_ids: Iterable[int] | None = None,
    pad_token_id: int | None = None,
) -> list[GenerationResult]:
    """Monitored replies to many prompts, ``batch_size`` at a time (left padding), in order.

    Each row follows exactly the rule of :func:`generate_with_ethics_events` (with greedy
    decoding the results equal the one-by-one ones). ``control.checkpoint()`` runs between
    steps; on cancel the rows still running end with stop kind "cancelled" and the prompts not
    yet started are not returned.
    """
    settings = GenerationSettings(max_new_tokens, thresholds, temperature, top_k, top_p, repetition_penalty, seed)
    settings.check()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    run = _RunSettings.of(model, tokenizer, settings, stop_token_ids, control)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    for ids in encoded:
        _check_prompt_fits(len(ids), run.ctx)
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    pad = int(pad_token_id) if pad_token_id is not None else 0

    results: list[GenerationResult] = []
    for start in range(0, len(encoded), batch_size):
        if control is not None and control.cancelled:
            break
        steps = _decode_rows(model, tokenizer, encoded[start : start + batch_size], run, pad=pad)
        try:  # not streamed: nothing is yielded, the results are the return value
            next(steps)
        except StopIteration as done:
            results.extend(done.value)
    return results


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
        self.thresholds = resolve_thresholds(thresholds, model_thresholds(model))
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


# ----------------------------------------------------------------------------- loading a chat model


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def load_chat_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """A saved KALA model folder -> ``(model, tokenizer)``, the model in eval mode on ``device``.

    Clear errors: no such folder (FileNotFoundError), not a folder (NotADirectoryError), not a
    KALA model (ValueError; a plain GPT-NeoX / Pythia folder is pointed to ``load_from_pythia``),
    no weights or no tokenizer files (FileNotFoundError), a tokenizer bigger than the model's
    vocabulary (ValueError).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such folder; pass a saved KALA model folder (e.g. RUN_DIR/final)")
    if not p.is_dir():
        raise NotADirectoryError(f"{p} is a file; pass the KALA model folder that holds it")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{p}: not a model folder (no config.json); train one with `kala train` or `kala demo`")
    from kala_engine.model.loading import (  # SAFE_KWARGS: trust_remote_code=False, local files only
        SAFE_KWARGS,
        check_no_remote_code,
        check_weights,
    )

    check_no_remote_code(p)  # an auto_map would make transformers import the folder's Python files
    try:
        model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{cfg_file}: unreadable config ({e})") from None
    if model_type == "gpt_neox":
        raise ValueError(
            f"{p} is a plain GPT-NeoX (Pythia) checkpoint, not a KALA model. Convert it first: "
            f"kala_engine.model.modeling_kala.load_from_pythia('{p}') then .save_pretrained(DIR) with the tokenizer, "
            f"or train on it with `kala train --base {p}`"
        )
    if model_type != "kala":
        raise ValueError(f"{p}: model_type is {model_type!r}, not 'kala'; `kala chat` needs a KALA model folder")
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise FileNotFoundError(f"{p}: no weight files (*.safetensors) next to config.json; save the model again")
    check_weights(p)  # safetensors only: a pickle-only folder is refused with the reason
    if not any((p / f).is_file() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{p}: no tokenizer files (tokenizer.json); save the tokenizer into the model folder "
            f"(tokenizer.save_pretrained('{p}'))"
        )
    from transformers.utils import logging as hf_logging

    from kala_engine.model.modeling_kala import KALAForCausalLM

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a chat
    try:
        model = KALAForCausalLM.from_pretrained(str(p), dtype=dtype, use_safetensors=True,
                                                **SAFE_KWARGS).to(device).eval()
        tokenizer = _load_tokenizer(p)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"{p}: the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}; "
            f"the folder mixes files of different models"
        )
    return model, tokenizer


def _load_tokenizer(p: Path):
    from kala_engine.data.tokenizer import load_tokenizer

    return load_tokenizer(p)


# ----------------------------------------------------------------------------- chat sessions


def default_reserve(max_new_tokens: int, context: int) -> int:
    """Room kept for the reply when fitting a conversation: max_new_tokens, at most a quarter of the context."""
    return min(int(max_new_tokens), max(1, context // 4))


def fit_conversation(tokenizer, messages: Sequence[Mapping[str, str]], context: int, reserve: int
                     ) -> tuple[list[int], int]:
    """Prompt ids of ``messages`` that leave ``reserve`` tokens of the context for the reply.

    When the whole conversation does not fit, the oldest messages after the system message are
    dropped (a user message together with the reply that follows it) until it does, or until
    only the last message is left. Returns ``(ids, number of messages dropped)``; raises
    ValueError when the last message alone fills the context.
    """
    messages = list(messages)
    head = messages[:1] if messages and messages[0].get("role") == "system" else []
    rest = messages[len(head):]
    dropped = 0
    while True:
        ids = encode_prompt(tokenizer, head + rest[dropped:])
        if len(ids) + reserve <= context:
            return ids, dropped
        if dropped >= len(rest) - 1:  # only the newest message is left
            _check_prompt_fits(len(ids), context)  # raises when it alone fills the context
            return ids, dropped
        pair = rest[dropped].get("role") == "user" and dropped + 2 <= len(rest) - 1
        dropped += 2 if pair else 1


class ChatSession:
    """A multi-turn conversation with one model, rendered with the shared chat template.

    ``messages`` is the whole transcript (an optional system message first). Before each reply
    the prompt must leave room for ``reserve_tokens`` of reply (default: ``max_new_tokens``, at
    most a quarter of the context); when it does not, the oldest messages after the system
    message leave the context (a user message goes together with the reply that follows it),
    and the result's ``dropped_turns`` says how many messages were dropped for this reply. The
    transcript keeps them; ``context_start`` is the first message still in the context.
    """

    def __init__(self, model, tokenizer, *, system: str | None = None, reserve_tokens: int | None = None,
                 settings: GenerationSettings | None = None, **setting_overrides):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        for k, v in setting_overrides.items():
            if not hasattr(self.settings, k):
                raise TypeError(f"unknown generation setting {k!r}")
            setattr(self.settings, k, v)
        self.settings.check()
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.context_start = len(self.messages)
        self.reserve_tokens = reserve_tokens

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [m for m in self.messages[:1] if m["role"] == "system"]
        self.context_start = len(self.messages)

    def _system(self) -> list[dict[str, str]]:
        return self.messages[:1] if self.messages and self.messages[0]["role"] == "system" else []

    def _fit(self) -> tuple[list[int], int]:
        """Prompt ids of the conversation, dropping the oldest messages until a reply fits."""
        ids, dropped = fit_conversation(self.tokenizer, self._system() + self.messages[self.context_start :],
                                        context_length(self.model), self._reserve())
        self.context_start += dropped
        return ids, dropped

    def _reserve(self) -> int:
        if self.reserve_tokens is not None:
            return int(self.reserve_tokens)
        return default_reserve(int(self.settings.max_new_tokens), context_length(self.model))

    def stream(self, text: str, *, control: JobControl | None = None, **overrides
               ) -> Generator[TokenEvent | GenerationResult, None, GenerationResult]:
        """Add the user's ``text`` and stream the reply (TokenEvents, then the GenerationResult)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty message: type something to send")
        settings = GenerationSettings(**{**self.settings.__dict__, **overrides})
        settings.check()
        start, n = self.context_start, len(self.messages)
        self.messages.append({"role": "user", "content": text})
        try:
            ids, dropped = self._fit()
        except ValueError:
            del self.messages[n:]
            self.context_start = start
            raise
        result = yield from generate_with_ethics_events(
            self.model, self.tokenizer, ids, control=control, **settings.__dict__
        )
        result.dropped_turns = dropped
        self.messages.append({"role": "assistant", "content": result.text})
        return result

    def send(self, text: str, *, emit: Emit | None = None, control: JobControl | None = None,
             **overrides) -> GenerationResult:
        """Add the user's ``text`` and generate the whole reply; ``emit`` receives the TokenEvents."""
        result = None
        for item in self.stream(text, control=control, **overrides):
            if isinstance(item, TokenEvent):
                if emit is not None:
                    emit(item)
            else:
                result = item
        return result


# ----------------------------------------------------------------------------- the app's job


_LOADED: dict[tuple[str, str], tuple[float, Any, Any]] = {}


def _cached_load(model_dir: str | Path, device: str):
    """load_chat_model, keeping the last model loaded (a chat sends many replies to one model).

    The entry is reused while the folder's config.json and weights keep their modification time.
    """
    p = Path(model_dir)
    key = (str(p.resolve()), str(device))
    try:
        stamp = max(f.stat().st_mtime for f in [p / "config.json", *p.glob("*.safetensors")])
    except (OSError, ValueError):
        stamp = -1.0
    hit = _LOADED.get(key)
    if hit is not None and hit[0] == stamp and stamp >= 0:
        return hit[1], hit[2]
    model, tokenizer = load_chat_model(p, device=device)
    _LOADED.clear()  # one model at a time: memory matters more than a second cache entry
    _LOADED[key] = (stamp, model, tokenizer)
    return model, tokenizer


def chat_job(
    model: Any,
    tokenizer: Any = None,
    prompt: str | Sequence[Mapping[str, str]] | None = None,
    *,
    session: ChatSession | None = None,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    max_new_tokens: int = 128,
    thresholds: float | Sequence[float] | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    output_layer_scores: bool = False,
    stop_token_ids: Iterable[int] | None = None,
) -> Callable[[Emit, JobControl], GenerationResult]:
    """A :mod:`kala_engine.jobs` job that emits one TokenEvent per token and returns the GenerationResult.

    ``model`` is a loaded KALA model (with ``tokenizer``) or a model folder (loaded in the job
    with :func:`load_chat_model` and kept for the next job on the same folder; ``model_dir`` is
    an alias). ``prompt`` is a user message, or the whole conversation as chat messages: it is
    fitted into the context by dropping its oldest turns (the result's ``dropped_turns``). With ``session`` the prompt is the
    next user message of that conversation and the reply joins its transcript (``stop_token_ids``
    applies without a session: None = the chat template's end tokens). A cancel ends
    the reply within one token with stop kind "cancelled" (the partial reply is the result).
    """
    if isinstance(model, (str, Path)):
        model_dir, model = model, None
    if model is None and model_dir is None and session is None:
        raise ValueError("chat_job needs a model, a model folder or a chat session")
    if prompt is None:
        raise ValueError("chat_job needs a prompt")
    settings = GenerationSettings(max_new_tokens, thresholds, temperature, top_k, top_p, repetition_penalty, seed,
                                  output_layer_scores)
    settings.check()

    def job(emit: Emit, control: JobControl) -> GenerationResult:
        control.checkpoint()
        if session is not None:
            stream = session.stream(prompt, control=control, **settings.__dict__)  # type: ignore[arg-type]
        else:
            m, tok = (model, tokenizer) if model is not None else _cached_load(model_dir, device)
            dropped = 0
            ids: Prompt = prompt
            if not isinstance(prompt, (str, torch.Tensor)) and prompt and isinstance(prompt[0], Mapping):
                ids, dropped = fit_conversation(tok, prompt, context_length(m),
                                                default_reserve(max_new_tokens, context_length(m)))
            stream = generate_with_ethics_events(m, tok, ids, control=control, stop_token_ids=stop_token_ids,
                                                 **settings.__dict__)
        result = None
        for item in stream:
            if isinstance(item, TokenEvent):
                emit(item)
            else:
                result = item
        if session is None:
            result.dropped_turns = dropped
        return result

    return job
