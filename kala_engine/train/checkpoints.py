"""Checkpoints of a run: the trained tensors, optimizer and RNG state, written atomically through
:class:`~kala_engine.train.run_folder.RunFolder`, restored exactly (a damaged one is skipped), and the
architecture check that makes a resume with other settings say what differs."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from kala_engine.jobs import Emit, JobError, LogLine
from kala_engine.train.run_folder import RunFolder


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: RunFolder, step: int, model, optimizer, position: dict, keep: int) -> Path:
    """checkpoints/step-N: the trained tensors, optimizer and RNG state (atomic, see RunFolder)."""
    from safetensors.torch import save_file

    with folder.writing_checkpoint(step, keep) as tmp:
        save_file(_trainable_state(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")
        meta = {"step": step, "position": position, "python_random": repr(random.getstate()), "time": time.time()}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder.checkpoint_dir(step)


def _read_checkpoint(d: Path, model) -> tuple[dict, dict, dict, dict]:
    """(meta, weights, optimizer state, rng state) of one checkpoint folder; raises on any damage."""
    from safetensors.torch import load_file

    meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
    weights = load_file(str(d / "model.safetensors"))
    opt_state = torch.load(d / "optimizer.pt", weights_only=True, map_location="cpu")
    rng = torch.load(d / "rng.pt", weights_only=True, map_location="cpu")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"weights missing for {missing[:3]}")
    return meta, weights, opt_state, rng


def load_checkpoint(folder: RunFolder, model, optimizer, emit: Emit) -> dict | None:
    """Restore the newest readable checkpoint; a corrupt one is reported and skipped."""
    import ast

    for _step, d in folder.checkpoint_dirs():
        try:
            meta, weights, opt_state, rng = _read_checkpoint(d, model)
        except Exception as e:  # noqa: BLE001 - any damage means: try the one before
            emit(LogLine(f"checkpoint {d.name} is unreadable ({type(e).__name__}: {e}); trying the one before it",
                         level="warning"))
            continue
        params = dict(model.named_parameters())
        wrong = [f"{n} is {tuple(t.shape)} in the checkpoint vs {tuple(params[n].shape)} now"
                 for n, t in weights.items() if n in params and tuple(t.shape) != tuple(params[n].shape)]
        if wrong:
            raise JobError(f"checkpoint {d.name} does not fit the model asked for: {'; '.join(wrong[:3])}"
                           f"{f' (and {len(wrong) - 3} more)' if len(wrong) > 3 else ''}. Resume with the "
                           f"run's own settings (the 'config' in its run.json) or start a new run elsewhere")
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t.to(params[n].device, params[n].dtype))
        optimizer.load_state_dict(opt_state)
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(ast.literal_eval(meta["python_random"]))
        emit(LogLine(f"resumed from checkpoint {d.name}"))
        return meta
    return None


#: model config fields that fix the shapes of the trained parameters (what a resume must match)
ARCH_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "ethics_hidden_size", "num_laws", "rotary_pct", "use_parallel_residual")


def architecture(model, lora_rank: int | None) -> dict:
    """What run.json records so that a resume can say what differs (not a size-mismatch traceback)."""
    conf = model.config
    arch = {k: getattr(conf, k) for k in ARCH_KEYS if hasattr(conf, k)}
    arch["lora_rank"] = lora_rank  # None: full fine-tune (no adapters)
    return arch


def check_resume_architecture(folder: RunFolder, arch: dict) -> None:
    """Refuse a resume whose model differs from the run's, naming every difference."""
    saved = folder.read_info().get("architecture")
    if not isinstance(saved, dict):
        return  # an older run: load_checkpoint compares the tensor shapes instead
    diffs = [f"{k} {saved[k]!r} in checkpoint vs {arch.get(k)!r} now" for k in saved
             if k in arch and saved[k] != arch[k]]
    if diffs:
        raise JobError(f"{folder.path}: cannot resume, the run has another architecture ({'; '.join(diffs)}). "
                       f"Resume with the run's own settings (the 'config' in {folder.run_file}) "
                       f"or start a new run in another folder")
