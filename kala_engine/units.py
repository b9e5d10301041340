"""How sizes and durations read, for the CLI and the app alike (no torch, no Qt)."""

from __future__ import annotations

import math


def format_bytes(n: float | None, missing: str = "–") -> str:
    """1.5 GB, 311.6 MB, 12.0 KB, 512 B (binary units); ``missing`` for None."""
    if n is None:
        return missing
    for unit, div in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def format_duration(seconds: float | None, missing: str = "–") -> str:
    """A clock-style duration: 0:16, 12:04, 1:02:03; ``missing`` for None, NaN or negative."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return missing
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
