"""Shared set-up of the probes that measure the base model (gradient_snr, step_variance, spatial_chance)."""
from __future__ import annotations

import argparse

import torch

from diffrl.models.pipeline import load_pipeline, resolve_model
from diffrl.sampling import Policy


def probe_parser(doc: str, prompts: str, reward: str | None = "shapes") -> argparse.ArgumentParser:
    """--model, --prompts, --reward (unless None), --steps, --guidance, --seed, --threads."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default="builtin:shapes")
    parser.add_argument("--prompts", default=prompts)
    if reward is not None:
        parser.add_argument("--reward", default=reward)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lora", help="a LoRA directory (e.g. a run's lora/ or a `diffrl soup`) to measure instead of the "
                                       "base; loaded into the UNet and, if it holds any, the text encoder")
    return parser


def base_policy(args: argparse.Namespace):
    """(pipeline, its DDIM policy at eta 1, latent shape) for the parsed probe arguments."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pipe = load_pipeline(resolve_model(args.model))
    if getattr(args, "lora", None):
        pipe.load_lora_weights(args.lora)
    policy = Policy.from_scheduler(pipe.unet, pipe.scheduler, "cpu", eta=1.0, guidance_scale=args.guidance)
    size = pipe.unet.config.sample_size
    return pipe, policy, (pipe.unet.config.in_channels, size, size)
