"""Does a model use relation words? Constraint pass rates on spatial prompts against the chance rate.

Scores fixed-seed images of a spatial prompt set constraint by constraint, and compares the relation's
pass rate with that of renders placed without the relation (the renderer's color-binding layouts of the
same objects): a model that ignores relation words lands near the chance rate (docs/tuning.md).

    python benchmarks/spatial_chance.py --prompts shapes:spatial_unseen-val
"""
from __future__ import annotations

import dataclasses

import numpy as np

from diffrl.evaluation import generate_fixed_seed
from diffrl.prompts import load_prompts
from diffrl.shapes.scorer import constraints, find_objects
from diffrl.shapes.world import PromptSpec, render
from probe import base_policy, probe_parser

RELATION = 4  # index of the relation among a spatial prompt's 6 constraints (scorer.constraints)


def main() -> None:
    parser = probe_parser(__doc__, "shapes:spatial_unseen-val", reward=None)
    parser.add_argument("--lora", default=None, help="a LoRA directory to load into the model")
    parser.add_argument("--images-per-prompt", type=int, default=8)
    args = parser.parse_args()
    pipe, policy, latent_shape = base_policy(args)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    prompts = load_prompts(args.prompts).all()
    images, texts, metas = generate_fixed_seed(pipe, policy, prompts, args.images_per_prompt, args.seed, args.steps,
                                               latent_shape)
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
