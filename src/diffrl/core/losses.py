"""Surrogate losses over (sample, timestep) pairs. All inputs are flat (M,) tensors.

Minimizing these maximizes the objective; the mean over pairs stands for
E_c[1/K sum_i sum_t ...] up to the constant number of trained steps, which the
learning rate absorbs (as in DDPO).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class LossTerms(NamedTuple):
    loss: Tensor  # scalar, to minimize
    approx_kl: Tensor  # 0.5 * mean((logp - logp_old)^2)
    clip_fraction: Tensor  # share of pairs whose ratio left [1 - eps, 1 + eps]
    ratio_mean: Tensor


def clipped_surrogate(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float) -> LossTerms:
    """PPO: loss = mean(max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps))), rho = exp(logp - logp_old)."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = 0.5 * ((log_prob - old_log_prob) ** 2).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
    return LossTerms(loss, approx_kl, clip_fraction, ratio.detach().mean())


def policy_gradient(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor) -> LossTerms:
    """REINFORCE: loss = -mean(A * log pi). On-policy: the diagnostics use old_log_prob only for reporting."""
    loss = -(advantages * log_prob).mean()
    with torch.no_grad():
        diff = log_prob - old_log_prob
        approx_kl = 0.5 * (diff**2).mean()
        ratio_mean = torch.exp(diff).mean()
    return LossTerms(loss, approx_kl, torch.zeros((), device=log_prob.device), ratio_mean)
