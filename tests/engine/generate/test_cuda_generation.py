"""Monitored generation on a CUDA GPU: the cached-decoding attention (a view of the biased key
cache) once failed there with "cutlassF: no kernel found to launch" (bench/results/gpu)."""

from __future__ import annotations

import pytest
import torch

from kala_engine.generate.generation import generate_with_ethics
from kala_engine.model.modeling_kala import load_from_pythia

DEVICE = "cuda"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cached_monitored_generation_on_cuda_matches_recomputing(dtype, make_neox_dir):
    # head size 64, as Pythia's: the biased keys are 65 wide and the plain keys a strided view
    neox, folder = make_neox_dir("g", hidden_size=256, num_attention_heads=4, intermediate_size=512,
                                 max_position_embeddings=256)
    kala = load_from_pythia(folder).to(DEVICE, dtype).eval()
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, neox.config.vocab_size, (13,), generator=g)
    r = generate_with_ethics(kala, None, prompt, max_new_tokens=20, thresholds=0.0, stop_token_ids=())
    assert len(r.token_ids) == 20
    with torch.no_grad():  # one uncached pass over the whole text: the next-token choice and the scores
        full = kala(torch.tensor([prompt.tolist() + r.token_ids], device=DEVICE), use_cache=False)
    if dtype == torch.float32:  # 16-bit rounding may break a near-tie between two tokens
        assert int(full.logits[0, -2].argmax()) == r.token_ids[-1]
    torch.testing.assert_close(torch.tensor(r.token_scores[-1]), full.law_scores[0, -1].float().cpu(),
                               atol=2e-2, rtol=0)
