"""The dynamic-ethics-weight and per-layer flags that `kala train` and `kala distill` share
(TrainConfig's issue-18 block)."""

from __future__ import annotations

import argparse


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of layer numbers, e.g. 2,3") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of weights, e.g. 0.5,1,2") from None


def add_ethics_args(p: argparse.ArgumentParser) -> None:
    """Dynamic ethics weights and per-layer ethics tuning (TrainConfig's issue-18 block)."""
    from kala_engine.train.config import LAMBDA_SCHEDULES, LAW_WEIGHTINGS, TrainConfig

    d = TrainConfig.__dataclass_fields__
    g = p.add_argument_group("ethics weights and layers")
    g.add_argument("--lambda-schedule", choices=LAMBDA_SCHEDULES, default=d["lambda_schedule"].default,
                   help="how lambda (--ethics-weight) moves: constant, warmup (linear from 0), cosine (warm-up, then down)")
    g.add_argument("--lambda-warmup-steps", type=int, default=d["lambda_warmup_steps"].default)
    g.add_argument("--lambda-min-ratio", type=float, default=d["lambda_min_ratio"].default,
                   help="cosine: lambda ends at --ethics-weight times this")
    g.add_argument("--law-weighting", choices=LAW_WEIGHTINGS, default=d["law_weighting"].default,
                   help="per-law weights on top of the priorities: fixed, uncertainty (Kendall et al. 2018: "
                        "a law with a larger loss pulls less), validation (a law with a larger validation "
                        "error pulls more)")
    g.add_argument("--adaptive-bound", type=float, default=d["adaptive_bound"].default,
                   help="adaptive law weights stay within [1/B, B] times the priority")
    g.add_argument("--ethics-layers", type=_int_list, default=None,
                   help="layers whose constitutional parts train, e.g. 2,3 (default: all)")
    g.add_argument("--layer-supervision-weights", type=_float_list, default=None,
                   help="per-layer weights of the deep-supervision term, one per layer, e.g. 0,0,1,2")
    g.add_argument("--constitutional-only", action="store_true",
                   help="freeze the whole base: only the constitutional parts train")
