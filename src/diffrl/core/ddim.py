"""One DDIM step as a Gaussian policy, with the log-density of the chosen action.

Adapted from diffusers' `DDIMScheduler.step` (diffusers 0.42; formula (12) of the DDIM
paper) in the way kvablack/ddpo-pytorch's `ddim_with_logprob.py` does. Changes from
diffusers: timesteps may differ per sample (so one UNet call can train several
denoising steps at once), the previous sample may be given instead of drawn (to
re-evaluate a stored trajectory), and the log-probability of x_{t-1} is returned.
No sample clipping or thresholding (SD 1.x/2.x do not use them).

Notation (algorithms.md section 1):  abar_t = alphas_cumprod[t],
    x0_pred = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    mu      = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma_t^2) eps
    x_{t-1} ~ N(mu, sigma_t^2 I)
eta = 0 is diffusers' default DDIM sampler, deterministic: x_{t-1} = mu, a point mass with no log-density
(evaluation only; the policy gradient needs eta > 0).
"""
from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Reduce = Literal["mean", "sum"]


class StepResult(NamedTuple):
    prev_sample: Tensor  # (B, C, h, w)  x_{t-1}
    log_prob: Tensor  # (B,)  log pi(x_{t-1} | x_t, c), reduced over latent dimensions
    mean: Tensor  # (B, C, h, w)  mu
    std: Tensor  # (B, 1, 1, 1)  sigma_t


def x0_and_epsilon(model_output: Tensor, sample: Tensor, abar_t: Tensor, prediction_type: str) -> tuple[Tensor, Tensor]:
    """(x0_pred, eps) implied by the model output: 'epsilon' (SD 1.x, SD 2.0-base) or 'v_prediction' (SD 2.x 768-v,
    zero-terminal-SNR models). For v, both come straight from v = sqrt(abar) eps - sqrt(1 - abar) x0, without dividing
    by sqrt(abar_t): a zero-terminal-SNR schedule has abar_T = 0 at its first sampling step."""
    if prediction_type == "epsilon":
        return predicted_x0(sample, model_output, abar_t), model_output
    if prediction_type == "v_prediction":
        a, s = abar_t.sqrt(), (1 - abar_t).sqrt()
        return a * sample - s * model_output, a * model_output + s * sample
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def noised_with_target(z0: Tensor, eps: Tensor, abar_t: Tensor, prediction_type: str) -> tuple[Tensor, Tensor]:
    """(z_t, target) of the denoiser's own training loss: z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps (q(z_t | z_0)),
    and what the model regresses on at z_t: eps, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) z0 (diffusers'
    `get_velocity`). abar_t: broadcastable to z0."""
    a, s = abar_t.sqrt(), (1 - abar_t).sqrt()
    if prediction_type == "epsilon":
        target = eps
    elif prediction_type == "v_prediction":
        target = a * eps - s * z0
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    return a * z0 + s * eps, target


def predicted_x0(sample: Tensor, eps: Tensor, abar_t: Tensor) -> Tensor:
    """x0_pred = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): the clean sample the noise estimate implies."""
    return (sample - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, reduce: Reduce = "mean") -> Tensor:
    """log N(x; mean, std^2 I), reduced over all but the batch dimension.

    "mean" (DDPO's convention) keeps ratios of 16k-dimensional densities finite; "sum" is the true density.
    """
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    dims = tuple(range(1, x.ndim))
    return log_density.mean(dim=dims) if reduce == "mean" else log_density.sum(dim=dims)


def gaussian_kl(mean: Tensor, ref_mean: Tensor, std: Tensor, reduce: Reduce = "mean") -> Tensor:
    """KL(N(mean, std^2 I) || N(ref_mean, std^2 I)) = |mean - ref_mean|^2 / (2 std^2), reduced like the log-density.

    Both policies share sigma_t (it depends on the schedule only), so the KL of one step is a scaled squared
    distance of the means; (B,) per sample.
    """
    kl = (mean - ref_mean) ** 2 / (2 * std**2)
    dims = tuple(range(1, mean.ndim))
    return kl.mean(dim=dims) if reduce == "mean" else kl.sum(dim=dims)


