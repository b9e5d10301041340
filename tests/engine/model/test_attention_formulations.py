"""The formulations bench/bench_attention_bias.py times are the same attention with the same
gradients (issue 19 item 3): the comparison is between equals, and the KALA model's own kernel
path (the 72-wide channel) is one of them."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from bench_attention_bias import formulations  # noqa: E402


def test_every_formulation_gives_the_same_attention_and_bias_gradient():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 16, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    b = (-3 * torch.rand(2, 3, 17, generator=g, dtype=torch.float64)).requires_grad_()
    scale = 16**-0.5
    # the definition: softmax(q.k * scale + b_j) over causal keys
    logits = q @ k.transpose(-1, -2) * scale + b[:, :, None, :]
    logits = logits.masked_fill(~torch.ones(17, 17, dtype=torch.bool).tril(), float("-inf"))
    want = torch.softmax(logits, -1) @ v
    (gb_want,) = torch.autograd.grad(want.square().sum(), b)
    fs = formulations(q, k, v, b, scale)
    for name, f in fs.items():
        if name.startswith("floor"):
            continue
        out = f()
        torch.testing.assert_close(out, want, atol=1e-10, rtol=1e-8, msg=name)
        (gb,) = torch.autograd.grad(out.square().sum(), b)
        torch.testing.assert_close(gb, gb_want, atol=1e-10, rtol=1e-8, msg=name)
