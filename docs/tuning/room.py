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
from pathlib import Path

from seeds import paired_changes  # docs/tuning/seeds.py: the base's per-prompt scores and each run's change

from diffrl.prompts import load_prompts

SPATIAL_UNION = "shapes:spatial_unseen-train-all+shapes:spatial_train"


def objects(meta: dict) -> list[tuple[str, str]]:
    """The (color, shape) of each object a ShapesWorld prompt's metadata names, in order."""
    return [(o["color"], o["shape"]) for o in meta["objects"]]


def shown_pairs(train_prompts: list[tuple[str, dict]]) -> set[tuple[tuple[str, str], str]]:
    """Every (object, color of the other object) that some training prompt names together."""
    shown = set()
    for _, meta in train_prompts:
        found = objects(meta)
        for i, obj in enumerate(found):
            shown.update((obj, other[0]) for j, other in enumerate(found) if j != i)
    return shown


def unshown_contrast(prompt: tuple[str, dict], shown: set) -> bool:
    text, meta = prompt
    found = objects(meta)
    if len(found) != 2:
        raise SystemExit(f"room.py: {text!r} does not name two objects; the held-out prompts must be spatial pairs")
    first, second = found
    return (first, second[0]) not in shown or (second, first[0]) not in shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the base model's results.json (diffrl evaluate)")
    parser.add_argument("evaluations", type=Path, nargs="+", help="results.json of runs or soups on the same prompts")
    parser.add_argument("--train-prompts", default=SPATIAL_UNION)
    args = parser.parse_args()
    texts, base, changes = paired_changes(args.base, args.evaluations, "shapes_success")
    metas = dict(load_prompts(json.loads(args.base.read_text())["prompts"]).all())  # the evaluated prompt set
    shown = shown_pairs(load_prompts(args.train_prompts).all())
    unshown = [i for i, text in enumerate(texts) if unshown_contrast((text, metas[text]), shown)]
    rest = [i for i in range(len(texts)) if i not in unshown]
    n = len(texts)
    room_unshown, room_rest = ((1 - base[group]).sum() for group in (unshown, rest))
    print(f"{len(unshown)} prompts with an unshown contrast (room {room_unshown / n:.3f} of the mean), "
          f"{len(rest)} others (room {room_rest / n:.3f})")
    for i in unshown:
        print(f"  unshown: {texts[i]} (base {base[i]:.2f})")
    print(f"{'evaluation':<48}{'all':>8}{'unshown':>9}{'others':>8}{'closed':>8}")
    for path, change in zip(args.evaluations, changes):
        gain_unshown, gain_rest = (change[group].sum() / n for group in (unshown, rest))
        name = path.parent.name if path.name == "results.json" else str(path)
        print(f"{name:<48}{gain_unshown + gain_rest:>+8.3f}{gain_unshown:>+9.3f}{gain_rest:>+8.3f}"
              f"{gain_rest * n / room_rest:>8.2f}")


if __name__ == "__main__":
    main()
