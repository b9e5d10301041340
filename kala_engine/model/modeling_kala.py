"""Full definition of the KALA model: a Pythia (GPT-NeoX) causal LM with the Five Laws in every layer.

Reading order: configuration, rotary embedding, ethics value head, constitutional attention,
decoder layer (with its ethics monitor), ethics aggregator, base model, causal-LM head, Pythia
loading. Shapes: B batch, T query length, S key length (past + T), nh heads, hs head size,
L layers, K = 5 laws.

What every layer adds to Pythia's computation (which it keeps exactly: partial rotary
embedding, parallel or sequential residual as the config says):

1. an **ethics value head**: a small MLP on the layer's layer-normed input giving per-token
   law-satisfaction scores in [0, 1], (B, T, K);
2. **constitutional attention**: the value-head scores of the *keys* become an additive bias on
   the attention logits, ``bias[h, j] = gate(h) * (c_j - 1)`` with ``c_j`` the priority-weighted
   mean of key j's law scores; low score => attend less, never more (``gate >= 0``: the learned
   parameter is clamped at 0, see ``ConstitutionalAttention.gate``). In training and prefill the bias is
   folded into the dot product (one extra key channel), so the fused causal kernel runs it. ``gate`` starts at exactly 0, so a
   model loaded from Pythia computes Pythia's logits until training moves the gates. The bias
   of past keys travels in the KV cache as one extra channel of the cached keys, so cached
   generation sees exactly the bias a full recomputation would;
3. an **ethics monitor**: per-layer law scores of the layer's output (the "decision path").

An **ethics aggregator** mixes the per-layer monitor scores with learned per-law layer weights
into the final law scores (B, T, K).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    GPTNeoXConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from kala_engine.constitution import NUM_LAWS
from kala_engine.jobs import JobError

#: largest attention-logit bias a gate can apply (nats): a key with score 0 can be made
#: e^8 ~ 3000 times less attended; keeps the bias (also stored in fp16 keys) well in range.
GATE_LIMIT = 8.0


# --------------------------------------------------------------------------- configuration


@strict
class KALAConfig(GPTNeoXConfig):
    """GPT-NeoX configuration plus the constitutional parts.

    Every GPT-NeoX field keeps its meaning (so a Pythia config converts one to one). Added:
    """

    model_type = "kala"

    num_laws: int = NUM_LAWS
    #: hidden width of each value head / monitor MLP; 0 = derived from hidden_size in __post_init__
    #: (hidden_size // 8, clamped to [32, 256]) - keeps the additions under 2 % of every Pythia size.
    ethics_hidden_size: int = 0
    #: priority weights of the laws (Law 0 first), from resources/constitution.toml; used for the
    #: key score c_j of constitutional attention and for the ethics loss.
    law_weights: list | None = None
    #: initial bias of the score heads' last layer: sigmoid(3) = 0.95, i.e. an untrained head
    #: says "satisfied" instead of sitting at 0.5 and stopping every generation.
    ethics_init_bias: float = 3.0
    #: lambda: weight of the ethics loss against the LM loss.
    ethics_loss_weight: float = 0.5
    #: weight of the per-layer (deep supervision) term, relative to the final ethics loss.
    deep_supervision_weight: float = 0.1
    #: how a law score is compared with its target: "kl" (the binary KL divergence, 0 at the
    #: target; its gradient through the sigmoid is score - target, so a head that is confidently
    #: wrong still learns) or "mse" (squared error: its gradient vanishes where the sigmoid
    #: saturates - at the "satisfied" 0.95 the heads start from, a harmful example pulls 20x
    #: more weakly than at 0.5; issue 16)
    ethics_loss_kind: str = "kl"
    #: per-law flag/stop thresholds calibrated on held-out data after training
    #: (kala_engine.train.calibration); None = the constitution's defaults.
    law_thresholds: list | None = None
    #: per-law thresholds that stop a *reply* (a generated token's scores), calibrated apart from
    #: the prompt's (issue 16); None = law_thresholds.
    reply_thresholds: list | None = None

    def __post_init__(self, **kwargs):
        if self.law_weights is None:
            from kala_engine.constitution import load_constitution

            self.law_weights = list(load_constitution().weights)
        if not self.ethics_hidden_size:
            self.ethics_hidden_size = int(min(256, max(32, self.hidden_size // 8)))
        self._check_constitutional_fields()  # ValueError naming the field, before HF's own checks
        super().__post_init__(**kwargs)

    def _check_constitutional_fields(self):
        if self.num_laws != NUM_LAWS:
            raise ValueError(f"KALAConfig.num_laws must be {NUM_LAWS} (the Five Laws), got {self.num_laws}")
        if len(self.law_weights) != self.num_laws or any(not (0 < float(w) <= 10) for w in self.law_weights):
            raise ValueError(f"KALAConfig.law_weights must be {self.num_laws} numbers in (0, 10], got {self.law_weights}")
        if not 1 <= self.ethics_hidden_size <= 65536:
            raise ValueError(f"KALAConfig.ethics_hidden_size must be in [1, 65536], got {self.ethics_hidden_size}")
        if not 0 <= self.ethics_loss_weight <= 100:
            raise ValueError(f"KALAConfig.ethics_loss_weight must be in [0, 100], got {self.ethics_loss_weight}")
        if not 0 <= self.deep_supervision_weight <= 100:
            raise ValueError(
                f"KALAConfig.deep_supervision_weight must be in [0, 100], got {self.deep_supervision_weight}"
            )
        if self.ethics_loss_kind not in ("kl", "mse"):
            raise ValueError(f"KALAConfig.ethics_loss_kind must be 'kl' or 'mse', got {self.ethics_loss_kind!r}")
        for name in ("law_thresholds", "reply_thresholds"):
            given = getattr(self, name)
            if given is not None and (
                len(given) != self.num_laws or any(t is not None and not 0 <= float(t) <= 1 for t in given)
            ):
                raise ValueError(f"KALAConfig.{name} must be {self.num_laws} values in [0, 1] (or null), got {given}")
        rope_type = (self.rope_parameters or {}).get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(f"KALAConfig: only the default rotary embedding is supported, got rope_type={rope_type!r}")


# --------------------------------------------------------------------------- rotary embedding


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """GPT-NeoX rotary embedding on the first ``rotary_ndims`` channels of each head."""

    def __init__(self, config: KALAConfig):
        super().__init__()
        head_size = config.hidden_size // config.num_attention_heads
        self.dim = int(head_size * config.rope_parameters.get("partial_rotary_factor", 1.0))
        self.base = float(config.rope_parameters["rope_theta"])
        self._inv_freq: torch.Tensor | None = None  # built lazily: never a (meta-initialised) buffer

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._inv_freq is None or self._inv_freq.device != x.device:
            exponent = torch.arange(0, self.dim, 2, dtype=torch.float, device=x.device) / self.dim
            self._inv_freq = 1.0 / (self.base**exponent)
        freqs = position_ids[..., None].float() * self._inv_freq  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, dim)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, dim)
    d = cos.shape[-1]
    q_rot, q_pass = q[..., :d], q[..., d:]
    k_rot, k_pass = k[..., :d], k[..., d:]
    q = torch.cat((q_rot * cos + rotate_half(q_rot) * sin, q_pass), dim=-1)
    k = torch.cat((k_rot * cos + rotate_half(k_rot) * sin, k_pass), dim=-1)
    return q, k


# --------------------------------------------------------------------------- ethics value head


class ScoreProjection(nn.Linear):
    """The last layer of a score head; its own type so _init_weights can give it a bias."""


class EthicsValueHead(nn.Module):
    """Per-token law-satisfaction scores in [0, 1]: (B, T, hidden) -> (B, T, K).

    ``normalize`` adds a LayerNorm for inputs that are not already normalised (the monitor reads
    the raw residual stream; the value head reads the layer's input_layernorm output).
    """

    def __init__(self, config: KALAConfig, normalize: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if normalize else None
        self.fc1 = nn.Linear(config.hidden_size, config.ethics_hidden_size)
        self.act = nn.GELU()
        self.fc2 = ScoreProjection(config.ethics_hidden_size, config.num_laws)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.norm(hidden_states) if self.norm is not None else hidden_states
        return torch.sigmoid(self.fc2(self.act(self.fc1(x))).float())  # scores in fp32 (B, T, K)


# --------------------------------------------------------------------------- constitutional attention


def _kept(owner: nn.Module, name: str, params, make):
    """``make()``'s result, kept on ``owner`` as attribute ``name`` and made anew only when one of
    ``params`` changed: its version counter (an optimizer step, ``load_state_dict``, any in-place
    write), storage, device or dtype (``.to()``, a cast). For gradient-free forwards only."""
    key = tuple((p._version, p.data_ptr(), p.device, p.dtype) for p in params)
    kept = getattr(owner, name, None)
    if kept is None or kept[0] != key:
        kept = (key, make())
        setattr(owner, name, kept)
    return kept[1]


class _ClampUpGrad(torch.autograd.Function):
    """max(g, 0) whose backward passes a gradient where g > 0, and at g <= 0 only the gradients
    that would raise g under gradient descent (grad < 0); those pushing it further down are
    dropped. (A plain clamp passes nothing at g <= 0, so a gate at 0 could never start.)"""

    @staticmethod
    def forward(ctx, g: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g)
        return g.clamp(min=0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (g,) = ctx.saved_tensors
        return grad * ((g > 0) | (grad < 0)).to(grad.dtype)


class ConstitutionalAttention(nn.Module):
    """GPT-NeoX self-attention whose logits get the per-key constitutional bias.

    logits[b, h, i, j] = q_i . k_j / sqrt(hs) + gate(h) * (c[b, j] - 1), over allowed (causal,
    non-padding) keys j. With gate == 0 this is exactly GPT-NeoX attention.
    """

    def __init__(self, config: KALAConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_size**-0.5
        self.attention_dropout = config.attention_dropout
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        #: one learned gate per head; exactly 0 at start (Pythia parity), trained by the losses.
        self.constitutional_gate = nn.Parameter(torch.zeros(config.num_attention_heads))
        self._channel_scale: tuple | None = None  # (the gate's key, (scale, -scale)), see _kept

    def gate(self) -> torch.Tensor:
        """Effective per-head gate, GATE_LIMIT * tanh(max(g, 0) / GATE_LIMIT), in [0, GATE_LIMIT).

        Never negative, so a lower key score can only lower the attention to that key (the
        design); 0 at g = 0 (Pythia parity), slope 1 above it. The clamp's backward is
        :class:`_ClampUpGrad`: at or below 0 it still lets through gradients that would raise
        the gate, so a gate at exactly 0 trains (a smooth f >= 0 with f(0) = 0 has f'(0) = 0
        and would never leave 0).
        """
        return GATE_LIMIT * torch.tanh(_ClampUpGrad.apply(self.constitutional_gate.float()) / GATE_LIMIT)

    def channel_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, -s) with s = gate / scaling (scaling = 1 / sqrt(hs)), each (1, nh, 1): the bias channel
        of a key with score c is ``-s + s * c`` (one fused ``addcmul``). While gradients are off (generation, validation)
        both are kept between calls (:func:`_kept`), so an optimizer step, a load or a move makes
        them anew: cached decoding then spends no kernel on
        the gate (on a GPU at batch 1 every kernel launch counts)."""
        def make():
            s = (self.gate() / self.scaling).view(1, -1, 1)
            return s, -s

        return make() if torch.is_grad_enabled() else _kept(self, "_channel_scale", [self.constitutional_gate], make)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C) layer-normed
        key_scores: torch.Tensor,  # (B, T) priority-weighted law score of each new token, in [0, 1]
        allowed: torch.Tensor | None,  # (B, 1, T, S) bool, None = plain causal without padding
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: Cache | None = None,
    ) -> torch.Tensor:
        B, T, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(B, T, self.num_heads, 3 * self.head_size).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)  # (B, nh, T, hs) each
        q, k = apply_rotary(q, k, *position_embeddings)

        # The per-key bias joins the dot product as one extra channel:
        #   [q, 1] . [k, bias/scale] * scale = q.k * scale + bias,
        # so the biased keys (B, nh, T, hs + 1) are what the KV cache keeps for past tokens.
        scale, neg_scale = self.channel_scale()
        channel = torch.addcmul(neg_scale, scale, key_scores[:, None, :])  # gate (c - 1) / scaling: (B, nh, T)
        k = torch.cat((k, channel.to(k.dtype).unsqueeze(-1)), dim=-1)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, nh, S, hs + 1), (B, nh, S, hs)
        S = k.shape[2]
        dropout = self.attention_dropout if self.training else 0.0
        eager = self.config._attn_implementation == "eager"

        if allowed is None and S == T and not eager and dropout == 0.0:
            # training and prefill: pad the head to a multiple of 8 so the fused causal kernel
            # takes it (~10 % more attention work, no materialised (B, nh, T, S) mask)
            pad = (-(self.head_size + 1)) % 8
            q = F.pad(torch.cat((q, torch.ones_like(q[..., :1])), dim=-1), (0, pad))  # [q, 1, 0...]
            k = F.pad(k, (0, pad))
            out = F.scaled_dot_product_attention(q, k, F.pad(v, (0, pad + 1)), is_causal=True, scale=self.scaling)
            out = out[..., : self.head_size]
        elif allowed is None and T == 1 and not eager:  # cached decoding: one new token sees every key
            # the bias as an additive mask on the plain head is the faster kernel here
            attn_bias = (k[..., self.head_size] * self.scaling)[:, :, None, :]  # (B, nh, 1, S)
            keys = k[..., : self.head_size]  # a view whose rows are hs + 1 apart: CUDA's fused
            if keys.is_cuda:  # kernels need aligned rows ("cutlassF: no kernel found to launch")
                keys = keys.contiguous()
            out = F.scaled_dot_product_attention(q, keys, v,
                                                 attn_mask=attn_bias, dropout_p=dropout, scale=self.scaling)
        else:
            q = torch.cat((q, torch.ones_like(q[..., :1])), dim=-1)  # [q, 1]: (B, nh, T, hs + 1)
            if allowed is None:  # causal over S keys, the T queries being the last T positions
                allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)[None, None]
            mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
                ~allowed, torch.finfo(q.dtype).min)  # (B|1, 1, T, S)
            if eager:
                logits = torch.matmul(q, k.transpose(2, 3)) * self.scaling + mask  # (B, nh, T, S)
                weights = F.softmax(logits, dim=-1, dtype=torch.float32).to(v.dtype)
                weights = F.dropout(weights, p=dropout, training=self.training)
                out = torch.matmul(weights, v)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scaling)
        out = out.transpose(1, 2).reshape(B, T, -1)  # (B, T, C)
        return self.dense(out)


