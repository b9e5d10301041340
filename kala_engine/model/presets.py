"""Model-size presets, parameter counts and memory estimates - all arithmetic, nothing allocated.

Pythia numbers come from the published configs of EleutherAI/pythia-* on the Hugging Face hub
(config.json of each size; Biderman et al. 2023, "Pythia", Table 1). All Pythia sizes use
partial rotary (rotary_pct 0.25), parallel residual, untied input/output embeddings and a
2048-token context; the vocabulary is padded differently per size (6.9b: 50432, 12b: 50688).
"""

from __future__ import annotations

from dataclasses import dataclass

PYTHIA_COMMON = dict(
    rotary_pct=0.25,
    rotary_emb_base=10000,
    use_parallel_residual=True,
    tie_word_embeddings=False,
    max_position_embeddings=2048,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=0,
)

PRESETS: list[dict] = [
    # kala-tiny: our embedded default, trained from scratch on the generated data with a 4096-token
    # BPE tokenizer. Pythia-shaped (partial rotary, parallel residual, untied) but small enough
    # to train to a usable chat on a laptop CPU in minutes. (hidden_dropout 0.1 was measured for
    # issue 16: the same safety figures within seed noise, the demo 590 s instead of 442 s.)
    dict(name="kala-tiny", hidden_size=192, num_hidden_layers=4, num_attention_heads=6,
         intermediate_size=768, vocab_size=4096, max_position_embeddings=256, published_params=None),
    # EleutherAI/pythia-70m config.json
    dict(name="pythia-70m", hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
         intermediate_size=2048, vocab_size=50304, published_params=70_426_624),
    # EleutherAI/pythia-160m config.json
    dict(name="pythia-160m", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
         intermediate_size=3072, vocab_size=50304, published_params=162_322_944),
    # EleutherAI/pythia-410m config.json
    dict(name="pythia-410m", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
         intermediate_size=4096, vocab_size=50304, published_params=405_334_016),
    # EleutherAI/pythia-1b config.json
    dict(name="pythia-1b", hidden_size=2048, num_hidden_layers=16, num_attention_heads=8,
         intermediate_size=8192, vocab_size=50304, published_params=1_011_781_632),
    # EleutherAI/pythia-1.4b config.json
    dict(name="pythia-1.4b", hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
         intermediate_size=8192, vocab_size=50304, published_params=1_414_647_808),
    # EleutherAI/pythia-2.8b config.json
    dict(name="pythia-2.8b", hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
         intermediate_size=10240, vocab_size=50304, published_params=2_775_208_960),
    # EleutherAI/pythia-6.9b config.json (vocab padded to 50432)
    dict(name="pythia-6.9b", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
         intermediate_size=16384, vocab_size=50432, published_params=6_857_302_016),
    # EleutherAI/pythia-12b config.json (vocab padded to 50688)
    dict(name="pythia-12b", hidden_size=5120, num_hidden_layers=36, num_attention_heads=40,
         intermediate_size=20480, vocab_size=50688, published_params=11_846_072_320),
]

PRESET_NAMES = [p["name"] for p in PRESETS]


def get_preset(name: str) -> dict:
    for p in PRESETS:
        if p["name"] == name:
            return {**PYTHIA_COMMON, **p}
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)} or pass a local folder")


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True)
class ParamCount:
    base: int  # the GPT-NeoX parameters
    constitutional: int  # what KALA adds

    @property
    def total(self) -> int:
        return self.base + self.constitutional

    @property
    def added_fraction(self) -> float:
        return self.constitutional / self.base


