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

from diffrl.core.ddim import ddim_step_with_log_prob, noised_with_target, schedule_noise_stds, schedule_x0_coefficients
from diffrl.core.flow import flow_noise_std, flow_noised_with_target, flow_sde_step_with_log_prob, flow_x0_coefficient
from diffrl.models.pipeline import is_sd3


@dataclass
class Trajectories:
    latents: Tensor  # (N, T+1, C, h, w)  x_T ... x_0 in sampling order
    log_probs: Tensor  # (N, T)  log pi_old of each step, stored at sampling time (NaN at zero noise: a point mass
    #                    has none; eta = 0 / flow_noise_level = 0 is for evaluation, which never reads them)
    timesteps: Tensor  # (T,)  scheduler timesteps, descending (flow models: sigmas in (0, 1])
    prev_timesteps: Tensor  # (T,)  the timestep each step lands on (-1 after the last; flow: the next sigma, 0 last)
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

    def x0_coefficients(self, timesteps: Tensor, prev_timesteps: Tensor) -> Tensor:
        """d mu / d x0_pred of each step of a schedule, (T,) (`core.ddim.x0_coefficient`)."""
        return schedule_x0_coefficients(timesteps, prev_timesteps, self.alphas_cumprod, self.final_alpha_cumprod,
                                        self.eta)

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

    def denoising_loss(self, z0: Tensor, u: Tensor, eps: Tensor, cond: Tensor) -> Tensor:
        """(B,) the UNet's own training loss (train.ptx_coef), without guidance: the MSE of its output against its
        target (eps or v) on z0 noised with eps to the timestep floor(u T) of its T-step training schedule."""
        t = (u * len(self.alphas_cumprod)).long().clamp(max=len(self.alphas_cumprod) - 1)
        z_t, target = noised_with_target(z0, eps, self.alphas_cumprod[t].view(-1, 1, 1, 1), self.prediction_type)
        output = self.unet(z_t, t, encoder_hidden_states=cond).sample
        return ((output.float() - target) ** 2).mean(dim=(1, 2, 3))

    def schedule(self, scheduler, num_steps: int, device) -> tuple[Tensor, Tensor]:
        """The DDIM timesteps of `num_steps` steps and the timestep each lands on (`ddim_timesteps`)."""
        return ddim_timesteps(scheduler, num_steps, device)


@dataclass
class PromptEmbeds:
    """SD3's two prompt encodings, indexed and expanded together as one tensor of embeddings would be."""

    embeds: Tensor  # (P, L, D) token embeddings (CLIP-L/G and T5)
    pooled: Tensor  # (P, D') pooled CLIP embeddings

    def __getitem__(self, index) -> "PromptEmbeds":
        return PromptEmbeds(self.embeds[index], self.pooled[index])

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def expand(self, n: int, *_) -> "PromptEmbeds":
        return PromptEmbeds(self.embeds.expand(n, -1, -1), self.pooled.expand(n, -1))

    @property
    def device(self) -> torch.device:
        return self.embeds.device


def cat_embeds(parts: list) -> Tensor | PromptEmbeds:
    """torch.cat for prompt embeddings of either kind."""
    if isinstance(parts[0], PromptEmbeds):
        return PromptEmbeds(torch.cat([p.embeds for p in parts]), torch.cat([p.pooled for p in parts]))
    return torch.cat(parts)


