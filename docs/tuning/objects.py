"""What the ShapesWorld scorer finds in each image of a few prompts, and the images themselves as one strip per prompt.

    python docs/tuning/objects.py --prompts shapes:color_binding_unseen-train --match "orange triangle and a red" \
        --match "yellow square and an orange" [--lora RUN] --out strip.png

Samples with `diffrl evaluate`'s sampler and noise (image j of prompt i seeded by (seed, i, j); the defaults' DDIM 10
steps, eta 1, guidance 3), so the images are the ones `diffrl evaluate --prompts ... --seed S` scores for those
prompts' positions in the selection. Prints the detected objects (color, shape, area in pixels, median RGB fill) of
every image.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="pipeline (default: the run's model when --lora is a run, else builtin:shapes)")
    parser.add_argument("--lora", type=Path, help="a run directory or LoRA directory, as diffrl evaluate --lora")
    parser.add_argument("--prompts", default="shapes:color_binding_unseen-train")
    parser.add_argument("--match", action="append", default=[], help="keep the prompts containing this (repeatable)")
    parser.add_argument("--images-per-prompt", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("objects.png"))
    args = parser.parse_args()

    import torch
    from PIL import Image

    from diffrl.cli.evaluate import default_model, load_weights
    from diffrl.config import Config
    from diffrl.evaluation import sample_evaluation_images
    from diffrl.models.pipeline import load_pipeline, resolve_model
    from diffrl.prompts import load_prompts
    from diffrl.shapes.scorer import find_objects

    torch.set_num_threads(1)
    args.model = args.model or default_model(args.lora if args.lora else None)
    pipe = load_pipeline(resolve_model(args.model))
    if args.lora:
        load_weights(pipe, args.lora)
    prompts = [p for p in load_prompts(args.prompts).all() if not args.match or any(m in p[0] for m in args.match)]
    if not prompts:
        parser.error(f"no prompt of {args.prompts} contains any of {args.match}")
    images, texts, _ = sample_evaluation_images(pipe, Config().sample, prompts, args.images_per_prompt, args.seed)
    images = np.asarray(images)
    for text, found in zip(texts, find_objects(images)):
        print(f"{text}: " + ", ".join(f"{c.color} {c.shape} ({c.area} px, fill {tuple(round(v) for v in c.fill)})"
                                      for c in found))
    n = args.images_per_prompt
    strips = [np.concatenate(list(images[i * n:(i + 1) * n]), axis=1) for i in range(len(prompts))]
    height, width = images.shape[1:3]
    Image.fromarray(np.concatenate(strips)).resize((n * width * 4, len(prompts) * height * 4), Image.NEAREST).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
