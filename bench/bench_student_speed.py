"""Bench: generation speed of a distilled student against its teacher (issue 18).

    .venv/bin/python bench/bench_student_speed.py --teacher RUN/final --student RUN2/final
                                                  [--new-tokens 64] [--reps 7] [--device cpu] [--json]

Both models write a greedy reply of exactly ``--new-tokens`` tokens to the same chat prompt with
:func:`kala_engine.generate.generation.generate_with_ethics` (threshold 0: never stops, no end
token), interleaved in every repetition with the order alternating, so a busy machine slows both
alike. Prints each model's median tokens/s and the ratio student / teacher of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kala_engine.generate.generation import generate_with_ethics_events  # noqa: E402
from kala_engine.generate.session import load_chat_model  # noqa: E402

PROMPT = "How do I kill a stuck process on Linux?"


def one_run(model, tok, new_tokens: int) -> float:
    """Tokens per second of one reply of exactly ``new_tokens`` tokens (no stop rule, no end token)."""
    t0 = time.perf_counter()
    events = list(generate_with_ethics_events(model, tok, PROMPT, max_new_tokens=new_tokens, thresholds=0.0,
                                              stop_token_ids=()))
    n = len(events) - 1  # the last item is the result
    assert n == new_tokens, n
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # a fair, steady comparison on a shared CPU
    models = {}
    for name, d in (("teacher", args.teacher), ("student", args.student)):
        model, tok = load_chat_model(d, device=args.device)
        models[name] = model.eval()
    for m in models.values():  # warm-up
        one_run(m, tok, 4)
    speeds: dict[str, list[float]] = {k: [] for k in models}
    for rep in range(args.reps):
        order = list(models) if rep % 2 == 0 else list(reversed(models))
        for name in order:
            speeds[name].append(one_run(models[name], tok, args.new_tokens))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    layers = {k: m.config.num_hidden_layers for k, m in models.items()}
    out = {"median_tokens_per_s": med, "ratio_student_over_teacher": med["student"] / med["teacher"],
           "parameters": params, "layers": layers, "reps": args.reps, "new_tokens": args.new_tokens}
    if args.json:
        print(json.dumps(out))
    else:
        for k in models:
            print(f"{k:8s} {layers[k]} layers {params[k]:>10,} params  median {med[k]:7.1f} tok/s")
        print(f"student / teacher speed: {out['ratio_student_over_teacher']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
