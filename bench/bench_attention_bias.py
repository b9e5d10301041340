"""Which formulation of the constitutional per-key bias keeps attention flat at long context?

Attention alone (forward + backward, pythia-70m's heads: 8 x 64, batch 4), every formulation
of ``softmax(q.k / sqrt(hs) + b_j)`` with a trainable per-key, per-head bias ``b`` (the gate
needs its gradient) against plain causal attention without a bias - the floor. Interleaved in a
rotating order in every repetition; per length the median ratio to the floor and its IQR:

* ``channel-72`` - what KALA does: ``[q, 1] . [k, b / scale]``, the head padded 65 -> 72 so the
  fused causal kernel takes it (every tensor of the kernel 12.5 % wider);
* ``channel-65`` - the same without padding;
* ``mask`` - the bias as an additive attention mask (causal + bias materialised, B x nh x T x S:
  the kernel keeps the head dim, the mask costs memory traffic quadratic in T);
* ``value-weight`` - softmax(s + b) = softmax(s) * e^b renormalised: values [v e^b, e^b], q and k
  at the head dim (the values one channel wider: the fused kernels want equal head dims).

    python bench/bench_attention_bias.py [--seqs 256,512,1024,2048] [--reps 5] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def formulations(q, k, v, b, scale):
    hs = q.shape[-1]

    def channel(width):
        def f():
            pad = width - hs - 1
            qq = F.pad(torch.cat((q, torch.ones_like(q[..., :1])), -1), (0, pad))
            kk = F.pad(torch.cat((k, (b / scale).unsqueeze(-1)), -1), (0, pad))
            return F.scaled_dot_product_attention(qq, kk, F.pad(v, (0, pad + 1)), is_causal=True, scale=scale)[..., :hs]
        return f

    def mask():
        T = q.shape[2]
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=b[:, :, None, :].masked_fill(~causal, float("-inf")),
                                              scale=scale)

    def value_weight():
        w = b.exp().unsqueeze(-1)
        o = F.scaled_dot_product_attention(q, k, torch.cat((v * w, w), -1), is_causal=True, scale=scale)
        return o[..., :hs] / o[..., hs:]

    return {"floor (no bias)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale),
            "channel-72": channel(72), "channel-65": channel(65), "mask": mask, "value-weight": value_weight}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="256,512,1024,2048")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = []
    for t in (int(s) for s in args.seqs.split(",")):
        g = torch.Generator().manual_seed(t)
        shape = (args.batch, args.heads, t, args.head_size)
        q, k, v = (torch.randn(shape, generator=g).requires_grad_() for _ in range(3))
        b = (torch.rand(args.batch, args.heads, t, generator=g) - 1).requires_grad_()
        fs = formulations(q, k, v, b, args.head_size**-0.5)
        ref = fs["channel-72"]()
        for name, f in fs.items():  # every formulation computes the same attention
            if name != "floor (no bias)":
                torch.testing.assert_close(f(), ref, atol=2e-4, rtol=1e-3)
        items = list(fs.items())
        for _, f in items:
            f().sum().backward()
        times = {n: [] for n in fs}
        for r in range(args.reps):
            for name, f in items[r % len(items):] + items[:r % len(items)]:
                t0 = time.perf_counter()
                f().sum().backward()
                times[name].append(time.perf_counter() - t0)
        floor = times["floor (no bias)"]
        row = {"seq": t, "floor_ms": round(statistics.median(floor) * 1000, 1)}
        for name in fs:
            rs = [x / y for x, y in zip(times[name], floor, strict=True)]
            qs = statistics.quantiles(rs, n=4) if len(rs) > 1 else [rs[0]] * 3
            row[name] = {"median": round(statistics.median(rs), 3), "q1": round(qs[0], 3), "q3": round(qs[2], 3)}
        out.append(row)
        if not args.json:
            print(f"{t:>5} tokens, floor {row['floor_ms']:.1f} ms: " + "  ".join(
                f"{n} {row[n]['median']:.2f} [{row[n]['q1']:.2f}, {row[n]['q3']:.2f}]" for n in fs if "floor" not in n),
                flush=True)
    result = {"threads": torch.get_num_threads(), "batch": args.batch, "heads": args.heads, "reps": args.reps,
              "curve": out}
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
