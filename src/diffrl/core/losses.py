"""Surrogate losses over (sample, timestep) pairs. All inputs are flat (M,) tensors.

Minimizing these maximizes the objective; the mean over pairs stands for
E_c[1/K sum_i sum_t ...] up to the constant number of trained steps, which the
learning rate absorbs (as in DDPO).

The clip range is in units of the importance ratio rho = exp(log pi - log pi_old), so what
"small" means depends on how the step log-density is reduced over the D latent dimensions
(`calibrated_clip_range`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class LossTerms(NamedTuple):
    loss: Tensor  # scalar, to minimize
    approx_kl: Tensor  # 0.5 * mean((logp - logp_old)^2)
    clip_fraction: Tensor  # share of pairs whose ratio left [1 - eps, 1 + eps]
    ratio_mean: Tensor
    ratio_min: Tensor
    ratio_max: Tensor


# Per-dimension trust region kappa = |mu_new - mu_old| / sigma_t that DDPO's clip 1e-4 on SD's D = 16,384
# latent dims amounts to (1e-4 * sqrt(16384) = 0.0128), and the ShapesWorld study's best 1e-3 on D = 256 (0.016).
CLIP_KAPPA = 0.015


def calibrated_clip_range(latent_dims: int, reduce: str, kappa: float = CLIP_KAPPA) -> float:
    """The clip range that lets each latent dimension's mean move about kappa * sigma_t.

    A step's log-ratio is sum_d (eps_d * delta_d / sigma - delta_d^2 / (2 sigma^2)) with eps ~ N(0, 1): for
    per-dimension changes delta_d / sigma = kappa it is about kappa * sqrt(D) summed and kappa / sqrt(D) averaged
    ("mean", DDPO). A fixed clip range therefore never acts under one reduction and always under the other.
    """
    if reduce == "mean":
        return kappa / math.sqrt(latent_dims)
    if reduce == "sum":
        return kappa * math.sqrt(latent_dims)
    raise ValueError(f"unknown reduction {reduce!r}; use mean or sum")


def noise_aware_step_weights(stds: Tensor, x0_coefficients: Tensor, steps: Tensor, power: float) -> Tensor:
    """Per-step weights of the surrogate, (T,): (sigma_t / c_t)^power over the trained `steps`, scaled to mean 1
    there (0 elsewhere); c_t = d mu_t / d x0_pred.

    A step's score-function gradient reaches the predicted image through c_t / sigma_t: at the first, high-noise
    steps, where the layout is decided, the mean moves the sample by a few percent of the noise it adds, so those
    steps get a small share of the update under uniform weights. power = 1 gives every step the same sensitivity
    of its log-density to x0_pred (TempFlow-GRPO weights its steps by their noise level for the same reason);
    power = 0 is uniform (DDPO).
    """
    ratio = (stds / x0_coefficients.abs().clamp(min=1e-12)) ** power
    weights = torch.zeros_like(stds)
    weights[steps] = ratio[steps] / ratio[steps].mean()
    return weights


def _diagnostics(log_prob: Tensor, old_log_prob: Tensor) -> tuple[Tensor, Tensor]:
    """(approx_kl, ratio) without gradients."""
    with torch.no_grad():
        diff = log_prob - old_log_prob
        return 0.5 * (diff**2).mean(), torch.exp(diff)


def clipped_surrogate(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float) -> LossTerms:
    """PPO: loss = mean(max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps))), rho = exp(logp - logp_old)."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    approx_kl, rho = _diagnostics(log_prob, old_log_prob)
    clip_fraction = ((rho - 1.0).abs() > clip_range).float().mean()
    return LossTerms(loss, approx_kl, clip_fraction, rho.mean(), rho.min(), rho.max())


def policy_gradient(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor) -> LossTerms:
    """REINFORCE: loss = -mean(A * log pi). On-policy: the diagnostics use old_log_prob only for reporting."""
    loss = -(advantages * log_prob).mean()
    approx_kl, rho = _diagnostics(log_prob, old_log_prob)
    return LossTerms(loss, approx_kl, torch.zeros((), device=log_prob.device), rho.mean(), rho.min(), rho.max())
