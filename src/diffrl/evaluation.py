"""Held-out evaluation with fixed seeds: every method sees the same initial noise for the same prompt.

The noise of image j of prompt i comes from a generator seeded by (seed, i, j) alone, so
results do not depend on batch size, method, or what training did to other RNG streams.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from diffrl.config import sampling_chunk_size
from diffrl.models.pipeline import denoiser, image_size
from diffrl.prompts import Prompt
from diffrl.rewards.base import Reward, check_rewards, split_reward_spec
from diffrl.sampling import SD3_MAX_SEQUENCE_LENGTH, FlowPolicy, Policy, encode_prompts, make_policy, sample_trajectories


@dataclass
class EvalResult:
    images: np.ndarray  # (P * n, H, W, 3)
    prompts: list[str]  # P * n
    metadata: list[dict]
    scores: dict[str, np.ndarray]  # reward name -> (P * n,)

    def means(self) -> dict[str, float]:
        return {name: float(np.nanmean(v)) for name, v in self.scores.items()}

    def by_category(self, name: str) -> dict[str, float]:
        cats: dict[str, list[float]] = {}
        for meta, value in zip(self.metadata, self.scores[name]):
            cats.setdefault(meta.get("category", "all"), []).append(value)
        return {c: float(np.nanmean(v)) for c, v in sorted(cats.items())}


@torch.no_grad()
def generate_fixed_seed(pipe, policy: Policy | FlowPolicy, prompts: list[Prompt], images_per_prompt: int, seed: int,
                        num_steps: int, latent_shape: tuple[int, int, int], batch_prompts: int = 8,
                        max_sequence_length: int = SD3_MAX_SEQUENCE_LENGTH, chunk_size: int | None = None) -> tuple:
    """Images for every prompt with per-(prompt, image) seeded noise. Returns (images, texts, metadata).

    `max_sequence_length`: SD3's T5 prompt length (sample.max_sequence_length), the one the policy was trained with.
    `chunk_size`: at most this many images per denoiser call (`sample_trajectories`; None: `batch_prompts` prompts'
    images in one).
    """
    device = denoiser(pipe).device
    timesteps, prev_timesteps = policy.schedule(pipe.scheduler, num_steps, device)
    uncond = encode_prompts(pipe, [""], device, max_sequence_length)
    images, texts, metas = [], [], []
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start:start + batch_prompts]
        embeds = encode_prompts(pipe, [p for p, _ in chunk], device, max_sequence_length)
        generators = [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, start + i, j]).generate_state(1)[0]))
                      for i in range(len(chunk)) for j in range(images_per_prompt)]

        def per_sample_noise(shape: tuple[int, ...]) -> torch.Tensor:  # row j from generator j, whatever the batch
            return torch.stack([torch.randn(shape[1:], generator=g) for g in generators])

        traj = sample_trajectories(policy, pipe.vae, embeds, uncond, images_per_prompt, timesteps, prev_timesteps,
                                   latent_shape, None, noise_source=per_sample_noise, chunk_size=chunk_size)
        images.append(traj.images)
        for p, m in chunk:
            texts += [p] * images_per_prompt
            metas += [m] * images_per_prompt
    return np.concatenate(images), texts, metas


def sample_evaluation_images(pipe, sample_config, prompts: list[Prompt], images_per_prompt: int, seed: int,
                             resolution: int | None = None) -> tuple:
    """`generate_fixed_seed` with the policy and latent size that `sample_config` (a SampleConfig) and the model
    give: what `diffrl evaluate` samples. Returns (images, texts, metadata)."""
    network = denoiser(pipe)
    # Log-probs are not used here; "mean" keeps the policy valid whatever reduction the run trained with.
    policy = make_policy(pipe, network, network.device, dataclasses.replace(sample_config, logprob_reduce="mean"))
    size = image_size(pipe, resolution) // pipe.vae_scale_factor
    return generate_fixed_seed(pipe, policy, prompts, images_per_prompt, seed, sample_config.num_steps,
                               (network.config.in_channels, size, size),
                               max_sequence_length=sample_config.max_sequence_length,
                               chunk_size=sampling_chunk_size(sample_config, network.device.type == "cuda"))


def score_images(images: np.ndarray, texts: list[str], metas: list[dict], rewards: dict[str, Reward]) -> dict[str, np.ndarray]:
    return {name: check_rewards(fn(images, texts, metas), len(images), name) for name, fn in rewards.items()}


def eval_reward_names(config, eval_prompts) -> list[str]:
    """Held-out metrics: the training reward's parts (`config.run.reward`), plus the success flag on ShapesWorld
    prompts only (those whose metadata carry a category and objects)."""
    names = [name for name, _ in split_reward_spec(config.run.reward)]
    if eval_prompts and all("category" in meta and "objects" in meta for _, meta in eval_prompts):  # ShapesWorld
        names.append("shapes_success")
    return list(dict.fromkeys(names))
