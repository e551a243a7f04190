"""Does a model use relation words? Constraint pass rates on spatial prompts against the chance rate.

Scores fixed-seed images of a spatial prompt set constraint by constraint, and compares the relation's
pass rate with that of renders placed without the relation (the renderer's color-binding layouts of the
same objects): a model that ignores relation words lands near the chance rate (docs/tuning.md).

    python benchmarks/spatial_chance.py --prompts shapes:spatial_unseen-val
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from diffrl.evaluation import generate_fixed_seed
from diffrl.models.pipeline import load_pipeline, resolve_model
from diffrl.prompts import load_prompts
from diffrl.sampling import Policy
from diffrl.shapes.scorer import constraints, find_objects
from diffrl.shapes.world import PromptSpec, render

RELATION = 4  # index of the relation among a spatial prompt's 6 constraints (scorer.constraints)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:shapes")
    parser.add_argument("--lora", default=None, help="a LoRA directory to load into the model")
    parser.add_argument("--prompts", default="shapes:spatial_unseen-val")
    parser.add_argument("--images-per-prompt", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = load_pipeline(resolve_model(args.model))
    if args.lora:
        pipe.load_lora_weights(args.lora)
    policy = Policy.from_scheduler(pipe.unet, pipe.scheduler, "cpu", eta=1.0, guidance_scale=args.guidance)
    prompts = load_prompts(args.prompts).all()
    size = pipe.unet.config.sample_size
    images, texts, metas = generate_fixed_seed(pipe, policy, prompts, args.images_per_prompt, args.seed, args.steps,
                                               (pipe.unet.config.in_channels, size, size))
    specs = [PromptSpec.from_metadata(t, m) for t, m in zip(texts, metas)]
    checks = np.array([constraints(found, spec) for found, spec in zip(find_objects(images), specs)], dtype=float)
    rest = np.delete(checks, RELATION, axis=1).all(axis=1)
    print(f"{args.prompts}: pass rate per constraint {checks.mean(0).round(3).tolist()}, success "
          f"{checks.all(1).mean():.3f}")
    print(f"  relation {checks[:, RELATION].mean():.3f}; given every other constraint {checks[rest, RELATION].mean():.3f} "
          f"({rest.mean():.3f} of images)")

    rng = np.random.default_rng(args.seed)
    unrelated = [dataclasses.replace(s, category="color_binding", relation=None) for s in specs]
    chance = [constraints(find_objects(render(u, rng)[None])[0], s)[RELATION] for u, s in zip(unrelated, specs)]
    print(f"  chance: renders of the same objects placed without the relation satisfy it {np.mean(chance):.3f}")


if __name__ == "__main__":
    main()
