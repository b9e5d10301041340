"""Training-step cost of KALA against the plain Hugging Face GPT-NeoX model, same run.

Both models get the same pythia-70m-shaped config (random weights: timing does not depend on
them) and the same batch; forward + backward (+ the ethics loss for KALA) are timed
alternately, so drift in the machine's speed hits both equally. Prints the median times and
the ratio KALA / GPT-NeoX (goal: <= 1.05).

    python bench/bench_train_step.py [--preset pythia-70m] [--batch 4] [--seq 256] [--reps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from kala_engine.model.modeling_kala import KALAForCausalLM, kala_config_from_gpt_neox
from kala_engine.model.presets import get_preset


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="pythia-70m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    p = get_preset(args.preset)
    p = {k: v for k, v in p.items() if k not in ("name", "published_params")}
    torch.manual_seed(0)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(**p)).train()
    kala = KALAForCausalLM(kala_config_from_gpt_neox(neox.config)).train()
    x = torch.randint(0, p["vocab_size"], (args.batch, args.seq))
    targets = torch.rand(args.batch, args.seq, 5)

    def step_neox():
        neox.zero_grad(set_to_none=True)
        neox(x, labels=x).loss.backward()

    def step_kala():
        kala.zero_grad(set_to_none=True)
        kala(x, labels=x, law_targets=targets).loss.backward()

    for f in (step_neox, step_kala):  # warm-up
        f()
    times = {"gpt_neox": [], "kala": []}
    for _ in range(args.reps):
        for name, f in (("gpt_neox", step_neox), ("kala", step_kala)):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "preset": args.preset, "batch": args.batch, "seq": args.seq, "reps": args.reps,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "gpt_neox_s": round(med["gpt_neox"], 4), "kala_s": round(med["kala"], 4),
        "ratio": round(med["kala"] / med["gpt_neox"], 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.preset} train step (fwd+bwd), batch {args.batch} x {args.seq} tokens, "
              f"{result['threads']} threads, median of {args.reps}:")
        print(f"  GPT-NeoX  {med['gpt_neox'] * 1000:8.1f} ms")
        print(f"  KALA      {med['kala'] * 1000:8.1f} ms")
        print(f"  ratio     {result['ratio']:.3f}  (goal <= 1.05)")
    return result


if __name__ == "__main__":
    main()
