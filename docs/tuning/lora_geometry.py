"""How a run's LoRA change grows and turns, from its per-epoch checkpoints (docs/tuning.md, section 38).

    python docs/tuning/lora_geometry.py RUN [RUN2] [--epochs 5 10 20 30 40 50 60]

For each run: the norm of the product-space change (every adapted module's B @ A, stacked) at the given epochs,
its cosine with the last one, and each increment's cosine with the last one; for two runs, the cosine between
their changes at each epoch (independent seeds: what they share is what the reward taught).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from trajectory_average import snapshots


def product_change(checkpoint: Path) -> torch.Tensor:
    """The flattened B @ A of every LoRA module of a checkpoint's trainable weights, in float64."""
    weights = load_file(str(checkpoint / "trainable.safetensors"))
    parts = []
    for key in sorted(k for k in weights if ".lora_A." in k):
        a, b = weights[key].flatten(1).double(), weights[key.replace(".lora_A.", ".lora_B.")].flatten(1).double()
        parts.append((b @ a).flatten())
    return torch.cat(parts)


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x @ y / (x.norm() * y.norm()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20, 30, 40, 50, 60])
    a = p.parse_args()
    changes = {}
    for run in a.runs:
        found = snapshots(run)
        epochs = [e for e in a.epochs if e in found]
        changes[run] = {e: product_change(found[e]) for e in epochs}
        d, last = changes[run], changes[run][epochs[-1]]
        print(f"{run.name}: norm", " ".join(f"{e}:{d[e].norm():.3f}" for e in epochs))
        print(f"{run.name}: cosine with epoch {epochs[-1]}", " ".join(f"{e}:{cosine(d[e], last):.2f}" for e in epochs))
        print(f"{run.name}: increments' cosine with epoch {epochs[-1]}",
              " ".join(f"{e0}-{e1}:{cosine(d[e1] - d[e0], last):.2f}" for e0, e1 in zip(epochs, epochs[1:])))
    if len(a.runs) == 2:
        one, two = changes.values()
        print("cosine between the runs", " ".join(f"{e}:{cosine(one[e], two[e]):.3f}" for e in one if e in two))


if __name__ == "__main__":
    main()