class MLP(nn.Module):
    def __init__(self, config: KALAConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


# --------------------------------------------------------------------------- decoder layer


class ConstitutionalLayer(GradientCheckpointingLayer):
    """One GPT-NeoX layer + ethics value head, constitutional attention and ethics monitor."""

    def __init__(self, config: KALAConfig, layer_idx: int):
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_dropout = nn.Dropout(config.hidden_dropout)
        self.post_mlp_dropout = nn.Dropout(config.hidden_dropout)
        self.attention = ConstitutionalAttention(config, layer_idx)
        self.mlp = MLP(config)
        self.value_head = EthicsValueHead(config)
        self.ethics_monitor = EthicsValueHead(config, normalize=True)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        allowed: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        law_weights: torch.Tensor,  # (K,) normalised priority weights
        cache: Cache | None = None,
        monitor: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(output, value-head scores, monitor scores; None when ``monitor`` is off: the caller
        runs every layer's monitor at once, :func:`stacked_monitor_scores`)."""
        normed = self.input_layernorm(hidden_states)
        value_scores = self.value_head(normed)  # (B, T, K)
        key_scores = value_scores @ law_weights  # (B, T)
        attn_output = self.attention(normed, key_scores, allowed, position_embeddings, cache)
        attn_output = self.post_attention_dropout(attn_output)
        if self.use_parallel_residual:  # x + attn(ln1(x)) + mlp(ln2(x))
            mlp_output = self.post_mlp_dropout(self.mlp(self.post_attention_layernorm(hidden_states)))
            hidden_states = mlp_output + attn_output + hidden_states
        else:  # y = x + attn(ln1(x)); y + mlp(ln2(y))
            attn_output = attn_output + hidden_states
            mlp_output = self.post_mlp_dropout(self.mlp(self.post_attention_layernorm(attn_output)))
            hidden_states = mlp_output + attn_output
        monitor_scores = self.ethics_monitor(hidden_states) if monitor else None  # (B, T, K)
        return hidden_states, value_scores, monitor_scores


def _plain_monitor(layer: nn.Module) -> bool:
    """The layer and its monitor are this file's own modules, unwrapped: no FSDP (which renames the
    class and holds the weights only inside the layer's forward), no peft or bitsandbytes layer."""
    m = getattr(layer, "ethics_monitor", None)
    return (type(layer) is ConstitutionalLayer and type(m) is EthicsValueHead and type(m.norm) is nn.LayerNorm
            and type(m.fc1) is nn.Linear and type(m.fc2) is ScoreProjection)


def stacked_monitor_scores(layers, hidden: list[torch.Tensor], cache_on: nn.Module) -> torch.Tensor:
    """Every layer's ethics monitor in one batch: (L, B, T, K), the same as calling each layer's
    ``ethics_monitor`` on its output (to float rounding). Seven kernels whatever L is, instead of
    five a layer: cached decoding at batch 1 is launch-bound on a GPU. For gradient-free forwards
    only; the stacked weights are kept on ``cache_on`` between calls (:func:`_kept`), so a training
    step, a load or a move stacks them anew."""
    mons = [layer.ethics_monitor for layer in layers]
    params = [p for m in mons for p in (m.norm.weight, m.norm.bias, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)]
    ln_w, ln_b, w1, b1, w2, b2 = _kept(cache_on, "_stacked_monitors", params, lambda: (
        torch.stack([m.norm.weight for m in mons])[:, None], torch.stack([m.norm.bias for m in mons])[:, None],
        torch.stack([m.fc1.weight.t() for m in mons]), torch.stack([m.fc1.bias for m in mons])[:, None],
        torch.stack([m.fc2.weight.t() for m in mons]), torch.stack([m.fc2.bias for m in mons])[:, None]))
    x = torch.stack(hidden)  # (L, B, T, C)
    L, B, T, C = x.shape
    x = F.layer_norm(x, (C,), eps=mons[0].norm.eps).view(L, B * T, C)
    h = F.gelu(torch.baddbmm(b1, torch.addcmul(ln_b, x, ln_w), w1))  # (L, BT, H)
    return torch.sigmoid(torch.baddbmm(b2, h, w2).float()).view(L, B, T, -1)  # scores in fp32


# --------------------------------------------------------------------------- ethics aggregator


class EthicsAggregator(nn.Module):
    """Final law scores: per law, a softmax-weighted mean of the layers' monitor scores."""

    def __init__(self, config: KALAConfig):
        super().__init__()
        # (K, L); zeros = equal weights; init leans on later layers (see _init_weights)
        self.layer_logits = nn.Parameter(torch.zeros(config.num_laws, config.num_hidden_layers))

    def forward(self, monitor_scores: torch.Tensor) -> torch.Tensor:
        # monitor_scores (L, B, T, K) -> (B, T, K)
        w = torch.softmax(self.layer_logits.float(), dim=-1)  # (K, L)
        return torch.einsum("lbtk,kl->btk", monitor_scores, w)


# --------------------------------------------------------------------------- outputs


@dataclass
class KALAModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    cache: Cache | None = None
    law_scores: torch.Tensor | None = None  # (B, T, K) aggregated
    layer_scores: torch.Tensor | None = None  # (L, B, T, K) monitors
    value_scores: torch.Tensor | None = None  # (L, B, T, K) value heads
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class KALACausalLMOutput(ModelOutput):
    """Logits, the loss and its parts, and the law scores.

    ``law_scores`` (B, T, K) always; ``layer_scores``/``value_scores`` (L, B, T, K) when
    ``output_layer_scores=True``. Loss parts are set when ``labels`` / ``law_targets`` are given.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    law_scores: torch.Tensor | None = None
    layer_scores: torch.Tensor | None = None
    value_scores: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    ethics_loss: torch.Tensor | None = None
    ethics_loss_per_law: torch.Tensor | None = None  # (K,) MSE of the final scores per law
    deep_loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


# --------------------------------------------------------------------------- models


class KALAPreTrainedModel(PreTrainedModel):
    config: KALAConfig
    config_class = KALAConfig
    base_model_prefix = "gpt_neox"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ConstitutionalLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_compile_fullgraph = False
    # buffers of old GPT-NeoX checkpoints that KALA computes instead of storing
    _keys_to_ignore_on_load_unexpected = [r"attention\.bias", r"attention\.masked_bias", r"rotary_emb\.inv_freq"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ScoreProjection):
            init.constant_(module.bias, self.config.ethics_init_bias)
        elif isinstance(module, ConstitutionalAttention):
            init.zeros_(module.constitutional_gate)
        elif isinstance(module, EthicsAggregator):
            # lean on the later layers at start: logits 0 .. 1 across layers
            L = module.layer_logits.shape[1]
            ramp = torch.linspace(0.0, 1.0, L) if L > 1 else torch.zeros(1)
            init.copy_(module.layer_logits, ramp.expand_as(module.layer_logits).to(module.layer_logits))


_LAW_WEIGHTS: dict[tuple, torch.Tensor] = {}


def normalized_law_weights(config: KALAConfig, device: torch.device) -> torch.Tensor:
    """The priority weights as a (K,) tensor summing to 1, made once per (weights, device)."""
    key = (tuple(float(w) for w in config.law_weights), str(device))
    if key not in _LAW_WEIGHTS:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable under autograd later
            w = torch.tensor(key[0], dtype=torch.float32, device=device)
            _LAW_WEIGHTS[key] = w / w.sum()
    return _LAW_WEIGHTS[key]


def _allowed_keys(
    attention_mask: torch.Tensor | None, T: int, S: int, device: torch.device
) -> torch.Tensor | None:
    """(B, 1, T, S) bool: causal and not padding. None when plain causal attention is exact.

    That covers no padding and, without a cache, right padding (training batches): a real token
    never attends to the pads after it, and the outputs at pad positions carry no loss.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    if S == T and bool((attention_mask.cummin(dim=-1).values == attention_mask).all()):
        return None
    if attention_mask.shape[-1] != S:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} tokens, expected past + new = {S}")
    causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)
    return causal[None, None] & attention_mask[:, None, None, :].bool()


