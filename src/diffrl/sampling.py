"""Sampling K images per prompt in one batch, keeping the whole trajectory and its log-probs.

Optionally branches every trajectory into B copies at a given step (B2-DiffuRL): the
prefix is computed once and shared; siblings continue with independent noise.
Sample layout: index = (prompt * K + k) * B + branch, so groups of siblings are contiguous.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffrl.core.ddim import ddim_step_with_log_prob, schedule_noise_stds


@dataclass
class Trajectories:
    latents: Tensor  # (N, T+1, C, h, w)  x_T ... x_0 in sampling order
    log_probs: Tensor  # (N, T)  log pi_old of each step, stored at sampling time
    timesteps: Tensor  # (T,)  scheduler timesteps, descending
    prev_timesteps: Tensor  # (T,)  the timestep each step lands on (-1 after the last)
    prompt_index: Tensor  # (N,)  row of the prompt embedding of each sample
    images: np.ndarray  # (N, H, W, 3) uint8

    def __len__(self) -> int:
        return self.latents.shape[0]


@dataclass
class Policy:
    """What sampling and training need from a pipeline: the UNet call and the DDIM table."""

    unet: torch.nn.Module  # called for training (may be the DDP-wrapped module)
    alphas_cumprod: Tensor
    final_alpha_cumprod: Tensor
    prediction_type: str
    eta: float
    guidance_scale: float
    logprob_reduce: str = "mean"

    @classmethod
    def from_scheduler(cls, unet: torch.nn.Module, scheduler, device, eta: float, guidance_scale: float,
                       logprob_reduce: str = "mean") -> "Policy":
        """The policy of `unet` under a diffusers DDIM scheduler's abar table, moved to `device`."""
        return cls(unet=unet, alphas_cumprod=scheduler.alphas_cumprod.to(device),
                   final_alpha_cumprod=scheduler.final_alpha_cumprod.to(device),
                   prediction_type=scheduler.config.prediction_type, eta=eta, guidance_scale=guidance_scale,
                   logprob_reduce=logprob_reduce)

    def noise_stds(self, timesteps: Tensor, prev_timesteps: Tensor) -> Tensor:
        """sigma_t of each step of a schedule, (T,)."""
        return schedule_noise_stds(timesteps, prev_timesteps, self.alphas_cumprod, self.final_alpha_cumprod, self.eta)

    def guided_noise(self, x: Tensor, t: Tensor, cond: Tensor, uncond: Tensor) -> Tensor:
        """eps = eps_u + w (eps_c - eps_u) in one UNet call on the doubled batch. x: (M, C, h, w), t: (M,)."""
        if self.guidance_scale == 1.0:
            return self.unet(x, t, encoder_hidden_states=cond).sample
        out = self.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps_uncond, eps_cond = out.chunk(2)
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)

    def step(self, x: Tensor, t: Tensor, prev_t: Tensor, cond: Tensor, uncond: Tensor,
             prev_sample: Tensor | None = None, noise: Tensor | None = None):
        eps = self.guided_noise(x, t, cond, uncond)
        return ddim_step_with_log_prob(eps, t, prev_t, x, self.alphas_cumprod, self.final_alpha_cumprod, self.eta,
                                       prev_sample=prev_sample, noise=noise,
                                       prediction_type=self.prediction_type, reduce=self.logprob_reduce)


def ddim_timesteps(scheduler, num_steps: int, device) -> tuple[Tensor, Tensor]:
    """The scheduler's descending timesteps and, for each, the timestep it steps to (-1 past the end)."""
    scheduler.set_timesteps(num_steps, device=device)
    timesteps = scheduler.timesteps.long()
    prev = timesteps - scheduler.config.num_train_timesteps // num_steps
    return timesteps, prev


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], device) -> Tensor:
    """(P, L, D) text embeddings, each distinct prompt encoded once."""
    embeds, _ = pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
    return embeds


@torch.no_grad()
def decode_images(vae, latents: Tensor, chunk: int = 64) -> np.ndarray:
    """x_0 latents (N, C, h, w) -> uint8 images (N, H, W, 3)."""
    images = []
    for part in latents.split(chunk):
        decoded = vae.decode(part.to(vae.dtype) / vae.config.scaling_factor).sample
        images.append(((decoded.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(images).cpu().numpy()


@torch.no_grad()
def sample_trajectories(
    policy: Policy,
    vae,
    prompt_embeds: Tensor,
    uncond_embed: Tensor,
    k: int,
    timesteps: Tensor,
    prev_timesteps: Tensor,
    latent_shape: tuple[int, int, int],
    generator: torch.Generator | None,
    branch_step: int | None = None,
    branches: int = 1,
    on_step=None,
    noise_source: Callable[[tuple[int, ...]], Tensor] | None = None,
) -> Trajectories:
    """Sample K trajectories for each of P prompts in one batch (P*K*B samples).

    prompt_embeds: (P, L, D); uncond_embed: (1, L, D). With `branch_step` s, steps [0, s) run on P*K
    trajectories, then each is copied into `branches` siblings that run steps [s, T) with independent
    noise. Noise is drawn from `generator` (kept on the CPU so runs reproduce across devices), or from
    `noise_source(shape)` when given (fixed-seed evaluation draws each sample's noise from its own generator).
    """
    if noise_source is None:
        noise_source = lambda shape: torch.randn(shape, generator=generator)  # noqa: E731
    device = prompt_embeds.device
    num_prompts = prompt_embeds.shape[0]
    num_steps = len(timesteps)
    if branches > 1 and (branch_step is None or not 0 <= branch_step < num_steps):
        raise ValueError("branching needs a branch_step in [0, num_steps)")
    branch_step = num_steps if branch_step is None else branch_step
    prompt_index = torch.arange(num_prompts, device=device).repeat_interleave(k)  # (P*K,)
    # Latents and DDIM math stay fp32 even when the UNet runs in half precision (under autocast).
    x = noise_source((num_prompts * k, *latent_shape)).to(device, torch.float32)
    latents, log_probs = [x], []
    for i in range(num_steps):
        if i == branch_step and branches > 1:
            # Siblings share the prefix: repeat what is stored, never recompute it.
            latents = [z.repeat_interleave(branches, dim=0) for z in latents]
            log_probs = [lp.repeat_interleave(branches, dim=0) for lp in log_probs]
            prompt_index = prompt_index.repeat_interleave(branches)
            x = latents[-1]
        n = x.shape[0]
        t = timesteps[i].expand(n)
        prev_t = prev_timesteps[i].expand(n)
        result = policy.step(x, t, prev_t, prompt_embeds[prompt_index], uncond_embed.expand(n, -1, -1),
                             noise=noise_source(tuple(x.shape)))
        x = result.prev_sample
        latents.append(x)
        log_probs.append(result.log_prob)
        if on_step is not None:
            on_step(i, n)
    return Trajectories(
        latents=torch.stack(latents, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        timesteps=timesteps,
        prev_timesteps=prev_timesteps,
        prompt_index=prompt_index,
        images=decode_images(vae, x),
    )
