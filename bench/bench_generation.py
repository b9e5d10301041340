"""Bench: ethics-monitored KALA generation against plain GPT-NeoX ``generate()`` of the same weights.

    .venv/bin/python bench/bench_generation.py [--preset pythia-70m] [--new-tokens 256] [--reps 3]
                                               [--prompt-tokens 32] [--device cpu] [--json]

A random GPT-NeoX of the preset's shape (pythia-70m by default; nothing is downloaded) is saved
and loaded into KALA with ``load_from_pythia`` (gates at 0: the same logits). Three ways to
write the same greedy reply with a KV cache, interleaved in every repetition (the order rotates
so that none always runs first):

* ``neox.generate``   — ``GPTNeoXForCausalLM.generate()``, the baseline;
* ``kala.monitored``  — :func:`kala_engine.generate.generation.generate_with_ethics`: one TokenEvent per
  token with its five law scores copied to the host, the stop rule checked at every token;
* ``kala.generate``   — ``KALAForCausalLM.generate()`` (transformers' loop on the KALA model).

Every run writes exactly ``--new-tokens`` tokens: threshold 0 (never stops) and no end token.
The script checks that the monitored reply equals the baseline's tokens, prints tokens/s of
the fastest repetition (the one least disturbed by other processes on a shared machine) and of
the median one, and the ratios monitored / baseline (goal >= 0.90).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM  # noqa: E402

from kala_engine.generate.generation import generate_with_ethics  # noqa: E402
from kala_engine.model.modeling_kala import load_from_pythia  # noqa: E402
from kala_engine.model.presets import get_preset  # noqa: E402


def build_models(preset: str, folder: Path, device: str):
    cfg = {k: v for k, v in get_preset(preset).items() if k not in ("name", "published_params")}
    torch.manual_seed(0)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(**cfg)).eval()
    neox.save_pretrained(folder)
    kala = load_from_pythia(folder).eval()
    for m in (neox, kala):  # no end token: every run writes the full reply
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
    return neox.to(device), kala.to(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="pythia-70m")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    args = ap.parse_args(argv)
    n = args.new_tokens
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        neox, kala = build_models(args.preset, Path(tmp) / "neox", args.device)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, neox.config.vocab_size, (1, args.prompt_tokens), generator=g).to(args.device)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.inference_mode()
    def neox_generate(k=n):
        return neox.generate(prompt, max_new_tokens=k, do_sample=False, use_cache=True)[0, prompt.shape[1]:].tolist()

    def kala_monitored(k=n):
        r = generate_with_ethics(kala, None, prompt[0], max_new_tokens=k, thresholds=0.0, stop_token_ids=())
        return r.token_ids

    @torch.inference_mode()
    def kala_generate(k=n):
        return kala.generate(prompt, max_new_tokens=k, do_sample=False, use_cache=True)[0, prompt.shape[1]:].tolist()

    runs = {"neox.generate": neox_generate, "kala.monitored": kala_monitored, "kala.generate": kala_generate}
    outputs = {name: fn(8) for name, fn in runs.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            sync()
            t0 = time.perf_counter()
            outputs[name] = runs[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    for name, toks in outputs.items():
        if len(toks) != n:
            raise SystemExit(f"{name} wrote {len(toks)} tokens, expected {n}")
    same = outputs["kala.monitored"] == outputs["neox.generate"] == outputs["kala.generate"]

    best = {name: n / min(ts) for name, ts in times.items()}
    median = {name: n / statistics.median(ts) for name, ts in times.items()}
    ratio = best["kala.monitored"] / best["neox.generate"]
    report = {
        "preset": args.preset, "device": args.device, "threads": torch.get_num_threads(), "new_tokens": n,
        "prompt_tokens": args.prompt_tokens, "reps": args.reps, "same_tokens": same,
        "tokens_per_s_best": {k: round(v, 2) for k, v in best.items()},
        "tokens_per_s_median": {k: round(v, 2) for k, v in median.items()},
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "ratio_monitored_vs_neox": round(ratio, 3),
        "ratio_monitored_vs_neox_median": round(median["kala.monitored"] / median["neox.generate"], 3),
        "ratio_kala_generate_vs_neox": round(best["kala.generate"] / best["neox.generate"], 3),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.preset} on {args.device} ({torch.get_num_threads()} threads), greedy, KV cache, "
              f"{n} new tokens after {args.prompt_tokens}, {args.reps} interleaved repetitions")
        for name in runs:
            print(f"  {name:15s} best {best[name]:7.1f} tokens/s   median {median[name]:7.1f}   "
                  f"runs: {', '.join(f'{t:.2f}s' for t in times[name])}")
        print(f"  same tokens in all three: {same}")
        print(f"  ratio monitored / neox.generate = {ratio:.3f} best, "
              f"{report['ratio_monitored_vs_neox_median']:.3f} median (goal >= 0.90)")
        print(f"  ratio kala.generate / neox.generate = {report['ratio_kala_generate_vs_neox']:.3f} best")
    return 0


if __name__ == "__main__":
    sys.exit(main())
