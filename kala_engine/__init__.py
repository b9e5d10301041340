"""KALA engine: the constitutional model, data, training, generation and evaluation (no Qt).

The original note's API works as written::

    from kala_engine import KALAForCausalLM, load_from_pythia

Importing the package is cheap (the desktop app imports it at start-up): torch and
transformers load on first use of a model name. "kala" is registered with AutoConfig /
AutoModelForCausalLM when the model module loads: at once here if transformers is already
imported, else right after transformers is imported (a one-shot import hook), so either import
order works.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_LAZY = {
    "KALAConfig": "model.modeling_kala",
    "KALAForCausalLM": "model.modeling_kala",
    "KALAModel": "model.modeling_kala",
    "load_from_pythia": "model.modeling_kala",
    "PythiaLoadError": "model.modeling_kala",
    "load_constitution": "constitution",
    "TrainConfig": "train.config",
    "train": "train.trainer",
    "generate_with_ethics": "generate.generation",
    "load_chat_model": "generate.generation",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'kala_engine' has no attribute {name!r}")


class _RegisterWithTransformers(importlib.abc.MetaPathFinder):
    """Makes "kala" known to transformers' Auto classes whenever transformers gets imported.

    A one-shot post-import hook: ``import kala_engine`` stays cheap (no torch, no transformers),
    and ``import kala_engine; from transformers import AutoModelForCausalLM`` still loads a saved
    KALA model, whatever the import order. When transformers finishes importing, the model module
    (which registers itself with AutoConfig / AutoModelForCausalLM) is imported right after it.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot; find the real spec with the other finders
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_transformers = spec.loader.exec_module

        def exec_module(module):
            exec_transformers(module)
            importlib.import_module(f"{__name__}.model.modeling_kala")

        spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:  # someone uses transformers: make "kala" known to its Auto classes
    from kala_engine.model import modeling_kala  # noqa: E402,F401
elif not any(isinstance(f, _RegisterWithTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTransformers())
