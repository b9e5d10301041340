"""Where in the network the ethics live (issue 18, item 3).

- :func:`keep_layers`: a smaller model from a larger one - N of its layers, evenly spaced, the last
  kept (a distillation student made from its teacher, DistilBERT's "every other layer").
- :func:`apply_ethics_layers`: which layers' constitutional parts (value head, monitor, gate)
  train, and the "constitutional parts only" mode that freezes the whole base.
- :func:`layer_law_weights`: what a trained model learned about its layers - the aggregator's
  layer x law weights and every layer's attention gates - read from ``model.safetensors`` with
  numpy (no torch: the Runs page draws it as a heatmap).
"""

from __future__ import annotations

import math
from pathlib import Path

from kala_engine.jobs import Emit, JobError, LogLine

#: substrings of the constitutional parameters that belong to one layer (the aggregator is shared)
LAYER_PARTS = ("value_head", "ethics_monitor", "constitutional_gate")


def evenly_spaced(n_from: int, n_keep: int) -> list[int]:
    """``n_keep`` layer indices of ``n_from``, evenly spaced, the last always kept (4 -> 2: [1, 3])."""
    if not 1 <= n_keep <= n_from:
        raise ValueError(f"cannot keep {n_keep} of {n_from} layers (1 .. {n_from})")
    return [math.ceil((i + 1) * n_from / n_keep) - 1 for i in range(n_keep)]


def keep_layers(model, n_keep: int) -> list[int]:
    """Cut ``model`` (a KALAForCausalLM) down to ``n_keep`` evenly spaced layers, in place; returns
    the kept indices. The aggregator keeps the kept layers' columns."""
    from torch import nn

    layers = model.gpt_neox.layers
    keep = evenly_spaced(len(layers), n_keep)
    model.gpt_neox.layers = nn.ModuleList(layers[i] for i in keep)
    for new_idx, layer in enumerate(model.gpt_neox.layers):
        layer.attention.layer_idx = new_idx  # the KV cache is indexed by position in the stack
    agg = model.gpt_neox.ethics_aggregator
    agg.layer_logits = nn.Parameter(agg.layer_logits.detach()[:, keep].clone().contiguous(),
                                    requires_grad=agg.layer_logits.requires_grad)
    model.config.num_hidden_layers = n_keep
    return keep


def apply_ethics_layers(model, cfg, emit: Emit) -> None:
    """Freeze what ``cfg`` says does not train: with ``constitutional_only`` every base weight; the
    constitutional parts of the layers not in ``cfg.ethics_layers``."""
    n_layers = model.config.num_hidden_layers
    if cfg.ethics_layers is not None:
        bad = [i for i in cfg.ethics_layers if i >= n_layers]
        if bad:
            raise JobError(f"--ethics-layers {bad} out of range: this model has layers 0 .. {n_layers - 1}")
    if cfg.layer_supervision_weights is not None and len(cfg.layer_supervision_weights) != n_layers:
        raise JobError(f"--layer-supervision-weights has {len(cfg.layer_supervision_weights)} weights; "
                       f"this model has {n_layers} layers (one weight per layer)")
    constitutional = set(model.constitutional_parameter_names())
    frozen_parts = 0
    for name, p in model.named_parameters():
        if name not in constitutional:
            if cfg.constitutional_only:
                p.requires_grad_(False)
            continue
        layer = _layer_of(name)
        if cfg.ethics_layers is not None and layer is not None and layer not in cfg.ethics_layers:
            p.requires_grad_(False)
            frozen_parts += p.numel()
    if cfg.constitutional_only:
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        emit(LogLine(f"constitutional parts only: the base is frozen, {n:,} parameters train"))
    if cfg.ethics_layers is not None:
        emit(LogLine(f"constitutional parts train in layers {sorted(cfg.ethics_layers)} only "
                     f"({frozen_parts:,} parameters of the other layers' parts frozen)"))


def _layer_of(name: str) -> int | None:
    """The layer index in a parameter name (``gpt_neox.layers.3.value_head...`` -> 3), or None."""
    parts = name.split(".")
    for a, b in zip(parts, parts[1:], strict=False):
        if a == "layers" and b.isdigit():
            return int(b)
    return None


def layer_supervision(cfg, n_layers: int) -> list[float] | None:
    """Per-layer weights of the deep-supervision term, mean 1 over the layers (so equal weights
    are the model's own deep loss); layers outside ``ethics_layers`` get 0 unless weights are
    given. None: the model's own (equal) deep loss."""
    if cfg.layer_supervision_weights is not None:
        w = [float(x) for x in cfg.layer_supervision_weights]
    elif cfg.ethics_layers is not None:
        w = [1.0 if i in cfg.ethics_layers else 0.0 for i in range(n_layers)]
    else:
        return None
    total = sum(w)
    if total <= 0:
        raise JobError("--layer-supervision-weights are all 0: give at least one layer a weight > 0")
    return [x * n_layers / total for x in w]


def layer_law_weights(model_dir: str | Path) -> dict:
    """The learned layer x law weights and per-layer gates of a saved KALA model.

    Returns ``{"layer_law": [[w per law] per layer], "gates": [[gate per head] per layer]}``:
    the aggregator's softmax over layers (each law's column sums to 1) and the effective gates
    (``GATE_LIMIT * tanh(max(g, 0) / GATE_LIMIT)``, as the model applies them).
    """
    import numpy as np
    from safetensors.numpy import load_file

    from kala_engine.model.modeling_kala import GATE_LIMIT

    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise JobError(f"{model_dir}: no model.safetensors (a KALA model folder, e.g. RUN/final)")
    t = load_file(str(path))
    logits = next((v for k, v in t.items() if k.endswith("ethics_aggregator.layer_logits")), None)
    if logits is None:
        raise JobError(f"{model_dir}: not a KALA model (no ethics aggregator in its weights)")
    z = logits.astype(np.float64)
    w = np.exp(z - z.max(axis=1, keepdims=True))
    w = w / w.sum(axis=1, keepdims=True)  # (K, L)
    gates = {}
    for k, v in t.items():
        if k.endswith("constitutional_gate") and _layer_of(k) is not None:
            g = np.maximum(v.astype(np.float64), 0.0)
            gates[_layer_of(k)] = (GATE_LIMIT * np.tanh(g / GATE_LIMIT)).tolist()
    return {"layer_law": w.T.tolist(), "gates": [gates[i] for i in sorted(gates)]}
