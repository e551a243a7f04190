"""Which of a ShapesWorld prompt's constraints fail, and how often: the held-out failures of a model, by kind.

Samples the prompt set with `diffrl evaluate`'s sampler and noise (image j of prompt i seeded by (seed, i, j); DDIM,
eta 1 unless --eta), so the images are the ones `diffrl evaluate --seed S` scores, and prints the fail rate of every
constraint (`diffrl.shapes.scorer.constraint_names`: "color 1", "shape 1", ..., "relation", "object count") and a
breakdown of the images: success, an object's color or shape failed, the relation failed with both objects right,
only the object count failed.

    python benchmarks/failure_modes.py --model runs/pretrain/zsnr_spA1000_fix --prompts shapes:spatial_unseen-val
    python benchmarks/failure_modes.py --model M --lora runs/RUN --prompts shapes:spatial_unseen-val
    python benchmarks/failure_modes.py --model M --subject "orange triangle" --per-prompt   # one subject, per prompt
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


def judged(images: np.ndarray, texts: list[str], metas: list[dict]):
    """(text, constraint names, met flags) of every image, in order."""
    from diffrl.shapes.scorer import constraint_names, constraints, find_objects
    from diffrl.shapes.world import PromptSpec

    for found, text, meta in zip(find_objects(np.asarray(images)), texts, metas):
        spec = PromptSpec.from_metadata(text, meta)
        yield text, constraint_names(spec), [bool(c) for c in constraints(found, spec)]


def tally(images: np.ndarray, texts: list[str], metas: list[dict]) -> dict:
    """Fail rate of every constraint name and the share of each failure kind over the images."""
    failed, seen, kinds = collections.Counter(), collections.Counter(), collections.Counter()
    for _, names, met in judged(images, texts, metas):
        for name, ok in zip(names, met):
            seen[name] += 1
            failed[name] += not ok
        kinds[failure_kind(names, met)] += 1
    return {"images": len(texts), "fail_rate": {n: failed[n] / seen[n] for n in seen},
            "kinds": {k: kinds[k] / len(texts) for k in KINDS}}


def per_prompt(images: np.ndarray, texts: list[str], metas: list[dict]) -> dict[str, dict]:
    """Per prompt text: images, successes, and how many of its images failed each constraint."""
    out: dict[str, dict] = {}
    for text, names, met in judged(images, texts, metas):
        row = out.setdefault(text, {"images": 0, "success": 0, "failed": collections.Counter()})
        row["images"] += 1
        row["success"] += all(met)
        row["failed"].update(n for n, ok in zip(names, met) if not ok)
    return out


def about_subject(prompts: list, subject: str) -> list:
    """The prompts whose first-named object is `subject` ("a purple triangle above ...": "purple triangle")."""
    from diffrl.shapes.world import first_named_object

    return [p for p in prompts if first_named_object(p[0]) == subject]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="pipeline (default: the run's model when --lora is a run, else builtin:shapes)")
    parser.add_argument("--lora", default=None, help="a run directory or LoRA directory, as diffrl evaluate --lora")
    parser.add_argument("--prompts", default="shapes:spatial_unseen-val")
    parser.add_argument("--images-per-prompt", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the config's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--subject", help="only the prompts whose first-named object is this, e.g. 'orange triangle'")
    parser.add_argument("--per-prompt", action="store_true", help="also each prompt's successes and failed constraints")
    args = parser.parse_args(argv)

    import torch

    from diffrl.cli.evaluate import default_model, load_weights
    from diffrl.config import Config
    from diffrl.evaluation import sample_evaluation_images
    from diffrl.models.pipeline import load_pipeline, resolve_model
    from diffrl.prompts import load_prompts

    torch.set_num_threads(args.threads)
    sample = Config().sample
    if args.eta is not None:
        sample = dataclasses.replace(sample, eta=args.eta)
    args.model = args.model or default_model(Path(args.lora) if args.lora else None)
    pipe = load_pipeline(resolve_model(args.model))
    if args.lora:
        load_weights(pipe, Path(args.lora))
    prompts = load_prompts(args.prompts).all()
    if args.subject:
        prompts = about_subject(prompts, args.subject)
        if not prompts:
            parser.error(f"no prompt of {args.prompts} has the subject {args.subject!r}")
    images, texts, metas = sample_evaluation_images(pipe, sample, prompts, args.images_per_prompt, args.seed)
    result = tally(images, texts, metas)
    print(f"{args.prompts}: {result['images']} images ({args.model}{' + ' + args.lora if args.lora else ''}, "
          f"seed {args.seed}, eta {sample.eta})")
    print("fail rate per constraint: " + ", ".join(f"{n} {r:.3f}" for n, r in result["fail_rate"].items()))
    print("images: " + ", ".join(f"{k} {v:.3f}" for k, v in result["kinds"].items()))
    if args.per_prompt:
        for text, row in per_prompt(images, texts, metas).items():
            fails = ", ".join(f"{n} x{c}" for n, c in row["failed"].items()) or "none"
            print(f"  {text}: {row['success']}/{row['images']} succeed; failed: {fails}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