@dataclass
class FlowPolicy:
    """The policy of a rectified-flow transformer (SD3) under Flow-GRPO's SDE sampler (`core.flow`).

    Same interface as `Policy`; the schedule's "timesteps" are the scheduler's sigmas (1 -> 0), and the
    transformer sees sigma * 1000 as diffusers' SD3 pipeline passes it. Named `unet` so the trainer needn't care.
    """

    unet: torch.nn.Module  # the SD3 transformer (may be the DDP-wrapped module)
    noise_level: float  # Flow-GRPO's a (sample.flow_noise_level)
    guidance_scale: float
    logprob_reduce: str = "mean"

    def noise_stds(self, timesteps: Tensor, prev_timesteps: Tensor) -> Tensor:
        """The std of each step's Gaussian, (T,), on the CPU like `Policy.noise_stds` (the trained steps index it)."""
        return flow_noise_std(timesteps, prev_timesteps, self.noise_level).cpu()

    def x0_coefficients(self, timesteps: Tensor, prev_timesteps: Tensor) -> Tensor:
        """d mu / d x0_pred of each step, (T,) (`core.flow.flow_x0_coefficient`)."""
        return flow_x0_coefficient(timesteps, prev_timesteps, self.noise_level).cpu()

    def guided_velocity(self, x: Tensor, t: Tensor, cond: PromptEmbeds, uncond: PromptEmbeds) -> Tensor:
        """v = v_u + w (v_c - v_u) in one transformer call on the doubled batch. x: (M, C, h, w), t: (M,) sigmas."""
        timestep = t * 1000
        if self.guidance_scale == 1.0:
            return self.unet(hidden_states=x, timestep=timestep, encoder_hidden_states=cond.embeds,
                             pooled_projections=cond.pooled).sample
        out = self.unet(hidden_states=torch.cat([x, x]), timestep=torch.cat([timestep, timestep]),
                        encoder_hidden_states=torch.cat([uncond.embeds, cond.embeds]),
                        pooled_projections=torch.cat([uncond.pooled, cond.pooled])).sample
        v_uncond, v_cond = out.chunk(2)
        return v_uncond + self.guidance_scale * (v_cond - v_uncond)

    def step(self, x: Tensor, t: Tensor, prev_t: Tensor, cond: PromptEmbeds, uncond: PromptEmbeds,
             prev_sample: Tensor | None = None, noise: Tensor | None = None):
        v = self.guided_velocity(x, t, cond, uncond)
        return flow_sde_step_with_log_prob(v, t, prev_t, x, self.noise_level, prev_sample=prev_sample, noise=noise,
                                           reduce=self.logprob_reduce)

    def denoising_loss(self, z0: Tensor, u: Tensor, eps: Tensor, cond: PromptEmbeds) -> Tensor:
        """(B,) the transformer's own training loss (train.ptx_coef), without guidance: the MSE of its velocity
        against eps - z0 at sigma = u (uniform draws; SD3 itself was trained on logit-normal ones)."""
        x_t, target = flow_noised_with_target(z0, eps, u.view(-1, 1, 1, 1))
        output = self.unet(hidden_states=x_t, timestep=u * 1000, encoder_hidden_states=cond.embeds,
                           pooled_projections=cond.pooled).sample
        return ((output.float() - target) ** 2).mean(dim=(1, 2, 3))

    def schedule(self, scheduler, num_steps: int, device) -> tuple[Tensor, Tensor]:
        """The flow-matching scheduler's sigmas (shift applied), descending, and each step's next sigma (0 last)."""
        scheduler.set_timesteps(num_steps, device=device)
        sigmas = scheduler.sigmas.to(device, torch.float32)
        return sigmas[:-1], sigmas[1:]


def make_policy(pipe, network: torch.nn.Module, device, sample_config) -> "Policy | FlowPolicy":
    """The policy of `network` (the pipeline's denoiser, maybe with adapters) under `sample_config`."""
    s = sample_config
    if is_sd3(pipe):
        return FlowPolicy(unet=network, noise_level=s.flow_noise_level, guidance_scale=s.guidance_scale,
                          logprob_reduce=s.logprob_reduce)
    return Policy.from_scheduler(network, pipe.scheduler, device, s.eta, s.guidance_scale, s.logprob_reduce)


def ddim_timesteps(scheduler, num_steps: int, device) -> tuple[Tensor, Tensor]:
    """The scheduler's descending timesteps and, for each, the timestep it steps to (-1 past the end)."""
    scheduler.set_timesteps(num_steps, device=device)
    timesteps = scheduler.timesteps.long()
    prev = timesteps - scheduler.config.num_train_timesteps // num_steps
    return timesteps, prev


