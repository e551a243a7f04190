"""Held-out success as users will sample: plain diffusers StableDiffusionPipeline (its default DDIM, eta 0),
before and after loading a run's LoRA, same seeds, paired 95% CI over prompts.

    python docs/tuning/plain_pipeline_eval.py RUN_DIR [--prompts shapes:color_binding_unseen-val] [--images 8]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from diffrl.prompts import load_prompts
from diffrl.report import mean_ci
from diffrl.rewards import get_reward
from diffrl.shapes import BUILTIN_MODEL_DIR


def per_prompt_success(pipe, prompts, images: int, steps: int, guidance: float, seed: int) -> np.ndarray:
    success = get_reward("shapes_success")
    out = []
    for i, (text, meta) in enumerate(prompts):
        generator = torch.Generator().manual_seed(seed * 100_003 + i)
        result = pipe([text] * images, num_inference_steps=steps, guidance_scale=guidance, height=32, width=32,
                      output_type="np", generator=generator).images
        out.append(success((result * 255).round().astype(np.uint8), [text] * images, [meta] * images).mean())
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory with lora/")
    parser.add_argument("--prompts", default="shapes:color_binding_unseen-val")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(2)
    prompts = load_prompts(args.prompts).all()
    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_MODEL_DIR, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    before = per_prompt_success(pipe, prompts, args.images, args.steps, args.guidance, args.seed)
    pipe.load_lora_weights(f"{args.run}/lora")
    after = per_prompt_success(pipe, prompts, args.images, args.steps, args.guidance, args.seed)
    change = mean_ci(after - before)
    print(f"plain StableDiffusionPipeline (eta 0), {len(prompts)} prompts x {args.images} images, seed {args.seed}: "
          f"success {before.mean():.3f} -> {after.mean():.3f}, paired change {change['mean']:+.3f} "
          f"[{change['ci_low']:+.3f}, {change['ci_high']:+.3f}]")


if __name__ == "__main__":
    main()
