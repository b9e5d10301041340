"""What a run records about where it ran: package versions (run.json), memory in use and
the other wall-time numbers of a step's metrics line."""

from __future__ import annotations

import platform
import time

import torch


def step_timing(t0: float, tokens_seen: int, steps_done: int, steps_left: int) -> dict:
    """The wall-time end of a training step's metrics line (any method's): tokens/s and elapsed
    since ``t0`` (a ``time.perf_counter()``), the eta from the steps done and left, the memory."""
    elapsed = time.perf_counter() - t0
    return {"tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1), "elapsed": round(elapsed, 3),
            "eta": round(elapsed / steps_done * steps_left, 1), "memory_mb": memory_mb()}


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
