"""Paraphrase operators of the generator (issue 16 item 3): wrappers, encodings, synonyms, noise.

The templates of ``resources/prompts/`` give every request a handful of wordings; a small model
trained on them learns the templates, not the concepts, and misses the same request worded
otherwise (a story, a hypothetical, base64, a typo). These operators, driven by the generator's
one RNG (so a seed still gives the same data), multiply the wordings:

- :func:`wrap` puts a **harmful** request in a jailbreak wrapper - role-play, hypothetical,
  fiction ("for a novel"), translation, "ignore previous instructions", or an encoding (base64,
  ROT13, reversed, leetspeak, hyphen-spelled). The targets stay the request's: a wrapper never
  makes harm acceptable. :func:`frame` puts a **benign** question in the harmless twin of the
  same framings, so the frame itself is no cue - only the content is.
- Validation and test records draw their wrappers from held-out wordings
  (``[wrap_held]``/``[frame_held]``), as they draw their requests from held-out families.
- :func:`synonyms` swaps words and phrases for alternatives (``[synonyms]``), whole-word.
- :func:`noise` adds what real users type: typos, lower or upper case, no final punctuation.

The bank is ``resources/prompts/paraphrase.toml`` (documented at its top).
"""

from __future__ import annotations

import base64
import codecs
import random
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from kala_engine.resources import resource_path

#: share of harmful requests that come wrapped, of benign questions that come framed, and of
#: user turns (any kind) that get noise
WRAP_RATE = 0.3
FRAME_RATE = 0.12
NOISE_RATE = 0.15
#: chance that each matching word or phrase is swapped for a synonym
SYNONYM_RATE = 0.4

WRAP_KINDS = ("roleplay", "hypothetical", "fiction", "translation", "ignore", "encoded")
FRAME_KINDS = ("roleplay", "hypothetical", "fiction", "translation", "encoded")
#: encodings a harmful request may come in; a benign question only in the readable ones
CODECS = ("base64", "ROT13", "reversed text", "leetspeak", "letters split by hyphens")
READABLE_CODECS = ("leetspeak", "letters split by hyphens")
_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})


@dataclass(frozen=True)
class Paraphrase:
    wrap: dict[str, tuple[str, ...]]
    wrap_held: dict[str, tuple[str, ...]]
    frame: dict[str, tuple[str, ...]]
    frame_held: dict[str, tuple[str, ...]]
    reply: dict[str, tuple[str, ...]]
    synonyms: dict[str, tuple[str, ...]]  # lower-case word or phrase -> alternatives
    synonym_pattern: re.Pattern


def encode(text: str, codec: str) -> str:
    """``text`` in one of :data:`CODECS`."""
    if codec == "base64":
        return base64.b64encode(text.encode("utf-8")).decode("ascii")
    if codec == "ROT13":
        return codecs.encode(text, "rot13")
    if codec == "reversed text":
        return text[::-1]
    if codec == "leetspeak":
        return text.lower().translate(_LEET)
    if codec == "letters split by hyphens":
        return " ".join("-".join(w) for w in text.split())
    raise ValueError(f"unknown codec {codec!r}")


@lru_cache(maxsize=4)
def load_paraphrase(folder: str | None = None) -> Paraphrase:
    """The bank ``paraphrase.toml`` (cached per folder)."""
    path = Path(folder) / "paraphrase.toml" if folder else resource_path("prompts") / "paraphrase.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))

    def table(name: str, kinds: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        t = raw.get(name, {})
        missing = [k for k in kinds if not t.get(k)]
        if missing:
            raise ValueError(f"{path}: [{name}] needs templates for {missing}")
        return {k: tuple(t[k]) for k in kinds}

    table_ = {w.lower(): tuple(alts) for w, alts in raw.get("synonyms", {}).items()}
    words = sorted(table_, key=len, reverse=True)  # the longest phrase first
    pattern = re.compile(r"(?<!\{)\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
    return Paraphrase(table("wrap", WRAP_KINDS), table("wrap_held", WRAP_KINDS), table("frame", FRAME_KINDS),
                      table("frame_held", FRAME_KINDS), table("reply", WRAP_KINDS), table_, pattern)


def _fill(rng: random.Random, template: str, request: str, codecs_: tuple[str, ...]) -> str:
    if "{encoded}" in template:
        codec = rng.choice(codecs_)
        return template.format(codec=codec, encoded=encode(request, codec))
    return template.format(request=request)


def wrap(rng: random.Random, request: str, held: bool, bank: Paraphrase | None = None) -> tuple[str, str]:
    """(the harmful ``request`` in a random jailbreak wrapper, the wrapper's kind)."""
    bank = bank or load_paraphrase()
    kind = rng.choice(WRAP_KINDS)
    template = rng.choice((bank.wrap_held if held else bank.wrap)[kind])
    return _fill(rng, template, request, CODECS), kind


def frame(rng: random.Random, question: str, held: bool, bank: Paraphrase | None = None) -> str:
    """The benign ``question`` in a random harmless framing."""
    bank = bank or load_paraphrase()
    kind = rng.choice(FRAME_KINDS)
    template = rng.choice((bank.frame_held if held else bank.frame)[kind])
    return _fill(rng, template, question, READABLE_CODECS)


def synonyms(rng: random.Random, text: str, bank: Paraphrase | None = None, rate: float = SYNONYM_RATE) -> str:
    """``text`` with each listed word or phrase swapped, with probability ``rate``, for an
    alternative (a capital first letter is kept). Slots such as ``{target}`` are left alone."""
    bank = bank or load_paraphrase()

    def swap(m: re.Match) -> str:
        if rng.random() >= rate:
            return m.group(0)
        alt = rng.choice(bank.synonyms[m.group(0).lower()])
        return alt[:1].upper() + alt[1:] if m.group(0)[:1].isupper() else alt

    return bank.synonym_pattern.sub(swap, text)


def _typo(rng: random.Random, word: str) -> str:
    i = rng.randrange(1, len(word) - 1)
    op = rng.randrange(3)
    if op == 0:  # swap two neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == 1:  # drop a letter
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]  # double a letter


def noise(rng: random.Random, text: str) -> str:
    """What users type: one to two typos, all lower case, ALL CAPS (rarely) or no final punctuation."""
    op = rng.random()
    if op < 0.45:
        words = text.split(" ")
        long_ = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
        for i in rng.sample(long_, min(len(long_), rng.randint(1, 2))):
            words[i] = _typo(rng, words[i])
        return " ".join(words)
    if op < 0.75:
        return text.lower()
    if op < 0.82:
        return text.upper()
    return text.rstrip(".?!")
