"""Loading a chat model, chat sessions that fit a conversation into the context, and the job the
app's worker runs for one reply (its own model cache)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kala_engine.generate.generation import (
    GenerationResult,
    GenerationSettings,
    Prompt,
    check_prompt_fits,
    context_length,
    encode_prompt,
    generate_with_ethics_events,
)
from kala_engine.jobs import Emit, JobControl, LogLine, TokenEvent

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
        if dtype is None and torch.device(device).type == "cpu":
            dtype = torch.float32  # the CPU computes in fp32 (an NF4 run saves in its 16-bit compute dtype)
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
            check_prompt_fits(len(ids), context)  # raises when it alone fills the context
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
    release_cached_models()  # one model at a time, the old one gone first: a 16 GB card holds one
    model, tokenizer = load_chat_model(p, device=device)
    _LOADED[key] = (stamp, model, tokenizer)
    return model, tokenizer


def release_cached_models() -> None:
    """Forget the model kept for the next reply and hand its GPU memory back (the app calls this
    before a training run, which needs the card)."""
    _LOADED.clear()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def chat_device(device: str = "auto") -> str:
    """Where a chat runs: ``auto`` is the GPU when this PyTorch has kernels for it (the doctor's
    check: a P100 under a build without sm_60 chats on the CPU), else the CPU; anything else as given."""
    if device != "auto":
        return device
    return "cuda" if _runs_cuda() else "cpu"


@functools.cache
def _runs_cuda() -> bool:
    """The doctor's probe, once per process (a reply does not probe the hardware again)."""
    from kala_engine.doctor import probe_device

    return probe_device("auto").runs_cuda


def _load_for_chat(model_dir: str | Path, device: str, emit: Emit):
    """The chat model on ``device`` ("auto": :func:`chat_device`); a model too big for the GPU's
    free memory chats on the CPU instead, with a warning."""
    where = chat_device(device)
    try:
        return _cached_load(model_dir, where)
    except torch.OutOfMemoryError:
        if device != "auto" or where == "cpu":
            raise
        release_cached_models()
        emit(LogLine("the model does not fit the GPU's free memory: this chat runs on the CPU", level="warning"))
        return _cached_load(model_dir, "cpu")


def chat_job(
    model: Any,
    tokenizer: Any = None,
    prompt: str | Sequence[Mapping[str, str]] | None = None,
    *,
    session: ChatSession | None = None,
    model_dir: str | Path | None = None,
    device: str = "auto",
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
    with :func:`load_chat_model` on ``device`` - "auto": the GPU when usable, :func:`chat_device` -
    and kept for the next job on the same folder; ``model_dir`` is an alias). ``prompt`` is a user message, or the whole conversation as chat messages: it is
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
            m, tok = (model, tokenizer) if model is not None else _load_for_chat(model_dir, device, emit)
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
