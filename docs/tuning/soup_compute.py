"""Held-out gain against training compute, single runs and soups: docs/tuning.md section 37's figure.

    python docs/tuning/soup_compute.py BASE_results.json "LABEL|UNITS|EVAL_DIR,EVAL_DIR,...[|BASE]" ... --plot OUT.png

Each group is one setting: a label, its compute in units of one 40-epoch preset run (a soup of two 40-epoch runs is
2), the `diffrl evaluate` outputs of its seeds (single runs) or soups, and optionally its own base evaluation (the
base evaluated on the machine that evaluated the group: same prompts, images and noise). Prints each group's mean paired change
against the base with the 80% prediction interval over its members, and plots the members and means against the
compute; a label "[soup ]CPU: ..." or "[soup ]GPU: ..." names the kind of run and the machine that trained it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffrl.report import prediction_interval
from seeds import paired_changes  # docs/tuning/seeds.py: runs' per-prompt changes from a base


def group_changes(base: Path, spec: str, metric: str) -> tuple[str, float, list[float]]:
    label, units, dirs, *own_base = spec.split("|")
    base = Path(own_base[0]) if own_base else base
    _, _, changes = paired_changes(base, [Path(d) for d in dirs.split(",")], metric)
    return label, float(units), [float(c.mean()) for c in changes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("groups", nargs="+", metavar="LABEL|UNITS|DIRS[|BASE]")
    parser.add_argument("--metric", default="shapes_success")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--title", default="held-out spatial success, change from the base (32 images per prompt)")
    args = parser.parse_args()
    groups = [group_changes(args.base, spec, args.metric) for spec in args.groups]
    for label, units, changes in groups:
        pi = prediction_interval(changes)
        spread = f" [{pi['pi_low']:+.3f}, {pi['pi_high']:+.3f}]" if pi["n"] > 1 else ""
        members = ", ".join(f"{c:+.3f}" for c in changes)
        print(f"{label:40s} {units:4g} units  mean {pi['mean']:+.3f}{spread} over {pi['n']}  ({members})")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8.5, 5))
        for label, units, changes in groups:
            soup, cpu = "soup" in label.split(":")[0], label.startswith(("CPU", "soup CPU"))
            color, marker = ("tab:orange" if soup else "tab:blue"), ("D" if cpu else "o")
            ax.scatter([units] * len(changes), changes, s=12, alpha=0.4, color=color, marker=marker)
            ax.scatter([units], [np.mean(changes)], s=60, color=color, edgecolor="black", marker=marker,
                       label=f"{'soups' if soup else 'single runs'}, {'CPU' if cpu else 'GPU'}")
            ax.annotate(label.split(":", 1)[-1].strip(), (units, np.mean(changes)), textcoords="offset points",
                        xytext=(7, 4 if cpu else -9), fontsize=7)
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
        ax.set_xlim(right=ax.get_xlim()[1] * 1.15)
        ax.axhline(0.20, color="gray", linestyle="--", linewidth=0.8)
        ax.set_xlabel("training compute (1 = one 40-epoch preset run, 40,960 images)")
        ax.set_ylabel("held-out success, paired change")
        ax.set_title(args.title, fontsize=9)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
