"""The loss a run minimises, and how its ethics weights move over the run (issue 18, item 2).

    loss = LM + lambda(step) * (sum_k m_k * MSE_k  +  mu * deep)

- ``lambda(step)`` (:func:`lambda_at`): constant, a linear warm-up from 0, or the warm-up then a
  cosine down to ``ethics_weight * lambda_min_ratio``.
- ``m_k``, the pull of law k, on top of the constitution's priority ``w_k`` (normalised to sum 1):

  * ``fixed``: ``m_k = w_k`` (the model's own loss, bit for bit).
  * ``uncertainty`` (Kendall, Gal & Cipolla, CVPR 2018, "Multi-task learning using uncertainty to
    weigh losses"): a learned log-variance ``s_k`` per law, ``m_k = w_k * exp(-s_k)`` and ``+ s_k``
    in the loss; at its optimum ``exp(-s_k) = 1 / MSE_k``: a law with a larger loss pulls
    *less* (it is the noisier task). ``s_k`` is softly bounded to ``+-ln(adaptive_bound)``
    (``ln b * tanh(raw / ln b)``) so no law's pull runs away when its loss nears 0.
  * ``validation``: after each validation ``m_k = w_k * a_k`` with ``a_k = MAE_k / mean MAE``
    clipped to ``[1/adaptive_bound, adaptive_bound]``: a law the model gets more wrong on held-out
    data pulls *more*.

- ``deep``: the per-layer term, optionally weighted per layer
  (:func:`kala_engine.train.ethics_layers.layer_supervision`).

:class:`EthicsObjective` is what the trainer calls for every micro-batch; its state (the learned
log-variances, the validation factors) is saved in each checkpoint, so a resume retraces the run.
Every weight is logged per step (``lambda``, ``law_weight_k`` = m_k) and plotted by the app.
"""

from __future__ import annotations

import math

import torch

from kala_engine.constitution import NUM_LAWS