def _shape(cfg) -> dict:
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    h = get("hidden_size")
    return dict(
        h=h, L=get("num_hidden_layers"), nh=get("num_attention_heads"), ff=get("intermediate_size"),
        V=get("vocab_size"), tied=bool(get("tie_word_embeddings", False)), bias=bool(get("attention_bias", True)),
        r=int(get("ethics_hidden_size", 0) or min(256, max(32, h // 8))), K=int(get("num_laws", 5) or 5),
    )


def count_parameters(cfg) -> ParamCount:
    """Parameters of a config (dict, KALAConfig/GPTNeoXConfig or preset name), by arithmetic."""
    s = _shape(cfg)
    h, L, ff, V, r, K, nh = s["h"], s["L"], s["ff"], s["V"], s["r"], s["K"], s["nh"]
    attn = 3 * h * h + h * h + (4 * h if s["bias"] else 0)
    mlp = 2 * h * ff + ff + h
    norms = 4 * h
    layer = attn + mlp + norms
    base = L * layer + 2 * h + V * h * (1 if s["tied"] else 2)
    head = h * r + r + r * K + K  # value head
    monitor = head + 2 * h  # + its LayerNorm
    constitutional = L * (head + monitor + nh) + K * L
    return ParamCount(base=base, constitutional=constitutional)


# --------------------------------------------------------------------------- memory

GiB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to train (or run) a config under a plan; parts add up to ``total``."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def as_gib(self) -> dict:
        return {k: round(getattr(self, k) / GiB, 2) for k in
                ("weights", "gradients", "optimizer", "activations", "overhead", "total")}


def lora_parameters(cfg, rank: int = 16) -> int:
    """LoRA on the four projections of every layer (query_key_value, dense, dense_h_to_4h,
    dense_4h_to_h: kala_engine.train.model_setup.apply_lora)."""
    s = _shape(cfg)
    h, L, ff = s["h"], s["L"], s["ff"]
    return L * rank * ((h + 3 * h) + (h + h) + (h + ff) + (ff + h))


#: what a CUDA process holds before its first tensor (1.03 GiB measured on an H200 with CUDA 13,
#: bench/results/gpu; older GPUs and CUDA releases take less): a conservative 1.1 GiB
CUDA_CONTEXT = int(1.1 * GiB)
#: the caching allocator's reserve over the allocated peak: 4-15 % in the seven GPU runs measured
ALLOCATOR_SLACK = 0.15
#: bytes kept for the backward pass per token and hidden unit of one layer (no checkpointing),
#: fitted to the measured peaks (bench/results/gpu): 16-bit activations of a full fine-tune (about
#: Korthikanti et al.'s 34 without the attention matrix, which the fused SDPA kernels never store),
#: and NF4 + LoRA, whose prepared model runs its residual stream and norms in fp32 (56-62 measured)
LAYER_BYTES = {"fp16": 34, "bf16": 34, "nf4-lora": 64}


def estimate_memory(cfg, mode: str = "fp32", batch_size: int = 1, seq_len: int = 512,
                    gradient_checkpointing: bool = False, lora_rank: int = 16,
                    training: bool = True) -> MemoryEstimate:
    """Training memory for ``mode`` in {"fp32", "fp16", "bf16", "nf4-lora"} with AdamW.

    fp32: fp32 weights, grads and two Adam moments (16 B/param). fp16/bf16: mixed precision with
    fp32 master weights (16 B/param) plus autocast's 16-bit copy of the weights (2 B/param).
    nf4-lora: the base frozen in 4-bit NF4 (~0.53 B/param incl. quantisation constants), the
    embeddings and the output head in fp32 (peft's prepare_model_for_kbit_training upcasts them),
    LoRA adapters and the constitutional parts trained in fp32 (16 B/param). Activations per layer:
    :data:`LAYER_BYTES` per token and hidden unit (fp32, the CPU's mode: Korthikanti et al. 2022's
    s·b·h·(34 + 5·a·s/h) doubled, the attention matrix included); gradient checkpointing keeps one hidden
    state per layer plus one layer's worth. The logits (fp32, x3 for the loss and its gradient) come
    on top. Overhead: the CUDA context (:data:`CUDA_CONTEXT`) and the allocator's reserve
    (:data:`ALLOCATOR_SLACK`). Checked against the peaks measured on a GPU by
    tests/engine/test_memory_estimate.py.
    """
    if mode not in ("fp32", "fp16", "bf16", "nf4-lora"):
        raise ValueError(f"mode must be fp32, fp16, bf16 or nf4-lora, got {mode!r}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError("batch_size and seq_len must be >= 1")
    s = _shape(cfg)
    pc = count_parameters(cfg)
    h, L, V, nh = s["h"], s["L"], s["V"], s["nh"]
    b, t = batch_size, seq_len
    hidden_bytes = 2 if mode in ("fp16", "bf16") else 4  # what one kept hidden state costs per unit
    if mode == "nf4-lora":
        emb = V * h * (1 if s["tied"] else 2)
        quantised = pc.base - emb
        trainable = lora_parameters(cfg, lora_rank) + pc.constitutional
        weights = int(quantised * 0.53) + emb * 4 + trainable * 4
        grads = trainable * 4 if training else 0
        opt = trainable * 8 if training else 0
    else:
        trainable = pc.total
        weights = pc.total * 4 if training or mode == "fp32" else pc.total * 2
        if training and mode in ("fp16", "bf16"):
            weights += pc.total * 2  # autocast's 16-bit copies
        grads = trainable * 4 if training else 0
        opt = trainable * 8 if training else 0
    if mode == "fp32":  # Korthikanti et al.'s count with the attention matrix, doubled (not measured)
        per_layer = t * b * h * (34 + 5 * nh * t / h) * 2
    else:
        per_layer = t * b * h * LAYER_BYTES[mode]
    logits = b * t * V * 4
    if not training:
        activations = int(2 * t * b * h * hidden_bytes) + logits
    elif gradient_checkpointing:
        activations = int(L * b * t * h * hidden_bytes + per_layer) + 3 * logits
    else:
        activations = int(L * per_layer) + 3 * logits
    return with_overhead(weights, grads, opt, activations)


def with_overhead(weights: int, gradients: int, optimizer: int, activations: int) -> MemoryEstimate:
    """A MemoryEstimate of these parts plus their overhead: the CUDA context and the allocator's
    reserve over what they add up to (one process's; a sharded plan passes its per-card parts)."""
    slack = int(ALLOCATOR_SLACK * (weights + gradients + optimizer + activations))
    return MemoryEstimate(weights=weights, gradients=gradients, optimizer=optimizer, activations=activations,
                          overhead=CUDA_CONTEXT + slack)