def gaussian_action(mean: Tensor, std: Tensor, deterministic: bool, prev_sample: Tensor | None = None,
                    generator: torch.Generator | None = None, noise: Tensor | None = None,
                    reduce: Reduce = "mean") -> StepResult:
    """The action of a step with mean `mean` and std `std`, and its log-density: `prev_sample` when given (training
    re-evaluates stored actions), else mean + std * noise (noise from `noise`, else drawn from `generator`).

    `deterministic` (zero noise: DDIM eta = 0, flow noise_level = 0): the action is the mean and the log-prob NaN,
    since a point mass has no density; returned as is, not computed, so no log(0) or 0/0 is ever evaluated.
    """
    if deterministic:
        return StepResult(mean, torch.full(mean.shape[:1], float("nan"), device=mean.device, dtype=mean.dtype),
                          mean, std)
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator,
                                device=generator.device if generator else mean.device, dtype=mean.dtype)
        prev_sample = mean + std * noise.to(mean.device, mean.dtype)
    # The action is data, not a function of the parameters: only mu carries gradients.
    log_prob = gaussian_log_prob(prev_sample.detach().to(mean.dtype), mean, std, reduce)
    return StepResult(prev_sample, log_prob, mean, std)


def noise_std(abar_t: Tensor, abar_prev: Tensor, eta: float) -> Tensor:
    """sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))."""
    return eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).clamp(min=0).sqrt()


def abar_pair(timestep: Tensor, prev_timestep: Tensor, alphas_cumprod: Tensor,
              final_alpha_cumprod: Tensor | float) -> tuple[Tensor, Tensor]:
    """(abar_t, abar_prev) for integer timesteps; prev < 0 ("after the last step") uses final_alpha_cumprod."""
    final = torch.as_tensor(final_alpha_cumprod, dtype=alphas_cumprod.dtype, device=alphas_cumprod.device)
    table = torch.cat([alphas_cumprod, final.reshape(1)])  # index -1 -> final_alpha_cumprod
    device = alphas_cumprod.device
    prev_index = torch.where(prev_timestep >= 0, prev_timestep, torch.full_like(prev_timestep, -1))
    return table[timestep.to(device).long()], table[prev_index.to(device).long()]


def schedule_noise_stds(timesteps: Tensor, prev_timesteps: Tensor, alphas_cumprod: Tensor,
                        final_alpha_cumprod: Tensor | float, eta: float) -> Tensor:
    """sigma_t of every step of a sampling schedule, (T,), on the CPU."""
    return noise_std(*abar_pair(timesteps, prev_timesteps, alphas_cumprod, final_alpha_cumprod), eta).cpu()


def direction_coefficient(abar_t: Tensor, abar_prev: Tensor, eta: float) -> Tensor:
    """sqrt(1 - abar_prev - sigma_t^2), the weight of eps in mu, as sqrt((1 - abar_prev) (1 - eta^2 (1 - abar_t /
    abar_prev) / (1 - abar_t))): exactly 0 at zero terminal SNR's first step (abar_t = 0, eta = 1), where the
    difference of squares leaves a rounding residue of ~6e-8 whose root (2e-4) would leak eps into the mean."""
    return ((1 - abar_prev) * (1 - eta**2 * (1 - abar_t / abar_prev) / (1 - abar_t))).clamp(min=0).sqrt()