class KALAModel(KALAPreTrainedModel):
    """Embeddings, constitutional layers, final layer norm and the ethics aggregator."""

    def __init__(self, config: KALAConfig):
        super().__init__(config)
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size)
        self.emb_dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(ConstitutionalLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ethics_aggregator = EthicsAggregator(config)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_in

    def set_input_embeddings(self, value):
        self.embed_in = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> KALAModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_in(input_ids)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache()
        if not use_cache:
            cache = None
        B, T = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None and not bool(attention_mask.all()):
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=inputs_embeds.device).unsqueeze(0)
        allowed = _allowed_keys(attention_mask, T, past + T, inputs_embeds.device)

        hidden_states = self.emb_dropout(inputs_embeds)
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        law_weights = normalized_law_weights(self.config, hidden_states.device)
        all_hidden = [hidden_states] if output_hidden_states else None
        value_scores, monitor_scores, outputs = [], [], []
        # without gradients, every layer's monitor runs at once after the loop (fewer kernels)
        stacked = not torch.is_grad_enabled() and all(_plain_monitor(layer) for layer in self.layers)
        for layer in self.layers:
            hidden_states, v_scores, m_scores = layer(
                hidden_states, allowed, position_embeddings, law_weights, cache=cache, monitor=not stacked
            )
            value_scores.append(v_scores)
            monitor_scores.append(m_scores)
            outputs.append(hidden_states)
            if all_hidden is not None:
                all_hidden.append(hidden_states)
        if stacked:
            layer_scores = stacked_monitor_scores(self.layers, outputs, cache_on=self)
        else:
            layer_scores = torch.stack(monitor_scores)  # (L, B, T, K)
        hidden_states = self.final_layer_norm(hidden_states)
        return KALAModelOutput(
            last_hidden_state=hidden_states,
            cache=cache,
            law_scores=self.ethics_aggregator(layer_scores),
            layer_scores=layer_scores,
            value_scores=torch.stack(value_scores),
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


def score_error(scores: torch.Tensor, targets: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Elementwise error of law scores in [0, 1] against their targets: squared error, or the
    binary KL divergence KL(target || score) (BCE minus the target's own entropy: 0 at the target)."""
    t = targets.to(scores.dtype)
    if kind == "mse":
        return (scores - t) ** 2
    s = scores.float().clamp(1e-6, 1 - 1e-6)
    t = t.float()
    kl = torch.xlogy(t, t) - torch.xlogy(t, s) + torch.xlogy(1 - t, 1 - t) - torch.xlogy(1 - t, 1 - s)
    return kl.to(scores.dtype)


def weighted_mse(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-law mean error (squared, or ``kind="kl"``: :func:`score_error`) over the masked tokens:
    (..., T, K) -> (K,)."""
    m = mask.to(scores.dtype).unsqueeze(-1)  # (..., T, 1)
    sq = score_error(scores, targets, kind) * m
    dims = tuple(range(sq.dim() - 1))
    return sq.sum(dim=dims) / m.sum(dim=dims).clamp(min=1.0)


class KALAForCausalLM(KALAPreTrainedModel, GenerationMixin):
    """KALA with its language-modeling head: the model users train, chat with and share."""

    _tied_weights_keys: dict = {}

    def __init__(self, config: KALAConfig):
        super().__init__(config)
        self.gpt_neox = KALAModel(config)
        # named embed_out as in the Pythia checkpoints, so their files load key for key
        self.embed_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.embed_out

    def set_output_embeddings(self, new_embeddings):
        self.embed_out = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        law_targets: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
        target_weight: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_layer_scores: bool = False,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> KALACausalLMOutput:
        r"""
        labels (B, T): LM labels, -100 where no LM loss (shifted inside, as in Hugging Face).
        law_targets (B, T, K): per-token target law scores in [0, 1].
        target_mask (B, T): tokens that carry law targets (default: every attended token).
        target_weight (B, T): per-token weight of the law targets in the ethics losses (the
            collator's: more on the first reply tokens after a harmful request); default 1.
        """
        out = self.gpt_neox(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.embed_out(hidden)

        loss = lm_loss = ethics_loss = per_law = deep_loss = None
        if labels is not None:
            if logits.shape[1] != labels.shape[1]:
                raise ValueError("labels need the logits of every position (logits_to_keep=0)")
            # shift the labels, not the logits: no copy of the (B, T, V) logits (as transformers does)
            shift_labels = F.pad(labels.to(logits.device), (0, 1), value=-100)[:, 1:]
            n = (shift_labels != -100).sum()
            ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shift_labels.reshape(-1),
                                 ignore_index=-100, reduction="sum")
            lm_loss = ce / n.clamp(min=1)
            loss = lm_loss
        if law_targets is not None:
            if target_mask is None:
                target_mask = attention_mask if attention_mask is not None else torch.ones_like(law_targets[..., 0])
            if target_weight is not None:
                target_mask = target_mask.to(target_weight.dtype) * target_weight
            w = normalized_law_weights(self.config, logits.device)
            kind = self.config.ethics_loss_kind
            per_law = weighted_mse(out.law_scores, law_targets, target_mask, kind)  # (K,)
            ethics_loss = (per_law * w).sum()
            deep_mon = weighted_mse(out.layer_scores, law_targets.unsqueeze(0).expand_as(out.layer_scores),
                                    target_mask.unsqueeze(0).expand(out.layer_scores.shape[:-1]), kind)
            deep_val = weighted_mse(out.value_scores, law_targets.unsqueeze(0).expand_as(out.value_scores),
                                    target_mask.unsqueeze(0).expand(out.value_scores.shape[:-1]), kind)
            deep_loss = ((deep_mon + deep_val) * w).sum() / 2
            ethics_total = self.config.ethics_loss_weight * (
                ethics_loss + self.config.deep_supervision_weight * deep_loss
            )
            loss = ethics_total if loss is None else loss + ethics_total

        return KALACausalLMOutput(
            loss=loss,
            logits=logits,
            cache=out.cache,
            law_scores=out.law_scores,
            layer_scores=out.layer_scores if output_layer_scores else None,
            value_scores=out.value_scores if output_layer_scores else None,
            lm_loss=lm_loss,
            ethics_loss=ethics_loss,
            ethics_loss_per_law=per_law,
            deep_loss=deep_loss,
            hidden_states=out.hidden_states,
        )

    # The original note's API: model.generate_with_ethics(input_ids, max_length=..., ethics_threshold=...)
    # -> (generated_ids, law_scores). The full engine (events, sampling, explanations) is
    # kala_engine.generate.generation; this is its thin, note-compatible front.
    @torch.no_grad()
    def generate_with_ethics(self, input_ids, max_length: int = 100, ethics_threshold=0.5, **kwargs):
        from kala_engine.generate.stopping import generate_ids_with_ethics

        return generate_ids_with_ethics(self, input_ids, max_length=max_length, ethics_threshold=ethics_threshold,
                                        **kwargs)

    def constitutional_parameter_names(self) -> list[str]:
        """Names of the parameters KALA adds to the GPT-NeoX base."""
        return [n for n, _ in self.named_parameters() if any(k in n for k in CONSTITUTIONAL_KEYS)]


def preset_config(name: str, **overrides):
    """A KALAConfig for a preset (random init; real Pythia weights come from load_from_pythia)."""
    from kala_engine.model.presets import get_preset

    p = get_preset(name)
    p.pop("name")
    p.pop("published_params")
    p.update(overrides)
    return KALAConfig(**p)


AutoConfig.register("kala", KALAConfig, exist_ok=True)
AutoModelForCausalLM.register(KALAConfig, KALAForCausalLM, exist_ok=True)


# --------------------------------------------------------------------------- loading Pythia


class PythiaLoadError(JobError, ValueError):
    """The folder is not a loadable GPT-NeoX checkpoint; the message says why and what to do."""


#: the names of the parts KALA adds to a GPT-NeoX layer (module or parameter names)
CONSTITUTIONAL_KEYS = ("value_head", "ethics_monitor", "constitutional_gate", "ethics_aggregator")


def kala_config_from_gpt_neox(base: GPTNeoXConfig | dict, **overrides) -> KALAConfig:
    d = base.to_dict() if hasattr(base, "to_dict") else dict(base)
    for k in ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map", "dtype",
              "torch_dtype"):
        d.pop(k, None)
    d.update(overrides)
    return KALAConfig(**d)


def _check_pythia_folder(p: Path) -> None:
    """Refuse, with the reason, a folder that is not a loadable GPT-NeoX checkpoint (policy first)."""
    import json

    from kala_engine.model.loading import check_no_remote_code, check_weights

    if not p.is_dir():
        raise PythiaLoadError(f"{p} is a file; load_from_pythia needs the checkpoint folder")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise PythiaLoadError(f"{p}: no config.json - not a Hugging Face checkpoint folder")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PythiaLoadError(f"{cfg_file}: unreadable config ({e})") from None
    check_no_remote_code(p)  # before anything else reads the folder
    mt = raw.get("model_type")
    if mt == "kala":
        raise PythiaLoadError(f"{p} is already a KALA model: load it with KALAForCausalLM.from_pretrained")
    if mt != "gpt_neox":
        raise PythiaLoadError(
            f"{p}: model_type is {mt!r}, not 'gpt_neox'; load_from_pythia takes Pythia / GPT-NeoX checkpoints only"
        )
    weights = [*p.glob("*.safetensors"), *p.glob("*.bin")]
    if not weights:
        raise PythiaLoadError(f"{p}: no weight files (*.safetensors) next to config.json")
    check_weights(p)  # safetensors only; a pickle-only folder is refused with the reason


def load_from_pythia(path: str | Path, *, dtype: torch.dtype | str | None = None, local_files_only: bool = True,
                     revision: str | None = None, **kwargs) -> KALAForCausalLM:
    """A GPT-NeoX (Pythia) checkpoint folder -> a KALA model with every base weight copied.

    The constitutional parts are freshly initialised (gates at exactly 0, so the logits are
    Pythia's). ``path`` is a local folder, a preset name (``pythia-410m``) or a hub id
    (``EleutherAI/pythia-6.9b``, optional ``revision``), resolved by :func:`kala_engine.model.hub.resolve_base`:
    a folder as it is, else the Hugging Face cache with no network call; a download only with
    ``local_files_only=False``. The loading policy (:mod:`kala_engine.model.loading`) applies: no
    ``auto_map``, safetensors only. Extra keyword arguments (``device_map``,
    ``quantization_config``, ``attn_implementation``, KALAConfig fields via ``kala_overrides``)
    go to ``from_pretrained``.
    """
    from kala_engine.model.download import BaseError
    from kala_engine.model.hub import resolve_base

    # SAFE_KWARGS: trust_remote_code=False, local files only (the loading policy, kala_engine.model.loading)
    from kala_engine.model.loading import SAFE_KWARGS, LoadRefused

    overrides = kwargs.pop("kala_overrides", {}) or {}
    p = Path(path)
    if not p.exists():
        try:
            p = Path(resolve_base(str(path), revision, download=not local_files_only).path or "")
        except LoadRefused:
            raise
        except BaseError as e:
            raise PythiaLoadError(str(e)) from None
        if not p.name:
            raise PythiaLoadError("kala-tiny is trained from scratch (kala train --base kala-tiny); "
                                  "load_from_pythia takes a Pythia / GPT-NeoX checkpoint")
        path = p
    if p.exists():
        _check_pythia_folder(p)
    base_cfg = GPTNeoXConfig.from_pretrained(str(path), **SAFE_KWARGS)
    config = kala_config_from_gpt_neox(base_cfg, **overrides)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized" table lists exactly the KALA parts
    try:
        model, info = KALAForCausalLM.from_pretrained(
            str(path), config=config, dtype=dtype, output_loading_info=True, use_safetensors=True,
            **SAFE_KWARGS, **kwargs,
        )
    except RuntimeError as e:
        if "mismatch" in str(e) or "shape" in str(e):
            raise PythiaLoadError(f"{path}: weight shapes do not match its config.json: {e}") from None
        raise
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", []) if not any(c in k for c in CONSTITUTIONAL_KEYS)]
    mismatched = info.get("mismatched_keys", [])
    if missing or mismatched:
        what = []
        if missing:
            what.append(f"missing base weights {sorted(missing)[:8]}")
        if mismatched:
            what.append(f"mismatched shapes {list(mismatched)[:8]}")
        raise PythiaLoadError(f"{path}: not a complete GPT-NeoX checkpoint: " + "; ".join(what))
    unexpected = [k for k in info.get("unexpected_keys", [])
                  if not any(s in k for s in ("attention.bias", "attention.masked_bias", "inv_freq"))]
    if unexpected:
        raise PythiaLoadError(f"{path}: weights that a GPT-NeoX model does not have: {sorted(unexpected)[:8]}")
    return model