# StableDiffusion3Pipeline.encode_prompt's default T5 length (sample.max_sequence_length's default).
SD3_MAX_SEQUENCE_LENGTH = 256


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], device,
                   max_sequence_length: int = SD3_MAX_SEQUENCE_LENGTH) -> Tensor | PromptEmbeds:
    """(P, L, D) text embeddings (SD3: with the pooled (P, D') ones, as PromptEmbeds), each prompt encoded once.

    SD3: L = the CLIP tokens (77) + `max_sequence_length` T5 tokens (sample.max_sequence_length); SD's L is its
    tokenizer's and `max_sequence_length` is ignored.
    """
    if is_sd3(pipe):
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=max_sequence_length)
        return PromptEmbeds(embeds.float(), pooled.float())
    embeds, _ = pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
    return embeds


def encode_prompts_trainable(tokenizer, text_encoder: torch.nn.Module, prompts: list[str], device) -> Tensor:
    """(P, L, D) SD 1.x/2.x text embeddings through `text_encoder` (maybe DDP-wrapped), with gradient: what
    `pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)[0]` computes (no clip skip), for
    model.train_text_encoder's training chunks."""
    module = getattr(text_encoder, "module", text_encoder)  # DDP keeps the config and dtype on the module it wraps
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    mask = tokens.attention_mask.to(device) if getattr(module.config, "use_attention_mask", False) else None
    embeds = text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]  # the last hidden state
    return embeds.to(module.dtype)


@torch.no_grad()
def encode_images(vae, images: Tensor) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> scaled latents (N, C, h, w), the posterior's mean: `decode_images`'
    inverse. SD3's VAE also shifts: (z - shift) * scale."""
    z = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean.float()
    shift = getattr(vae.config, "shift_factor", None)
    return (z - shift if shift is not None else z) * vae.config.scaling_factor


@torch.no_grad()
def decode_images(vae, latents: Tensor, chunk: int = 64) -> np.ndarray:
    """x_0 latents (N, C, h, w) -> uint8 images (N, H, W, 3). SD3's VAE also shifts: z / scale + shift."""
    images = []
    shift = getattr(vae.config, "shift_factor", None)
    for part in latents.split(chunk):
        z = part.to(vae.dtype) / vae.config.scaling_factor
        decoded = vae.decode(z + shift if shift is not None else z).sample
        images.append(((decoded.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(images).cpu().numpy()


@torch.no_grad()
def sample_trajectories(
    policy: Policy | FlowPolicy,
    vae,
    prompt_embeds: Tensor | PromptEmbeds,
    uncond_embed: Tensor | PromptEmbeds,
    k: int,
    timesteps: Tensor,
    prev_timesteps: Tensor,
    latent_shape: tuple[int, int, int],
    generator: torch.Generator | None,
    branch_step: int | None = None,
    branches: int = 1,
    on_step=None,
    noise_source: Callable[[tuple[int, ...]], Tensor] | None = None,
    chunk_size: int | None = None,
) -> Trajectories:
    """Sample K trajectories for each of P prompts in one batch (P*K*B samples).

    prompt_embeds: (P, L, D); uncond_embed: (1, L, D). With `branch_step` s, steps [0, s) run on P*K
    trajectories, then each is copied into `branches` siblings that run steps [s, T) with independent
    noise. Noise is drawn from `generator` (kept on the CPU so runs reproduce across devices), or from
    `noise_source(shape)` when given (fixed-seed evaluation draws each sample's noise from its own generator).
    `chunk_size`: samples per denoiser call (None: all); each step's noise is drawn for every sample first, so the
    trajectories do not depend on it (up to floating-point rounding).
    """
    if noise_source is None:
        noise_source = lambda shape: torch.randn(shape, generator=generator)  # noqa: E731
    device = prompt_embeds.device
    num_prompts = len(prompt_embeds)
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
        noise = noise_source(tuple(x.shape))
        chunks = [policy.step(xs, ts, prev_ts, prompt_embeds[index], uncond_embed.expand(len(xs), -1, -1), noise=ns)
                  for xs, ts, prev_ts, index, ns in zip(*(v.split(chunk_size or n)
                                                          for v in (x, t, prev_t, prompt_index, noise)))]
        x = torch.cat([c.prev_sample for c in chunks])
        latents.append(x)
        log_probs.append(torch.cat([c.log_prob for c in chunks]))
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
