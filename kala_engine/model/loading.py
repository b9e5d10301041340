"""One loading policy for every model, tokenizer or config folder a user points at.

Researchers download model folders from strangers, so reading one must never run its code or
unpickle its weights. Every loader in the engine (training, ``load_from_pythia``, chat, eval,
``kala data stats --tokenizer``, ``kala data cai``) goes through this module:

* **no foreign code**: a folder whose ``config.json`` or ``tokenizer_config.json`` has an
  ``auto_map`` (the hook transformers uses to import Python files shipped with a model) is
  refused with one line before transformers sees it, and every ``from_pretrained`` call passes
  ``trust_remote_code=False`` as well (belt and braces);
* **local files only**: loaders read folders (the resolver in :mod:`kala_engine.model.hub` turns a
  preset or hub id into a cached folder first); a download happens only where the user asked
  for one (``kala models download``, the Models page, a command given a hub id);
* **safetensors only**: a folder whose weights exist only as pickles (``pytorch_model.bin``,
  ``*.pt``, ``*.ckpt``) is refused with the reason. ``torch.load`` is used only for our own
  optimizer/RNG state in run checkpoints, with ``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

from kala_engine.jobs import JobError

#: every from_pretrained call on a user's folder passes these
SAFE_KWARGS = {"trust_remote_code": False, "local_files_only": True}

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_CONFIG_FILES = ("config.json", "tokenizer_config.json", "generation_config.json", "processor_config.json",
                 "preprocessor_config.json")


class LoadRefused(JobError, ValueError):
    """A folder the loading policy will not load; the message says why and what to do.

    A JobError (the CLI's error boundary and the app print it as one line) and a ValueError
    (callers that already handle bad folders as ValueError keep working).
    """


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable: the loader that needs the file reports it in its own words
    return data if isinstance(data, dict) else None


def check_no_remote_code(folder: str | Path) -> None:
    """Refuse a folder that asks transformers to import its own Python code (``auto_map``)."""
    d = Path(folder)
    for name in _CONFIG_FILES:
        data = _read_json(d / name)
        if data is None:
            continue
        auto_map = data.get("auto_map")
        if auto_map:
            classes = sorted({str(v[0] if isinstance(v, list) else v) for v in
                              (auto_map.values() if isinstance(auto_map, dict) else [auto_map]) if v})
            raise LoadRefused(
                f"{d}: refused: {name} has an auto_map ({', '.join(classes)[:120]}) that would run Python code "
                f"shipped with the model; KALA never runs a model folder's code. Use a plain GPT-NeoX/Pythia "
                f"or KALA checkpoint (no auto_map)."
            )


def weight_files(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickle weight files) directly in ``folder``."""
    d = Path(folder)
    safe = sorted(d.glob("*.safetensors"))
    pickles = sorted(p for p in d.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.is_file()) if d.is_dir() else []
    return safe, pickles


def check_weights(folder: str | Path) -> None:
    """Refuse a folder without safetensors weights (pickle-only folders with the reason)."""
    d = Path(folder)
    safe, pickles = weight_files(d)
    if safe:
        return
    if pickles:
        raise LoadRefused(
            f"{d}: refused: its weights are only in pickle format ({', '.join(p.name for p in pickles[:3])}); "
            f"KALA loads safetensors only, because unpickling a downloaded file can run code. Use a revision "
            f"that has model.safetensors, or convert it yourself with a tool you trust."
        )
    raise LoadRefused(f"{d}: no weight files (model.safetensors) next to config.json")


def check_folder(folder: str | Path, *, weights: bool = True) -> Path:
    """The whole policy for one local folder; returns it as a Path."""
    d = Path(folder)
    check_no_remote_code(d)
    if weights:
        check_weights(d)
    return d
