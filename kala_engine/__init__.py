"""KALA engine: the constitutional model, data, training, generation and evaluation (no Qt).

The original note's API works as written::

    from kala_engine import KALAForCausalLM, load_from_pythia

Importing the package is cheap (the desktop app imports it at start-up): torch and
transformers load on first use of a model name. "kala" is registered with AutoConfig /
AutoModelForCausalLM when the model module loads - at once here if transformers is already
imported, so ``from transformers import AutoModelForCausalLM; import kala_engine`` is enough.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"

_LAZY = {
    "KALAConfig": "modeling_kala",
    "KALAForCausalLM": "modeling_kala",
    "KALAModel": "modeling_kala",
    "load_from_pythia": "modeling_kala",
    "PythiaLoadError": "modeling_kala",
    "load_constitution": "constitution",
    "TrainConfig": "training",
    "train": "training",
    "generate_with_ethics": "generation",
    "load_chat_model": "generation",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'kala_engine' has no attribute {name!r}")


if "transformers" in sys.modules:  # someone uses transformers: make "kala" known to its Auto classes
    from . import modeling_kala  # noqa: E402,F401
