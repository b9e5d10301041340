"""Bench: the operations one cached decoding step issues, KALA against plain GPT-NeoX of the same shape.

    .venv/bin/python bench/bench_decode_ops.py [--preset pythia-160m] [--prompt-tokens 32] [--json]

At batch 1 on a GPU, decoding is bound by kernel launches, not arithmetic: each step's cost is
roughly its number of kernels. This counts, with the torch profiler on the CPU, the *leaf* aten
operations of one cached step (those that call no other aten op), leaving out views, reshapes and
allocations, which launch no kernel. It is a proxy, deterministic on any machine: a fused CUDA
kernel may cover more than one of these, and a CPU-only op (the bias copy of ``addmm``) is
counted on both sides. The GPU speed itself needs ``bench/bench_generation.py --device cuda``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_generation import build_models  # noqa: E402

#: aten ops that only describe or allocate memory (no kernel launch)
NO_KERNEL = {"as_strided", "view", "reshape", "_reshape_alias", "unsqueeze", "expand", "narrow", "slice", "select",
             "t", "transpose", "permute", "chunk", "split", "resolve_conj", "resolve_neg", "alias", "empty",
             "empty_strided", "to", "_unsafe_view", "detach", "lift_fresh", "item", "_local_scalar_dense",
             "is_nonzero", "squeeze", "contiguous"}


def step_ops(model, prompt: torch.Tensor, neox: bool) -> collections.Counter:
    """Leaf aten ops (kernel-launching ones) of one cached decoding step after ``prompt``."""
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        cache = getattr(out, "past_key_values", None) or out.cache
        kw = {"past_key_values": cache} if neox else {"cache": cache}
        model(torch.tensor([[5]]), use_cache=True, **kw)  # the first cached step warms any kept state
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(torch.tensor([[6]]), use_cache=True, **kw)
    return collections.Counter(e.name[6:] for e in prof.events()
                               if e.name.startswith("aten::") and not e.cpu_children and e.name[6:] not in NO_KERNEL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="pythia-160m")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        neox, kala = build_models(args.preset, Path(tmp), "cpu")
    prompt = torch.randint(0, 1000, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    a, b = step_ops(neox, prompt, neox=True), step_ops(kala, prompt, neox=False)
    res = {"preset": args.preset, "layers": kala.config.num_hidden_layers, "neox_ops": sum(a.values()),
           "kala_ops": sum(b.values()), "ratio": round(sum(b.values()) / sum(a.values()), 3),
           "kala_extra_by_op": {k: b[k] - a[k] for k in sorted(set(a) | set(b)) if b[k] != a[k]}}
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{args.preset} ({res['layers']} layers), one cached decoding step, leaf aten ops (kernel proxy):")
    print(f"  GPT-NeoX {res['neox_ops']}   KALA {res['kala_ops']}   KALA / GPT-NeoX {res['ratio']:.2f}")
    print("  KALA's extra ops: " + ", ".join(f"{k} {v:+d}" for k, v in res["kala_extra_by_op"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
