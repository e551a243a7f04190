"""Where a spatial evaluation's held-out gain comes from: the prompts whose color contrast training never shows,
and the rest, with the share of each group's room (1 - base success) that the evaluation closes.

    python docs/tuning/room.py runs/evaluate/base_val32/results.json runs/evaluate/RUN/results.json [...]
    python docs/tuning/room.py BASE.json EVAL.json ... --train-prompts shapes:spatial_train   # another training set

A held-out prompt names two objects, A and B. Its contrast is unshown when no training prompt names object A
beside B's color, or none names object B beside A's color: on the spatial command's union (the default
--train-prompts) these are the six held-out prompts that put the orange triangle beside a red or yellow object
(docs/tuning.md, sections 22 and 45). Gains are in units of the overall mean: the two groups' gains add up to the
paired change over all prompts.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from diffrl.prompts import load_prompts

SPATIAL_UNION = "shapes:spatial_unseen-train-all+shapes:spatial_train"
OBJECT = re.compile(r"\ban? (\w+) (circle|square|triangle)\b")


def objects(prompt: str) -> list[tuple[str, str]]:
    """The (color, shape) of each object a ShapesWorld prompt names, in order."""
    return OBJECT.findall(prompt)


def shown_pairs(train_prompts: list[str]) -> set[tuple[tuple[str, str], str]]:
    """Every (object, color of the other object) that some training prompt names together."""
    shown = set()
    for prompt in train_prompts:
        found = objects(prompt)
        for i, obj in enumerate(found):
            shown.update((obj, other[0]) for j, other in enumerate(found) if j != i)
    return shown


def unshown_contrast(prompt: str, shown: set) -> bool:
    found = objects(prompt)
    if len(found) != 2:
        raise SystemExit(f"room.py: {prompt!r} does not name two objects; the held-out prompts must be spatial pairs")
    first, second = found
    return (first, second[0]) not in shown or (second, first[0]) not in shown


def successes(path: Path) -> dict[str, float]:
    result = json.loads(path.read_text())
    return {row["prompt"]: row["scores"]["shapes_success"] for row in result["per_prompt"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the base model's results.json (diffrl evaluate)")
    parser.add_argument("evaluations", type=Path, nargs="+", help="results.json of runs or soups on the same prompts")
    parser.add_argument("--train-prompts", default=SPATIAL_UNION)
    args = parser.parse_args()
    base = successes(args.base)
    shown = shown_pairs([p for p, _ in load_prompts(args.train_prompts).all()])
    unshown = [p for p in base if unshown_contrast(p, shown)]
    rest = [p for p in base if p not in unshown]
    n = len(base)
    room_unshown, room_rest = (sum(1 - base[p] for p in group) for group in (unshown, rest))
    print(f"{len(unshown)} prompts with an unshown contrast (room {room_unshown / n:.3f} of the mean), "
          f"{len(rest)} others (room {room_rest / n:.3f})")
    for prompt in unshown:
        print(f"  unshown: {prompt} (base {base[prompt]:.2f})")
    print(f"{'evaluation':<48}{'all':>8}{'unshown':>9}{'others':>8}{'closed':>8}")
    for path in args.evaluations:
        scores = successes(path)
        if scores.keys() != base.keys():
            raise SystemExit(f"{path}: not the base's prompts")
        gain_unshown, gain_rest = (sum(scores[p] - base[p] for p in group) / n for group in (unshown, rest))
        name = path.parent.name if path.name == "results.json" else str(path)
        print(f"{name:<48}{gain_unshown + gain_rest:>+8.3f}{gain_unshown:>+9.3f}{gain_rest:>+8.3f}"
              f"{gain_rest * n / room_rest:>8.2f}")


if __name__ == "__main__":
    main()