def lambda_at(step: int, total: int, cfg) -> float:
    """lambda at optimizer step ``step`` (0-based) of ``total``, per ``cfg.lambda_schedule``."""
    peak = cfg.ethics_weight
    if cfg.lambda_schedule == "constant":
        return peak
    warm = cfg.lambda_warmup_steps
    if step < warm:
        return peak * (step + 1) / warm
    if cfg.lambda_schedule == "warmup" or total <= warm:
        return peak
    progress = min(1.0, (step - warm) / max(1, total - warm))
    floor = peak * cfg.lambda_min_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def per_layer_mse(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """(L, B, T, K) scores vs (B, T, K) targets over the (B, T) mask -> (L, K) mean errors
    (squared, or the model's ``kind``: :func:`kala_engine.model.modeling_kala.score_error`)."""
    from kala_engine.model.modeling_kala import score_error

    m = mask.to(scores.dtype)[None, ..., None]  # (1, B, T, 1)
    sq = score_error(scores, targets[None], kind) * m
    return sq.sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp(min=1.0)


class EthicsObjective:
    """The run's loss with the weights of ``cfg`` (see the module docstring)."""

    def __init__(self, cfg, priorities: list[float], layer_weights: list[float] | None = None,
                 device: torch.device | str = "cpu"):
        self.cfg = cfg
        p = torch.tensor(priorities, dtype=torch.float32, device=device)
        self.priority = p / p.sum()
        self.bound = math.log(cfg.adaptive_bound) if cfg.adaptive_bound > 1 else 0.0
        self.raw_log_var = (torch.zeros(NUM_LAWS, device=device, requires_grad=True)
                            if cfg.law_weighting == "uncertainty" else None)
        self.factors = [1.0] * NUM_LAWS  # the validation rule's a_k
        self.layer_weights = (torch.tensor(layer_weights, dtype=torch.float32, device=device)
                              if layer_weights is not None else None)
        #: the model's own loss is the objective: nothing to recompute
        self.plain = (cfg.lambda_schedule == "constant" and cfg.law_weighting == "fixed"
                      and layer_weights is None)

    # ---------------------------------------------------------------- weights

    def parameters(self) -> list[torch.Tensor]:
        """Tensors the optimizer trains beside the model (the uncertainty rule's log-variances)."""
        return [self.raw_log_var] if self.raw_log_var is not None else []

    def log_var(self) -> torch.Tensor | None:
        if self.raw_log_var is None:
            return None
        if self.bound == 0:
            return torch.zeros_like(self.raw_log_var)
        return self.bound * torch.tanh(self.raw_log_var / self.bound)

    def law_multipliers(self) -> torch.Tensor:
        """m_k: the pull of each law's MSE (before lambda); differentiable for the uncertainty rule."""
        s = self.log_var()
        if s is not None:
            return self.priority * torch.exp(-s)
        return self.priority * torch.tensor(self.factors, dtype=torch.float32, device=self.priority.device)

    def weights_log(self, step: int, total: int) -> dict[str, float]:
        """This step's weights for metrics.jsonl: ``lambda`` and ``law_weight_k``."""
        with torch.no_grad():
            m = self.law_multipliers().tolist()
        return {"lambda": lambda_at(step, total, self.cfg), **{f"law_weight_{k}": m[k] for k in range(NUM_LAWS)}}

    def observe_validation(self, line: dict) -> None:
        """The validation rule: a_k = MAE_k / mean MAE, clipped to [1/b, b]."""
        if self.cfg.law_weighting != "validation":
            return
        mae = [float(line.get(f"val_mae_{k}", float("nan"))) for k in range(NUM_LAWS)]
        if not all(math.isfinite(x) for x in mae):
            return
        mean = sum(mae) / NUM_LAWS
        if mean <= 0:
            return
        b = self.cfg.adaptive_bound
        self.factors = [min(b, max(1.0 / b, x / mean)) for x in mae]

    # ---------------------------------------------------------------- the loss

    def combine(self, lm_loss: torch.Tensor, per_law: torch.Tensor, deep: torch.Tensor, step: int,
                total: int) -> torch.Tensor:
        """LM + lambda(step) * (sum_k m_k MSE_k + mu * deep) (+ sum_k s_k for the uncertainty rule)."""
        m = self.law_multipliers()
        ethics = (m * per_law.float()).sum() + self.cfg.deep_supervision_weight * deep
        loss = lm_loss + lambda_at(step, total, self.cfg) * ethics
        s = self.log_var()
        if s is not None:  # Kendall's regulariser, scaled like the term it balances
            loss = loss + lambda_at(step, total, self.cfg) * (self.priority * s).sum()
        return loss

    def deep_loss(self, out, batch, kind: str = "mse") -> torch.Tensor:
        """The per-layer term with this objective's layer weights (the model's own when equal)."""
        mask = batch.get("target_mask", batch.get("attention_mask"))
        if batch.get("target_weight") is not None:
            mask = mask.to(batch["target_weight"].dtype) * batch["target_weight"]
        mon = per_layer_mse(out.layer_scores.float(), batch["law_targets"], mask, kind)  # (L, K)
        val = per_layer_mse(out.value_scores.float(), batch["law_targets"], mask, kind)
        per_layer = ((mon + val) * self.priority).sum(-1) / 2  # (L,)
        w = self.layer_weights if self.layer_weights is not None else torch.ones_like(per_layer)
        return (per_layer * w).mean()

    def forward(self, model, batch: dict, step: int, total: int, *, layer_scores: bool = False):
        """(model output, loss, extras to log) for one micro-batch."""
        need_layers = layer_scores or self.layer_weights is not None
        out = model(**batch, output_layer_scores=need_layers) if need_layers else model(**batch)
        if self.plain:
            return out, out.loss, {}
        config = getattr(model, "config", None) or getattr(getattr(model, "module", None), "config", None)
        kind = getattr(config, "ethics_loss_kind", "mse")  # the model's own (a DDP wrapper has it on .module)
        deep = self.deep_loss(out, batch, kind) if self.layer_weights is not None else out.deep_loss
        loss = self.combine(out.lm_loss, out.ethics_loss_per_law, deep, step, total)
        return out, loss, {"deep_loss_weighted": deep.detach()} if self.layer_weights is not None else {}

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """JSON-able state for a checkpoint (the log-variances' optimizer state is the optimizer's)."""
        raw = self.raw_log_var.detach().cpu().tolist() if self.raw_log_var is not None else None
        return {"raw_log_var": raw, "factors": list(self.factors)}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            return
        if self.raw_log_var is not None and state.get("raw_log_var") is not None:
            with torch.no_grad():
                self.raw_log_var.copy_(torch.tensor(state["raw_log_var"], dtype=torch.float32))
        if state.get("factors") is not None:
            self.factors = [float(x) for x in state["factors"]]


def make_objective(cfg, model, accelerator, plan, emit) -> EthicsObjective:
    """The default objective of a run (``kala train``): the model's priorities and cfg's weights."""
    from kala_engine.train.ethics_layers import layer_supervision

    conf = model.config
    return EthicsObjective(cfg, list(conf.law_weights), layer_supervision(cfg, conf.num_hidden_layers),
                           device=accelerator.device)
