"""Ethics-monitored generation: every token with its five law scores, and a stop that says why.

Reading order: settings and prompts, the decoding core (one prefill, then one token per step
over the KV cache), the streaming generator :func:`generate_with_ethics_events` and batched
evaluation :func:`generate_batch` (both on the one decode loop). The same stop rule inside
``model.generate()`` and the original note's API are in :mod:`kala_engine.generate.stopping`;
model loading, chat sessions and the app's job in :mod:`kala_engine.generate.session`.

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

import random
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from kala_engine.constitution import NUM_LAWS, model_thresholds, resolve_thresholds
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
    "Assessment", "Explanation", "GenerationResult", "GenerationSettings", "StopReason", "assess_prompt",
    "generate_batch", "generate_with_ethics", "generate_with_ethics_events", "IncrementalDetokenizer",
    "default_stop_ids", "encode_prompt", "context_length", "check_prompt_fits",
]

Prompt = str | Sequence[Mapping[str, str]] | Sequence[int] | torch.Tensor


# ----------------------------------------------------------------------------- settings


@dataclass
class GenerationSettings:
    """How a reply is sampled and monitored. ``temperature`` 0 = greedy."""

    max_new_tokens: int = 128
    #: None = the model's calibrated thresholds (``law_thresholds`` flag the prompt,
    #: ``reply_thresholds`` stop the reply), else the constitution's; one number for every law;
    #: or five numbers (an explicit value judges prompt and reply alike)
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


def check_prompt_fits(n: int, ctx: int) -> None:
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
    thr: tuple[float, ...]  # flags the prompt (its assessment)
    reply_thr: tuple[float, ...]  # stops the reply (the model's reply_thresholds when calibrated apart)
    ctx: int
    stop_ids: set[int]
    generator: torch.Generator | None
    seed: int | None
    control: JobControl | None

    @classmethod
    def of(cls, model, tokenizer, settings: GenerationSettings, stop_token_ids, control) -> _RunSettings:
        stop_ids = default_stop_ids(tokenizer, model) if stop_token_ids is None else {int(i) for i in stop_token_ids}
        gen, seed = _generator(settings.seed, _device(model), settings.temperature > 0)
        return cls(settings, resolve_thresholds(settings.thresholds, model_thresholds(model)),
                   resolve_thresholds(settings.thresholds, model_thresholds(model, reply=True)), context_length(model),
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
                stops[b] = ethics_stop(step, s, run.reply_thr)
                if stops[b] is not None:
                    explanations[b] = explain(s, layers[:, b].tolist(), run.reply_thr, subject="token", token_index=step)
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
    None (the model's calibrated ones - prompt and reply sets - else the constitution's), one
    number or five. ``stop_token_ids``: None = the chat
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
    check_prompt_fits(len(ids), run.ctx)
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
    check_prompt_fits(len(ids), context_length(model) + 1)
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
        check_prompt_fits(len(ids), run.ctx)
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
