"""A run folder with illustrative (made-up) curves, for app tests only.

Moved out of the shipped ``kala_app/screenshots.py`` (issue 14, item 7): the app never writes
curves it did not measure. Written through the engine's ``RunFolder``, so the layout is the real one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from kala_engine.train.run_folder import VALIDATION, RunFolder


def write_synthetic_run(run_dir: Path, data: Path, steps: int = 400) -> RunFolder:
    """A finished-looking kala-tiny run of ``steps`` steps with smooth, noisy, decreasing losses."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run_dir)
    folder.write_info({"config": {
        "base": "kala-tiny", "data": str(data), "max_steps": steps, "batch_size": 8,
        "learning_rate": 1e-3, "ethics_weight": 1.0}})
    lines = []
    for s in range(1, steps + 1):
        noise = 0.08 * math.sin(s * 1.7) + 0.05 * math.cos(s * 0.31)
        m = {"step": s, "epoch": s / 200, "lm_loss": 2.1 + 6.2 * math.exp(-s / 60) + noise,
             "ethics_loss": 0.03 + 0.22 * math.exp(-s / 90) + noise / 8,
             "lr": 1e-3 * min(1.0, s / 20) * (0.5 + 0.5 * math.cos(math.pi * s / steps)),
             "tokens_per_s": 5200.0, "elapsed": s * 0.4}
        for k in range(5):
            m[f"law_loss_{k}"] = (0.012 + 0.004 * k) + (0.05 + 0.01 * k) * math.exp(-s / (70 + 15 * k)) + noise / 40
        lines.append(m)
        if s % 50 == 0:
            lines.append({"step": s, "split": VALIDATION, "lm_loss": m["lm_loss"] + 0.15,
                          "ethics_loss": m["ethics_loss"] + 0.01})
    with open(folder.metrics_file, "w", encoding="utf-8") as f:  # one write: a test helper needs no fsync per line
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    folder.final_dir.mkdir(exist_ok=True)
    return folder
