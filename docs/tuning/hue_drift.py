"""How far the objects of successful images sit from their named colors: the base against fine-tuned runs.

    python docs/tuning/hue_drift.py --model builtin:shapes-spatial2 --prompts shapes:spatial_unseen-val \
        [--images-per-prompt 8] [--threads 1] [RUN_OR_LORA_DIR ...]

For the base model and then each run (a run directory or a LoRA directory, loaded as `diffrl evaluate --lora` does),
samples the prompts with `diffrl evaluate`'s fixed-seed noise (the same images as its evaluation at that seed and
count), scores them, and prints: success; the mean hue fidelity of the successes (`shapes_success_hue`'s grade:
per object exp(-d^2 / (2 * 50^2)), d the RGB distance of its fill from the named color); and per color, the mean and
90th percentile of d over the objects of successful images. A run whose successes drift off their hues (d rising
for a color) is on its way to the failures the binary success only sees once the scorer reads another color.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from diffrl.cli.evaluate import load_weights
from diffrl.config import Config
from diffrl.evaluation import sample_evaluation_images
from diffrl.models.pipeline import load_pipeline
from diffrl.prompts import load_prompts
from diffrl.shapes.scorer import constraints, fill_distance_sq, find_objects, hue_fidelity, standing_for
from diffrl.shapes.world import COLORS, PromptSpec


def drift(images: np.ndarray, texts: list[str], metas: list[dict]) -> tuple[float, float, dict[str, list[float]]]:
    """(success rate, mean hue fidelity of the successes, color -> fill distances of the successes' objects)."""
    specs = [PromptSpec.from_metadata(t, m) for t, m in zip(texts, metas)]
    distances: dict[str, list[float]] = defaultdict(list)
    fidelities = []
    found_all = find_objects(images)
    for found, spec in zip(found_all, specs):
        if not all(constraints(found, spec)):
            continue
        fidelities.append(hue_fidelity(found, spec))
        for obj in spec.objects:
            fill = standing_for(found, obj.color, obj.shape).fill
            distances[obj.color].append(float(np.sqrt(fill_distance_sq(fill, obj.color))))
    return len(fidelities) / len(specs), float(np.mean(fidelities)) if fidelities else float("nan"), distances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run or LoRA directories (the base is always measured)")
    parser.add_argument("--model", default="builtin:shapes-spatial2")
    parser.add_argument("--prompts", default="shapes:spatial_unseen-val")
    parser.add_argument("--images-per-prompt", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = load_prompts(args.prompts).all()
    colors = sorted(COLORS)
    print(f"{'model':48s} success  fidelity | " + " | ".join(f"{c:>11s}" for c in colors) + "   (d: mean / p90)")
    for run in [None, *args.runs]:
        pipe = load_pipeline(args.model, None)
        if run is not None:
            load_weights(pipe, run)
        images, texts, metas = sample_evaluation_images(pipe, Config().sample, prompts, args.images_per_prompt,
                                                        args.seed)
        success, fidelity, distances = drift(images, texts, metas)
        cells = [f"{np.mean(distances[c]):5.1f} /{np.percentile(distances[c], 90):4.0f}" if distances[c] else
                 f"{'-':>11s}" for c in colors]
        print(f"{str(run or args.model):48s} {success:7.3f}  {fidelity:8.3f} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
