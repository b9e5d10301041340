"""Can this dataset train what a run claims? Checked before training starts.

Every record may be valid on its own (``kala data validate``) and the set still train nothing:

* **no LM tokens** - e.g. only ``harmful_completion`` rows (every part ``"lm": false``): the LM loss
  is 0.0 at every step and the model learns to write nothing. Refused.
* **no validation records while validation is on** (``eval_every > 0``): no validation metrics and
  no calibrated thresholds, silently. Refused, naming the two ways out.
* **a law with no signal** - no target under 0.5 for that law anywhere in the training split: its
  head only ever sees 1.0 and learns that nothing violates it. Trained anyway (a deliberate
  single-law set is legitimate) but warned about, and recorded in ``run.json`` (``warnings``).
* **no validation records with validation off**: warned (no calibrated thresholds) and recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kala_engine.constitution import NUM_LAWS, load_constitution
from kala_engine.data.schema import VIOLATION
from kala_engine.jobs import JobError


def lm_parts(records: Sequence[dict[str, Any]]) -> int:
    """How many parts of ``records`` get language-modeling loss."""
    return sum(1 for r in records for p in r["parts"] if p.get("lm") is True)


def laws_without_signal(records: Sequence[dict[str, Any]]) -> list[int]:
    """The laws no token target of ``records`` marks as violated (all targets >= 0.5)."""
    seen = [False] * NUM_LAWS
    for r in records:
        for p in r["parts"]:
            for k, x in enumerate(p["labels"]):
                if x < VIOLATION:
                    seen[k] = True
        if all(seen):
            break
    return [k for k in range(NUM_LAWS) if not seen[k]]


def check_training_data(train: Sequence[dict[str, Any]], validation: Sequence[dict[str, Any]], *,
                        data: str, eval_every: int, ethics_weight: float) -> list[str]:
    """Raise JobError for data that cannot train a run; return warnings for degenerate data."""
    if lm_parts(train) == 0:
        kinds = sorted({r["kind"] for r in train})
        raise JobError(
            f"{data}: no training record has a part with \"lm\": true (kinds here: {', '.join(kinds)}), so the "
            f"language model would learn nothing (LM loss 0.0 at every step); add records with replies to learn, "
            f"e.g. from `kala data generate`"
        )
    if not validation and eval_every > 0:
        raise JobError(
            f"{data}: no validation records (\"split\": \"validation\"), but validation is on (every "
            f"{eval_every} steps); mark some records as validation (`kala data generate` holds out about 12 % of "
            f"the template families), or set eval-every to 0 (--eval-every 0) to train without validation and "
            f"without calibrated thresholds"
        )
    warnings = []
    if not validation:
        warnings.append(f"{data}: no validation records: no validation metrics and no calibrated per-law "
                        f"thresholds (the constitution's defaults will be used)")
    silent = laws_without_signal(train)
    if silent and ethics_weight > 0:
        names = ", ".join(load_constitution()[k].title for k in silent)
        warnings.append(f"{data}: no training target marks {names} as violated (every target >= {VIOLATION}); "
                        f"{'that head' if len(silent) == 1 else 'those heads'} will learn that nothing violates "
                        f"{'it' if len(silent) == 1 else 'them'}")
    return warnings
