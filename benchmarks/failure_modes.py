"""Which of a ShapesWorld prompt's constraints fail, and how often: the held-out failures of a model, by kind.

Samples the prompt set with `diffrl evaluate`'s sampler and noise (image j of prompt i seeded by (seed, i, j); DDIM,
eta 1 unless --eta), so the images are the ones `diffrl evaluate --seed S` scores, and prints the fail rate of every
constraint (`diffrl.shapes.scorer.constraint_names`: "color 1", "shape 1", ..., "relation", "object count") and a
breakdown of the images: success, an object's color or shape failed, the relation failed with both objects right,
only the object count failed.

    python benchmarks/failure_modes.py --model runs/pretrain/zsnr_spA1000_fix --prompts shapes:spatial_unseen-val
    python benchmarks/failure_modes.py --model M --lora runs/RUN --prompts shapes:spatial_unseen-val
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
from pathlib import Path

import numpy as np

KINDS = ("success", "color or shape", "relation (objects right)", "object count only")


def failure_kind(names: list[str], met: list[bool]) -> str:
    """One image's breakdown: success, else the first failure in KINDS' order (an object drawn wrong, else the
    relation with both objects right, else only the number of objects)."""
    if all(met):
        return "success"
    failed = {n for n, ok in zip(names, met) if not ok}
    if any(n.startswith(("color", "shape")) for n in failed):
        return "color or shape"
    return "relation (objects right)" if "relation" in failed else "object count only"


def tally(images: np.ndarray, texts: list[str], metas: list[dict]) -> dict:
    """Fail rate of every constraint name and the share of each failure kind over the images."""
    from diffrl.shapes.scorer import constraint_names, constraints, find_objects
    from diffrl.shapes.world import PromptSpec

    failed, seen, kinds = collections.Counter(), collections.Counter(), collections.Counter()
    for found, text, meta in zip(find_objects(np.asarray(images)), texts, metas):
        spec = PromptSpec.from_metadata(text, meta)
        names, met = constraint_names(spec), [bool(c) for c in constraints(found, spec)]
        for name, ok in zip(names, met):
            seen[name] += 1
            failed[name] += not ok
        kinds[failure_kind(names, met)] += 1
    return {"images": len(texts), "fail_rate": {n: failed[n] / seen[n] for n in seen},
            "kinds": {k: kinds[k] / len(texts) for k in KINDS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:shapes")
    parser.add_argument("--lora", default=None, help="a run directory or LoRA directory, as diffrl evaluate --lora")
    parser.add_argument("--prompts", default="shapes:spatial_unseen-val")
    parser.add_argument("--images-per-prompt", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the config's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from diffrl.cli.evaluate import load_weights
    from diffrl.config import Config
    from diffrl.evaluation import sample_evaluation_images
    from diffrl.models.pipeline import load_pipeline, resolve_model
    from diffrl.prompts import load_prompts

    torch.set_num_threads(args.threads)
    sample = Config().sample
    if args.eta is not None:
        sample = dataclasses.replace(sample, eta=args.eta)
    pipe = load_pipeline(resolve_model(args.model))
    if args.lora:
        load_weights(pipe, Path(args.lora))
    images, texts, metas = sample_evaluation_images(pipe, sample, load_prompts(args.prompts).all(),
                                                    args.images_per_prompt, args.seed)
    result = tally(images, texts, metas)
    print(f"{args.prompts}: {result['images']} images ({args.model}{' + ' + args.lora if args.lora else ''}, "
          f"seed {args.seed}, eta {sample.eta})")
    print("fail rate per constraint: " + ", ".join(f"{n} {r:.3f}" for n, r in result["fail_rate"].items()))
    print("images: " + ", ".join(f"{k} {v:.3f}" for k, v in result["kinds"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
