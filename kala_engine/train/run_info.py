"""What a run records about where it ran: package versions (run.json) and memory in use (metrics)."""

from __future__ import annotations

import platform

import torch


def versions() -> dict:
    import accelerate
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "accelerate": accelerate.__version__}
    try:
        from importlib.metadata import version

        out["kala-studio"] = version("kala-studio")
    except Exception:  # noqa: BLE001
        pass
    return out


def memory_mb() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, OSError):
        return 0.0
