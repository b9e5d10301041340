"""Tokenizers for KALA: a byte-level BPE trained on the generated data (``kala-tiny``), or a
Pythia (GPT-NeoX) tokenizer with the chat special tokens added.

Either way the chat special tokens of :mod:`kala_engine.data.chat_format` are single ids that are never
split or merged, ``eos`` is ``chat.EOS`` and ``pad`` is ``chat.PAD``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kala_engine.data import chat_format as chat

#: The chat tokens besides eos/pad (role markers and the end-of-turn marker).
CHAT_TOKENS = [t for t in chat.SPECIAL_TOKENS if t not in (chat.EOS, chat.PAD)]


def record_texts(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Every distinct part text of some records (what a tokenizer is trained on)."""
    seen: set[str] = set()
    for r in records:
        for p in r["parts"]:
            if p["text"] not in seen:
                seen.add(p["text"])
                yield p["text"]


def train_tokenizer(texts: Iterable[str], out_dir: str | Path | None = None, vocab_size: int = 4096):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    The special tokens (``chat.SPECIAL_TOKENS``) take the first ids; every byte is in the
    alphabet, so any text encodes. When ``out_dir`` is given, the tokenizer is saved there
    (``save_pretrained``) and can be reloaded with :func:`load_tokenizer`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    min_vocab = len(chat.SPECIAL_TOKENS) + 256
    if not isinstance(vocab_size, int) or vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be an integer >= {min_vocab} (256 bytes + special tokens), got {vocab_size!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(chat.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=chat.EOS,
        bos_token=chat.EOS,
        unk_token=chat.EOS,
        pad_token=chat.PAD,
        additional_special_tokens=CHAT_TOKENS,
    )
    fast.model_max_length = 2048
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out))
    return fast


def prepare_tokenizer(tokenizer):
    """Make any tokenizer (e.g. Pythia's) KALA-ready, in place, and return it.

    Adds the chat special tokens that are missing (as special tokens: never split), makes
    ``chat.EOS`` the eos token when the vocabulary has it (Pythia's does) or adds it, and sets
    the pad token to ``chat.PAD``. Afterwards ``len(tokenizer)`` is the embedding size the model
    needs (``model.resize_token_embeddings(len(tokenizer))``).
    """
    vocab = tokenizer.get_vocab()
    special: dict[str, Any] = {}
    if tokenizer.eos_token != chat.EOS:
        special["eos_token"] = chat.EOS
    if tokenizer.pad_token != chat.PAD:
        special["pad_token"] = chat.PAD
    existing = [str(t) for t in getattr(tokenizer, "additional_special_tokens", None) or []]
    missing = [t for t in CHAT_TOKENS if t not in existing or t not in vocab]
    if missing:
        special["additional_special_tokens"] = existing + [t for t in missing if t not in existing]
    if special:
        tokenizer.add_special_tokens(special)
    for t in chat.SPECIAL_TOKENS:  # every chat token must now be one id
        ids = tokenizer.encode(t, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"tokenizer still splits {t!r} into {ids}; cannot use it for KALA chat")
    return tokenizer


def load_tokenizer(directory: str | Path):
    """Load a tokenizer saved with ``save_pretrained`` and make sure it carries the chat tokens.

    Raises FileNotFoundError naming the folder when no tokenizer is there, and
    :class:`~kala_engine.model.loading.LoadRefused` for a folder that would run its own code.
    """
    from transformers import AutoTokenizer

    from kala_engine.model.loading import (  # trust_remote_code=False, local files only
        SAFE_KWARGS,
        check_no_remote_code,
    )

    d = Path(directory)
    if not (d / "tokenizer.json").is_file() and not (d / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"{d}: no tokenizer here (tokenizer.json missing); train one with train_tokenizer(..., out_dir) "
            "or point to a model folder"
        )
    check_no_remote_code(d)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(d), **SAFE_KWARGS))