def x0_coefficient(abar_t: Tensor, abar_prev: Tensor, eta: float) -> Tensor:
    """d mu / d x0_pred at fixed x_t: how far the step's mean moves per unit change of the predicted clean image
    (eps follows x0_pred, since x_t = sqrt(abar_t) x0_pred + sqrt(1 - abar_t) eps).

    sqrt(abar_prev) - sqrt(1 - abar_prev - sigma_t^2) sqrt(abar_t / (1 - abar_t)); at eta = 1 this is DDPM's
    posterior coefficient (abar_prev - abar_t) / (sqrt(abar_prev) (1 - abar_t)). It is small where the layout is
    decided: 0.042 at the first of 10 steps under a zero-terminal-SNR schedule, against a sigma_t of 0.999.
    """
    return abar_prev.sqrt() - direction_coefficient(abar_t, abar_prev, eta) * (abar_t / (1 - abar_t)).sqrt()


def schedule_x0_coefficients(timesteps: Tensor, prev_timesteps: Tensor, alphas_cumprod: Tensor,
                             final_alpha_cumprod: Tensor | float, eta: float) -> Tensor:
    """`x0_coefficient` of every step of a sampling schedule, (T,), on the CPU."""
    abar_t, abar_prev = abar_pair(timesteps, prev_timesteps, alphas_cumprod, final_alpha_cumprod)
    return x0_coefficient(abar_t, abar_prev, eta).cpu()


def trained_steps(first_step: int, end_step: int, stds: Tensor, min_std: float) -> Tensor:
    """Indices in [first_step, end_step) whose sigma_t >= min_std.

    The score-function gradient of a step scales as 1/sigma_t: the last, near-deterministic steps
    (sigma 0.04 and 0.02 at 10 DDIM steps, against 0.26-0.78 before) dominate the summed gradient
    while barely changing the image, so their noise drowns the reward signal of the others.
    """
    steps = torch.arange(first_step, max(first_step, end_step))  # an empty range when end_step <= first_step
    return steps[stds[first_step:end_step] >= min_std]


def ddim_step_with_log_prob(
    model_output: Tensor,
    timestep: Tensor,
    prev_timestep: Tensor,
    sample: Tensor,
    alphas_cumprod: Tensor,
    final_alpha_cumprod: Tensor | float,
    eta: float,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    prediction_type: str = "epsilon",
    reduce: Reduce = "mean",
) -> StepResult:
    """x_t -> x_{t-1}. `timestep`/`prev_timestep`: (B,) integer tensors; prev < 0 means "after the last step".

    Args:
        model_output: (B, C, h, w) the (guided) UNet output at x_t.
        sample: (B, C, h, w) x_t.
        alphas_cumprod: (num_train_timesteps,) the scheduler's abar table.
        final_alpha_cumprod: abar used when prev_timestep < 0 (diffusers' `final_alpha_cumprod`).
        eta: DDIM stochasticity, >= 0. 0 is the deterministic DDIM step (diffusers' default): prev_sample = mu,
            noise ignored, log_prob NaN (a point mass has no density), and scoring a given prev_sample raises
            ValueError.
        prev_sample: x_{t-1} to score instead of drawing one (training re-evaluates stored actions).
        generator: randomness for drawing x_{t-1}.
        noise: (B, C, h, w) standard normal noise to draw x_{t-1} = mu + sigma * noise with, instead of `generator`.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta == 0 and prev_sample is not None:
        raise ValueError("eta = 0 is the deterministic DDIM step: it has no log-probability to score with")
    shape = (-1, *([1] * (sample.ndim - 1)))  # (B, 1, 1, 1): broadcasts against (B, C, h, w)
    abar_t, abar_prev = (a.to(sample.device, sample.dtype).reshape(shape)
                         for a in abar_pair(timestep, prev_timestep, alphas_cumprod, final_alpha_cumprod))

    x0_pred, eps = x0_and_epsilon(model_output, sample, abar_t, prediction_type)
    std = noise_std(abar_t, abar_prev, eta)
    mean = abar_prev.sqrt() * x0_pred + direction_coefficient(abar_t, abar_prev, eta) * eps
    return gaussian_action(mean, std, eta == 0, prev_sample, generator, noise, reduce)
