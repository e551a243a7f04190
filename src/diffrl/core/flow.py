"""One rectified-flow (SD3) step as a Gaussian policy, with the log-density of the chosen action.

The SDE sampler of Flow-GRPO (Liu et al. 2025; yifan123/flow_grpo, `sde_step_with_logprob` in
`diffusers_patch/sd3_sde_with_logprob.py`, sde_type="sde"). Changes from it: sigmas are given
per sample (so one transformer call can train several denoising steps at once), noise may be
passed in, the log-prob can be summed, and noise_level = 0 gives diffusers' Euler step.

Notation: time t = sigma runs from 1 (noise) to 0 (data),
    x_t = (1 - t) x_0 + t eps,    velocity v = eps - x_0,   the model predicts v.
The Euler ODE step of diffusers' `FlowMatchEulerDiscreteScheduler` is x_{t+dt} = x_t + v dt with
dt = sigma_next - sigma < 0. Since x_0 = x_t - t v and eps = x_t + (1 - t) v, the score is
grad log p_t(x_t) = -eps / t = -(x_t + (1 - t) v) / t, and the reverse-time SDE with diffusion
sigma_t and the same marginals as the ODE, discretised by Euler-Maruyama, is
    sigma_t = noise_level * sqrt(t / (1 - t))                        (Flow-GRPO's std_dev_t)
    mu      = x_t (1 + sigma_t^2 / (2 t) dt) + v (1 + sigma_t^2 (1 - t) / (2 t)) dt
    std     = sigma_t sqrt(-dt)
    x_{t+dt} ~ N(mu, std^2 I)
"""
from __future__ import annotations

import torch
from torch import Tensor

from diffrl.core.ddim import Reduce, StepResult, gaussian_action


def _as_batch(value: Tensor | float, like: Tensor) -> Tensor:
    """A per-sample scalar as (B, 1, 1, 1) (or (1, 1, 1, 1) for one shared value), in `like`'s dtype."""
    return torch.as_tensor(value).to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def flow_sigma_t(sigma: Tensor, sigma_next: Tensor, noise_level: float) -> Tensor:
    """sigma_t = noise_level * sqrt(t / (1 - t)), the SDE's diffusion coefficient at t = sigma.

    At t = 1 (SD3's first step) this is infinite; like Flow-GRPO we then put sigmas[1] in the
    denominator, which is this step's sigma_next, so no schedule needs to be passed in.
    """
    return noise_level * (sigma / (1 - torch.where(sigma == 1, sigma_next, sigma))).sqrt()


def flow_noise_std(sigma: Tensor, sigma_next: Tensor, noise_level: float) -> Tensor:
    """std = sigma_t * sqrt(sigma - sigma_next), the per-step noise std of x_{t+dt}."""
    return flow_sigma_t(sigma, sigma_next, noise_level) * (sigma - sigma_next).sqrt()


def flow_x0_coefficient(sigma: Tensor, sigma_next: Tensor, noise_level: float) -> Tensor:
    """d mu / d x0_pred of the SDE step at fixed x_t, x0_pred = x_t - sigma v: (-dt / sigma) (1 + sigma_t^2 (1 - sigma) / (2 sigma))
    (the velocity's coefficient in mu, times d v / d x0_pred = -1 / sigma)."""
    sigma_t = flow_sigma_t(sigma, sigma_next, noise_level)
    return (sigma - sigma_next) / sigma * (1 + sigma_t**2 * (1 - sigma) / (2 * sigma))


def flow_noised_with_target(x0: Tensor, eps: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(x_t, target) of the flow model's own training loss (rectified flow, as SD3 is trained): x_t = (1 - t) x0 + t eps
    at t = sigma, and the velocity it regresses on, v = eps - x0. sigma: broadcastable to x0."""
    return (1 - sigma) * x0 + sigma * eps, eps - x0


def flow_sde_step_with_log_prob(
    model_output: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    sample: Tensor,
    noise_level: float,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    reduce: Reduce = "mean",
) -> StepResult:
    """x_t -> x_{t+dt}. `sigma`/`sigma_next`: (B,) tensors (or one float for all), sigma_next < sigma.

    Args:
        model_output: (B, C, h, w) the (guided) velocity prediction v at x_t.
        sample: (B, C, h, w) x_t.
        noise_level: Flow-GRPO's a (0.7 in their SD3 runs). 0 gives the deterministic Euler ODE step
            (diffusers' scheduler.step): prev_sample = mu, noise ignored, log_prob NaN (a point mass
            has no density), and scoring a given prev_sample raises ValueError.
        prev_sample: x_{t+dt} to score instead of drawing one (training re-evaluates stored actions).
        generator: randomness for drawing x_{t+dt}.
        noise: (B, C, h, w) standard normal noise to draw x_{t+dt} = mu + std * noise with, instead of `generator`.
    """
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if noise_level == 0 and prev_sample is not None:
        raise ValueError("noise_level = 0 is the deterministic ODE step: it has no log-probability to score with")
    # bf16 overflows in mu (Flow-GRPO upcasts too); float64 stays float64.
    dtype = torch.promote_types(sample.dtype, torch.float32)
    model_output, sample = model_output.to(dtype), sample.to(dtype)
    sigma, sigma_next = _as_batch(sigma, sample), _as_batch(sigma_next, sample)
    dt = sigma_next - sigma

    sigma_t = flow_sigma_t(sigma, sigma_next, noise_level)
    mean = (sample * (1 + sigma_t**2 / (2 * sigma) * dt)
            + model_output * (1 + sigma_t**2 * (1 - sigma) / (2 * sigma)) * dt)
    std = (sigma_t * (-dt).sqrt()).expand(sample.shape[0], *([1] * (sample.ndim - 1)))

    return gaussian_action(mean, std, noise_level == 0, prev_sample, generator, noise, reduce)  # 0: Euler ODE step
