"""How a run's LoRA change grows and turns, from its per-epoch checkpoints (docs/tuning.md, section 38).

    python docs/tuning/lora_geometry.py RUN [RUN2] [--epochs 5 10 20 30 40 50 60]

For each run: the norm of the product-space change (every adapted module's B @ A, stacked) at the given epochs,
its cosine with the last one, and each increment's cosine with the last one; for two runs, the cosine between
their changes at each epoch (independent seeds: what they share is what the reward taught); and (section 39) how
far each run's A matrices moved from their first checkpoint, and how much of the second run's change lies in the row
space of the first run's A matrices, against the share a random subspace of that rank would hold (rank / inputs).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from trajectory_average import snapshots


def module_pairs(weights: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) of every LoRA module of a state dict (a checkpoint's or an adapter file's), as float64 matrices, by A's
    key."""
    return {key: (weights[key].flatten(1).double(), weights[key.replace(".lora_A.", ".lora_B.")].flatten(1).double())
            for key in sorted(k for k in weights if ".lora_A." in k)}


def lora_pairs(checkpoint: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`module_pairs` of a checkpoint's trainable weights."""
    return module_pairs(load_file(str(checkpoint / "trainable.safetensors")))


def product_change(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The flattened B @ A of every LoRA module (`lora_pairs` of a checkpoint), stacked."""
    return torch.cat([(b @ a).flatten() for a, b in pairs.values()])


def row_space_share(a: torch.Tensor, change: torch.Tensor) -> tuple[float, float]:
    """Squared norm of `change` (out x in) inside the row space of `a` (rank x in), and its total squared norm."""
    basis = torch.linalg.qr(a.T).Q  # in x rank, orthonormal columns
    return float((change @ basis).pow(2).sum()), float(change.pow(2).sum())


def subspace_report(first: dict, second: dict, first_start: dict, second_start: dict) -> dict[str, float]:
    """Over all modules (sums of squared norms): the share of the second run's change in the first run's A row
    space, the share a random subspace of the same rank would hold, and each run's A cosine with its start."""
    inside = total = expected = 0.0
    for key, (a1, _) in first.items():
        a2, b2 = second[key]
        part, whole = row_space_share(a1, b2 @ a2)
        inside, total, expected = inside + part, total + whole, expected + whole * a1.shape[0] / a1.shape[1]

    def a_cosine(run: dict, start: dict) -> float:
        a, a0 = (torch.cat([m[key][0].flatten() for key in run]) for m in (run, start))
        return cosine(a, a0)
    return {"share_in_first_row_space": inside / total, "random_subspace_share": expected / total,
            "first_A_cosine_with_start": a_cosine(first, first_start),
            "second_A_cosine_with_start": a_cosine(second, second_start)}


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x @ y / (x.norm() * y.norm()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20, 30, 40, 50, 60])
    a = p.parse_args()
    changes, loaded, starts = {}, [], []
    for run in a.runs:
        found = snapshots(run)
        epochs = [e for e in a.epochs if e in found]
        pairs = {e: lora_pairs(found[e]) for e in epochs}
        loaded.append(pairs)
        starts.append((min(found), lora_pairs(found[min(found)])))
        changes[run] = {e: product_change(pairs[e]) for e in epochs}
        d, last = changes[run], changes[run][epochs[-1]]
        print(f"{run.name}: norm", " ".join(f"{e}:{d[e].norm():.3f}" for e in epochs))
        print(f"{run.name}: cosine with epoch {epochs[-1]}", " ".join(f"{e}:{cosine(d[e], last):.2f}" for e in epochs))
        print(f"{run.name}: increments' cosine with epoch {epochs[-1]}",
              " ".join(f"{e0}-{e1}:{cosine(d[e1] - d[e0], last):.2f}" for e0, e1 in zip(epochs, epochs[1:])))
    if len(a.runs) == 2:
        one, two = changes.values()
        print("cosine between the runs", " ".join(f"{e}:{cosine(one[e], two[e]):.3f}" for e in one if e in two))
        last = max(set(one) & set(two))
        report = subspace_report(*(pairs[last] for pairs in loaded), *(pairs for _, pairs in starts))
        print(f"at epoch {last} (A against each run's epoch {starts[0][0]} / {starts[1][0]}):",
              " ".join(f"{k} {v:.3f}" for k, v in report.items()))


if __name__ == "__main__":
    main()
