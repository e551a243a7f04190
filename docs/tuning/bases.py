"""Compare candidate spatial bases by what RL can learn from them (docs/tuning.md section 30).

For each NAME it reads the evaluations that runs/lanes-style measurement writes under runs/evaluate/:
base_NAME_single (single_val, 8 images), base_NAME_train32 (spatial_unseen-train, 32 images per prompt),
base_NAME_val8 / _val8_eta0 / _val32 (spatial_unseen-val) and base_NAME_relation.txt (benchmarks/relation_use.py).

Besides each evaluation's mean and its prompts at 0 and at 32 of 32: "informative", the expected share of K-image
groups on the training prompts in which LOOP's advantages are not all zero (some but not all samples succeed),
1 - p^K - (1 - p)^K averaged over prompts (p: the prompt's success rate at 32 images); "val_room_drawn", the room
(1 - p, over all 27 prompts) on the held-out prompts the base draws right at least once in 32. Section 30 chose its
base by the relation column and that room, both properties of the base measured before any RL ran on it.

    python docs/tuning/bases.py shipped zsnr_spA1000_fix zsnr_spA1250_fix
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from seeds import per_prompt  # docs/tuning/seeds.py: one `diffrl evaluate` result, prompt by prompt


def per_prompt_success(path: Path) -> np.ndarray:
    return per_prompt(path, "shapes_success")[1]


def informative_share(p: np.ndarray, k: int) -> float:
    """Expected share of K-sample groups with both a success and a failure (a nonzero leave-one-out advantage)."""
    return float(np.mean(1 - p ** k - (1 - p) ** k))


def relation_read(path: Path) -> float | None:
    """x0 loss increase at t 900-1000 when the relation word is inverted (benchmarks/relation_use.py)."""
    if not path.exists():
        return None
    match = re.search(r"t 900-1000: x0 .*?inverted relation ([+-][0-9.]+)", path.read_text())
    return float(match.group(1)) if match else None


def row(name: str, root: Path, k: int) -> dict:
    out = {"base": name}
    single = root / f"base_{name}_single"
    out["single"] = per_prompt_success(single).mean() if single.exists() else None
    train = per_prompt_success(root / f"base_{name}_train32")
    out.update(train32=train.mean(), train_zero=int((train == 0).sum()), train_one=int((train == 1).sum()),
               informative=informative_share(train, k))
    for key in ("val8", "val8_eta0"):
        path = root / f"base_{name}_{key}"
        out[key] = per_prompt_success(path).mean() if path.exists() else None
    val32 = root / f"base_{name}_val32"
    if val32.exists():
        held = per_prompt_success(val32)
        out.update(val32=held.mean(), val_zero=int((held == 0).sum()), val_one=int((held == 1).sum()),
                   val_room_drawn=float((1 - held[held > 0]).sum() / len(held)))
    out["relation_x0"] = relation_read(root / f"base_{name}_relation.txt")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+")
    parser.add_argument("--root", default="runs/evaluate")
    parser.add_argument("--k", type=int, default=8, help="images per prompt in RL (sample.k)")
    args = parser.parse_args()
    rows = [row(n, Path(args.root), args.k) for n in args.names]
    cols = list(dict.fromkeys(c for r in rows for c in r))
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [r.get(c) for c in cols]
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |")


if __name__ == "__main__":
    main()
