"""Preference losses on sequence log-probabilities: DPO, SimPO and ORPO (pure torch).

The formulas are TRL's (tests/engine/test_align.py checks them against TRL 1.16 on the same
log-probabilities, <= 1e-6):

- DPO (Rafailov et al. 2023; TRL ``DPOTrainer``, loss_type "sigmoid"):
  ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` with summed reply log-probs; the
  rewards are ``beta * (pi - ref)``.
- SimPO (Meng et al. 2024; TRL ``CPOTrainer``, loss_type "simpo", cpo_alpha 0):
  ``-log sigmoid(beta * (avg_c - avg_r) - gamma)`` with per-token averaged log-probs, no reference;
  rewards ``beta * avg``.
- ORPO (Hong et al. 2024; TRL ``ORPOTrainer``): ``NLL(chosen) - beta * log sigmoid(log odds ratio)``
  with ``log odds(p) = avg - log(1 - exp(avg))``, no reference; rewards ``beta * avg``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: methods that need a reference model's log-probabilities
NEEDS_REFERENCE = ("dpo",)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the log-probabilities of the labelled tokens, their count) per sequence, (B,) each.

    ``labels`` (B, T) are not shifted (-100: not scored), as the model's; ``logits`` (B, T, V).
    Cross-entropy without reduction: no (B, T, V) log-softmax copy.
    """
    shift = F.pad(labels, (0, 1), value=-100)[:, 1:]
    mask = shift != -100
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shift.reshape(-1), ignore_index=-100,
                         reduction="none").view(shift.shape)
    return -(ce * mask).sum(-1), mask.sum(-1)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@dataclass
class PreferenceOutput:
    loss: torch.Tensor  # scalar: the mean preference loss (ORPO: including its NLL term)
    rewards_chosen: torch.Tensor  # (B,) detached
    rewards_rejected: torch.Tensor  # (B,) detached
    nll_chosen: torch.Tensor  # scalar: per-token NLL of the chosen replies (ORPO's SFT term; logged for all)

    @property
    def margin(self) -> torch.Tensor:
        return self.rewards_chosen - self.rewards_rejected

    @property
    def accuracy(self) -> torch.Tensor:
        return (self.rewards_chosen > self.rewards_rejected).float()


def preference_loss(method: str, beta: float, chosen: torch.Tensor, rejected: torch.Tensor,
                    n_chosen: torch.Tensor, n_rejected: torch.Tensor, ref_chosen: torch.Tensor | None = None,
                    ref_rejected: torch.Tensor | None = None, simpo_gamma: float = 0.5) -> PreferenceOutput:
    """The ``method``'s loss from summed reply log-probs (B,) and their token counts (B,)."""
    nll = -chosen.sum() / n_chosen.sum().clamp(min=1)
    if method == "dpo":
        if ref_chosen is None or ref_rejected is None:
            raise ValueError("DPO needs the reference model's log-probabilities")
        rc, rr = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
        losses = -F.logsigmoid(rc - rr)
        return PreferenceOutput(losses.mean(), rc.detach(), rr.detach(), nll)
    avg_c = chosen / n_chosen.clamp(min=1)
    avg_r = rejected / n_rejected.clamp(min=1)
    if method == "simpo":
        losses = -F.logsigmoid(beta * (avg_c - avg_r - simpo_gamma / beta))
        return PreferenceOutput(losses.mean(), beta * avg_c.detach(), beta * avg_r.detach(), nll)
    if method == "orpo":
        avg_c, avg_r = avg_c.float(), avg_r.float()
        log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
        loss = nll - (beta * F.logsigmoid(log_odds)).mean()
        return PreferenceOutput(loss, beta * avg_c.detach(), beta * avg_r.detach(), nll)
    raise ValueError(f"unknown preference method {method!r}; choose dpo, orpo or simpo")
