"""One setting over several seeds: each run's paired change against the base, and what they say together.

    python docs/tuning/seeds.py runs/spatial/base1000_n32/results.json runs/spatial/eval32_RUN_s0 ... [--metric M]

Arguments: the base model's `diffrl evaluate` results.json, then one `diffrl evaluate` output (its directory or
results.json) per seed, all on the same prompts, images per prompt, noise seed and sampling. Prints each run's
paired change (mean over prompts of run - base, 95% t CI over prompts), the mean over seeds with its 80%
prediction interval (the range one more seed would fall in), and the per-prompt mean of the runs against the
base (95% CI over prompts). --by-subject: the same per-prompt mean, grouped by the prompt's first-named object
(ShapesWorld's "a purple triangle above ...": "purple triangle"). --by-combo: grouped by the unseen color-shape
combination a prompt names (anywhere in it; a prompt with two counts in both groups). --by-colors: grouped by the
two colors a prompt names ("orange+red"), to find pairs whose colors bleed into each other. --train-prompts SPEC:
grouped by whether any of those training prompts names the same two colors (held-out prompts that exercise a color
contrast training never showed). --by-base-level: grouped by the base's own success on the prompt (rare: < 0.15, where
a group of K samples seldom holds a success and so a nonzero leave-one-out advantage; middle; near-solved: >= 0.85).
--per-prompt: every prompt's base value and each run's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from diffrl.prompts import load_prompts
from diffrl.report import mean_ci, prediction_interval
from diffrl.shapes import UNSEEN_COMBOS, first_named_object, named_objects


BASE_LEVELS = (0.15, 0.85)  # the base's success at which a prompt stops being rare / becomes near-solved


def base_level_groups(base: np.ndarray) -> dict[str, list[int]]:
    """Prompt indices by the base's success on them: rare (< 0.15), middle, near-solved (>= 0.85)."""
    levels = np.digitize(base, BASE_LEVELS)
    names = (f"rare (< {BASE_LEVELS[0]})", "middle", f"near-solved (>= {BASE_LEVELS[1]})")
    return {f"base {name}": [i for i, x in enumerate(levels) if x == level] for level, name in enumerate(names)}


def per_prompt(path: Path, metric: str) -> tuple[list[str], np.ndarray]:
    result = json.loads((path / "results.json" if path.is_dir() else path).read_text())
    rows = result["per_prompt"]
    return [r["prompt"] for r in rows], np.array([r["scores"][metric] for r in rows])


def paired_changes(base: Path, runs: list[Path], metric: str) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """(prompts, the base's per-prompt scores, each run's per-prompt change from them); exits if a run scored other
    prompts than the base."""
    prompts, base_scores = per_prompt(base, metric)
    changes = []
    for run in runs:
        run_prompts, scores = per_prompt(run, metric)
        if run_prompts != prompts:
            raise SystemExit(f"{run} scored other prompts than {base}")
        changes.append(scores - base_scores)
    return prompts, base_scores, changes


def colors_named(prompt: str) -> str:
    """The colors a ShapesWorld prompt names, sorted and joined: "a red circle above an orange square" -> "orange+red"."""
    return "+".join(sorted({obj.split()[0] for obj in named_objects(prompt)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--metric", default="shapes_success")
    parser.add_argument("--by-subject", action="store_true", help="also group prompts by their first-named object")
    parser.add_argument("--by-combo", action="store_true", help="also group prompts by the unseen combination they name")
    parser.add_argument("--by-colors", action="store_true", help="also group prompts by the two colors they name")
    parser.add_argument("--train-prompts", metavar="SPEC",
                        help="also group prompts by whether these training prompts name the same two colors")
    parser.add_argument("--by-base-level", action="store_true",
                        help="also group prompts by the base's success on them (< 0.15, middle, >= 0.85)")
    parser.add_argument("--per-prompt", action="store_true", help="also print every prompt's base and run values")
    args = parser.parse_args()
    prompts, base, changes = paired_changes(args.base, args.runs, args.metric)
    for run, change in zip(args.runs, changes):
        c = mean_ci(change)
        print(f"{str(run):60s} {c['mean']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]")
    pi = prediction_interval([c.mean() for c in changes])
    pooled = mean_ci(np.mean(changes, axis=0))
    spread = (f", 80% prediction interval [{pi['pi_low']:+.3f}, {pi['pi_high']:+.3f}]" if pi["n"] > 1
              else " (one run: no interval over seeds)")
    print(f"mean over {pi['n']} seeds {pi['mean']:+.3f}{spread}; per-prompt mean of the runs {pooled['mean']:+.3f} "
          f"[{pooled['ci_low']:+.3f}, {pooled['ci_high']:+.3f}] (95% CI over {pooled['n']} prompts)")
    groups = {}
    if args.by_subject:
        subjects = [first_named_object(p) for p in prompts]
        groups |= {f"subject {s}": [i for i, x in enumerate(subjects) if x == s] for s in sorted(set(subjects))}
    if args.by_combo:
        names = [f"{color} {shape}" for color, shape in sorted(UNSEEN_COMBOS)]
        groups |= {f"combo {n}": [i for i, p in enumerate(prompts) if n in p] for n in names}
    if args.by_colors:
        pairs = [colors_named(p) for p in prompts]
        groups |= {f"colors {pair}": [i for i, x in enumerate(pairs) if x == pair] for pair in sorted(set(pairs))}
    if args.train_prompts:
        trained = {colors_named(text) for text, _ in load_prompts(args.train_prompts).all()}
        novel = [colors_named(p) not in trained for p in prompts]
        groups |= {f"color pair {'not ' * flag}in training": [i for i, x in enumerate(novel) if x == flag]
                   for flag in (False, True)}
    if args.by_base_level:
        groups |= base_level_groups(base)
    for name, rows in groups.items():
        if rows:
            change = np.mean(changes, axis=0)[rows]
            print(f"  {name:28s} {len(rows):2d} prompts: base {base[rows].mean():.3f}, change {change.mean():+.3f}")
    if args.per_prompt:
        print(f"  {'base':>5s} " + " ".join(f"run{i + 1:<2d}" for i in range(len(changes))) + "  prompt")
        for i, prompt in enumerate(prompts):
            print(f"  {base[i]:5.2f} " + " ".join(f"{base[i] + c[i]:5.2f}" for c in changes) + f"  {prompt}")


if __name__ == "__main__":
    main()
