"""Training-step cost of KALA against the plain Hugging Face GPT-NeoX model, same run, as a curve
over the context length.

Both models get the same pythia-70m-shaped config (random weights: timing does not depend on
them) and the same batch; forward + backward (+ the ethics loss for KALA) are timed. Every
repetition runs GPT-NeoX, KALA and a second GPT-NeoX (an A/A control: its ratio to the first is
pure noise) back to back in a rotating order, so drift in the machine's speed hits all equally;
the lengths run one after the other, each row printed when measured. Per length it prints the median of the per-repetition ratios KALA /
GPT-NeoX with their spread (interquartile range, min-max) and the A/A control's - the noise a
ratio must beat to mean anything (goal: KALA <= 1.03 at every length).

    python bench/bench_train_step.py [--preset pythia-70m] [--batch 4] [--seqs 256,512,1024,2048]
                                     [--reps 7] [--threads 2] [--device cpu] [--json]

On ``--device cuda`` each step ends with a ``torch.cuda.synchronize()`` before the clock is read
(fp32 weights and math, as on the CPU).
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
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM  # noqa: E402

from kala_engine.model.modeling_kala import KALAForCausalLM, kala_config_from_gpt_neox  # noqa: E402
from kala_engine.model.presets import get_preset  # noqa: E402


def spread(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": round(statistics.median(xs), 3), "q1": round(q[0], 3), "q3": round(q[2], 3),
            "min": round(min(xs), 3), "max": round(max(xs), 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="pythia-70m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqs", default="256,512,1024,2048", help="context lengths, comma-separated")
    ap.add_argument("--seq", type=int, default=None, help="one length (the older form of --seqs)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seqs = [args.seq] if args.seq else [int(s) for s in args.seqs.split(",")]
    p = get_preset(args.preset)
    p = {k: v for k, v in p.items() if k not in ("name", "published_params")}
    p["max_position_embeddings"] = max(p.get("max_position_embeddings", 2048), max(seqs))
    torch.manual_seed(0)
    dev = torch.device(args.device)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(**p)).train().to(dev)
    twin = GPTNeoXForCausalLM(GPTNeoXConfig(**p)).train().to(dev)
    kala = KALAForCausalLM(kala_config_from_gpt_neox(neox.config)).train().to(dev)
    batches = {t: (torch.randint(0, p["vocab_size"], (args.batch, t), device=dev),
                   torch.rand(args.batch, t, 5, device=dev)) for t in seqs}

    def step(model, t):
        x, targets = batches[t]
        model.zero_grad(set_to_none=True)
        extra = {"law_targets": targets} if model is kala else {}
        model(x, labels=x, **extra).loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    models = [("gpt_neox", neox), ("kala", kala), ("gpt_neox_twin", twin)]
    for t in seqs[:1]:  # warm-up
        for _, m in models:
            step(m, t)
    times = {t: {n: [] for n, _ in models} for t in seqs}
    curve = []
    if not args.json:
        print(f"{args.preset} train step (fwd+bwd) on {args.device}, batch {args.batch}, {torch.get_num_threads()} threads, "
              f"{args.reps} interleaved repetitions; ratios: median [IQR] (min-max)")
        print(f"{'tokens':>7} {'NeoX ms':>9} {'KALA ms':>9}   KALA / NeoX                 A/A control (noise)")
    for t in seqs:  # one length at a time, its row printed as soon as it is measured
        for r in range(args.reps):
            order = models[r % 3:] + models[:r % 3]  # rotate: none always runs first
            for name, m in order:
                t0 = time.perf_counter()
                step(m, t)
                times[t][name].append(time.perf_counter() - t0)
        tt = times[t]
        ratio = [k / n for k, n in zip(tt["kala"], tt["gpt_neox"], strict=True)]
        aa = [w / n for w, n in zip(tt["gpt_neox_twin"], tt["gpt_neox"], strict=True)]
        c = {"seq": t, "gpt_neox_ms": round(statistics.median(tt["gpt_neox"]) * 1000, 1),
             "kala_ms": round(statistics.median(tt["kala"]) * 1000, 1), "ratio": spread(ratio), "aa_control": spread(aa)}
        curve.append(c)
        if not args.json:
            r, a = c["ratio"], c["aa_control"]
            print(f"{c['seq']:>7} {c['gpt_neox_ms']:>9.1f} {c['kala_ms']:>9.1f}   {r['median']:.3f} "
                  f"[{r['q1']:.3f}, {r['q3']:.3f}] ({r['min']:.2f}-{r['max']:.2f})   {a['median']:.3f} "
                  f"[{a['q1']:.3f}, {a['q3']:.3f}] ({a['min']:.2f}-{a['max']:.2f})", flush=True)
    result = {"preset": args.preset, "device": args.device, "batch": args.batch, "reps": args.reps, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "curve": curve}
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
