"""The one chat template, shared by the training data, the tokenizer and generation.

A conversation is rendered as::

    <|system|>text<|end|><|user|>text<|end|><|assistant|>text<|end|>...

and a prompt for the model ends with ``<|assistant|>``. The reply ends at ``<|end|>`` (or the
tokenizer's end-of-text token).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"

ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
#: Every special token the KALA tokenizers carry (added to a Pythia tokenizer when missing).
SPECIAL_TOKENS = [EOS, PAD, SYSTEM, USER, ASSISTANT, END]


def format_turn(role: str, text: str, close: bool = True) -> str:
    if role not in ROLE_TOKENS:
        raise ValueError(f"unknown chat role {role!r}; expected one of {sorted(ROLE_TOKENS)}")
    return ROLE_TOKENS[role] + text + (END if close else "")


def format_conversation(messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """Render ``[{"role": ..., "content": ...}, ...]``; end with ``<|assistant|>`` for generation."""
    out = "".join(format_turn(m["role"], m["content"]) for m in messages)
    return out + (ASSISTANT if add_generation_prompt else "")
