"""ShapesWorld: colored shapes on a plain background, a prompt grammar with exact metadata.

A miniature of Stable Diffusion + T2I-CompBench that runs on a CPU. Prompts come in four
categories, with T2I-CompBench's compositional skills:

- ``single``:        "a red circle"
- ``color_binding``: "a red circle and a blue square"   (two objects, different colors)
- ``counting``:      "two green triangles", "three red squares"  (count 2 or 3, one color+shape)
- ``spatial``:       "a yellow square above a purple circle", "a red circle to the left of a
  blue triangle"  (relations "above", "below", "to the left of", "to the right of";
  objects[0] is the subject, objects differ in color)

Splits. ``train`` and ``val`` use only *seen* color-shape combinations. ``UNSEEN_COMBOS``
(4 of the 18 combos, ~20%) appear in no train prompt of any category, so the base model never
sees them during pretraining; the ``unseen`` split holds color_binding and spatial prompts
that use at least one of them (``prompt_set("single"/"counting", "unseen")`` is empty).
``unseen-train`` and ``unseen-val`` partition ``unseen`` 50/50 by object pair: RL trains on the
first and is evaluated on the second (the base model is far from saturated on both, unlike on
``train``, which it has memorized).
For color_binding and spatial, train and val are disjoint at the level of the unordered pair
of objects (every phrasing of a pair, e.g. "A above B" and "B below A", lands in the same
split), so val measures compositional generalization. Counting splits (count, combo) items.
There are only 14 single-object prompts, so ``single`` val equals ``single`` train:
generalization is measured on the compositional categories, as in T2I-CompBench.

Render rules (the scorer relies on them):

- Background is ``BACKGROUND``; each object is filled with exactly ``COLORS[color]``; edges are
  anti-aliased (drawn at 4x then box-downsampled), so edge pixels blend with the background.
- Each object occupies a square bounding box of side ``size * [0.25, 0.40]`` (8-12.8 px at 32x32),
  at least 1 px inside the image. Circles fill the box, squares fill it, triangles point up
  with their base on the box bottom and apex at the top middle.
- Objects never overlap: bounding boxes of distinct objects are separated by at least
  ``GAP * size / 32`` px (2 px at 32x32) along x or y (rejection sampling). So each object is
  one connected blob of its color.
- single: 1 object; color_binding: 2 objects; counting: N copies of the same color+shape
  (sizes vary per copy); spatial: 2 objects with the subject's box entirely on the stated
  side of the other's box, separated by at least ``SPATIAL_GAP * size / 32`` px (3 px) along
  the relation axis (e.g. "above": subject bottom <= other top - 3 px); the other axis is free.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 50),
    "blue": (40, 80, 230),
    "yellow": (240, 215, 30),
    "purple": (145, 55, 200),
    "orange": (245, 130, 20),
}
BACKGROUND: tuple[int, int, int] = (200, 200, 200)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
CATEGORIES: tuple[str, ...] = ("single", "color_binding", "counting", "spatial")
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")
SPLITS: tuple[str, ...] = ("train", "val", "unseen", "unseen-train", "unseen-val", "unseen-train-all")

# Color-shape combos held out of every train prompt; each color and each shape is still seen.
UNSEEN_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("orange", "triangle"), ("blue", "circle"), ("green", "square"), ("purple", "triangle")}
)
VAL_FRACTION = 0.2
UNSEEN_VAL_FRACTION = 0.5  # unseen pairs held out of RL: the demo's held-out set
SPLIT_SEED = 1234  # fixed: splits are part of the benchmark definition
GAP = 2.0  # min separation between bounding boxes, px at 32x32
SPATIAL_GAP = 3.0  # min separation along the relation axis, px at 32x32
SIZE_RANGE = (0.25, 0.40)  # bounding-box side as a fraction of the image side
SUPERSAMPLE = 4

_RELATION_WORDS = {"above": "above", "below": "below", "left of": "to the left of", "right of": "to the right of"}
INVERSE_RELATION = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
_COUNT_WORDS = {2: "two", 3: "three"}


@dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str

    def phrase(self) -> str:
        """'a red circle' / 'an orange square'."""
        article = "an" if self.color[0] in "aeiou" else "a"
        return f"{article} {self.color} {self.shape}"


@dataclass(frozen=True)
class PromptSpec:
    text: str
    category: str
    objects: tuple[ShapeObject, ...]
    relation: str | None = None
    count: int | None = None

    def to_metadata(self) -> dict:
        """JSON-serializable metadata, the form rewards receive next to the prompt."""
        return {
            "category": self.category,
            "objects": [{"color": o.color, "shape": o.shape} for o in self.objects],
            "relation": self.relation,
            "count": self.count,
        }

    @classmethod
    def from_metadata(cls, text: str, meta: dict) -> PromptSpec:
        objects = tuple(ShapeObject(o["color"], o["shape"]) for o in meta["objects"])
        return cls(text, meta["category"], objects, meta.get("relation"), meta.get("count"))


# ----------------------------------------------------------------------------- grammar

def single(obj: ShapeObject) -> PromptSpec:
    return PromptSpec(obj.phrase(), "single", (obj,))


def color_binding(a: ShapeObject, b: ShapeObject) -> PromptSpec:
    return PromptSpec(f"{a.phrase()} and {b.phrase()}", "color_binding", (a, b))


def counting(obj: ShapeObject, count: int) -> PromptSpec:
    return PromptSpec(f"{_COUNT_WORDS[count]} {obj.color} {obj.shape}s", "counting", (obj,), count=count)


def spatial(subject: ShapeObject, other: ShapeObject, relation: str) -> PromptSpec:
    text = f"{subject.phrase()} {_RELATION_WORDS[relation]} {other.phrase()}"
    return PromptSpec(text, "spatial", (subject, other), relation=relation)


_OBJECT_PHRASE = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})s?\b")


def named_objects(text: str) -> list[str]:
    """Every object a prompt names, in order, as 'color shape' ('a purple triangle above a red circle': ['purple
    triangle', 'red circle']; 'two purple triangles': ['purple triangle']). Results files keep only the prompt text."""
    return [f"{match[1]} {match[2]}" for match in _OBJECT_PHRASE.finditer(text)]


def first_named_object(text: str) -> str | None:
    """The first of `named_objects(text)`; None if the prompt names none."""
    return next(iter(named_objects(text)), None)


def all_combos() -> list[ShapeObject]:
    return [ShapeObject(c, s) for c in COLORS for s in SHAPES]


def seen_combos() -> list[ShapeObject]:
    return [o for o in all_combos() if (o.color, o.shape) not in UNSEEN_COMBOS]


def pair_prompts(category: str, a: ShapeObject, b: ShapeObject) -> list[PromptSpec]:
    """Every phrasing of the unordered pair {a, b} in `category`."""
    if category == "color_binding":
        return [color_binding(a, b), color_binding(b, a)]
    return [spatial(s, o, r) for s, o in ((a, b), (b, a)) for r in RELATIONS]


def _split(items: list, seed_offset: int, val_fraction: float = VAL_FRACTION) -> tuple[list, list]:
    """Deterministic (train, val) partition of `items` with `val_fraction` of them in val."""
    order = np.random.default_rng(SPLIT_SEED + seed_offset).permutation(len(items))
    n_val = round(val_fraction * len(items))
    val = {int(i) for i in order[:n_val]}
    return [x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val]


@lru_cache(maxsize=None)
def _prompt_table() -> dict[tuple[str, str], tuple[PromptSpec, ...]]:
    """(category, split) -> prompts, built once."""
    seen = seen_combos()
    table: dict[tuple[str, str], tuple[PromptSpec, ...]] = {}
    singles = tuple(single(o) for o in seen)
    table["single", "train"] = table["single", "val"] = singles
    for split in (s for s in SPLITS if s.startswith("unseen")):  # no unseen combos in single or counting prompts
        table["single", split] = table["counting", split] = ()

    count_items = [(o, n) for n in _COUNT_WORDS for o in seen]
    train, val = _split(count_items, 2)
    table["counting", "train"] = tuple(counting(o, n) for o, n in train)
    table["counting", "val"] = tuple(counting(o, n) for o, n in val)

    seen_pairs = [(a, b) for a, b in combinations(seen, 2) if a.color != b.color]
    everything = all_combos()
    unseen_pairs = [
        (a, b) for a, b in combinations(everything, 2)
        if a.color != b.color and ({(a.color, a.shape), (b.color, b.shape)} & UNSEEN_COMBOS)
    ]
    for offset, category in ((1, "color_binding"), (3, "spatial")):
        train, val = _split(seen_pairs, offset)
        table[category, "train"] = tuple(p for a, b in train for p in pair_prompts(category, a, b))
        table[category, "val"] = tuple(p for a, b in val for p in pair_prompts(category, a, b))
        # One phrasing per unseen pair (chosen deterministically) keeps the split small.
        rng = np.random.default_rng(SPLIT_SEED + 10 + offset)
        table[category, "unseen"] = tuple(
            (options := pair_prompts(category, a, b))[rng.integers(len(options))] for a, b in unseen_pairs
        )
        # RL on unseen-train, held-out evaluation on unseen-val: both need the unseen combos,
        # neither shares a prompt (one prompt per pair) with the other.
        rl, held_out = _split(list(table[category, "unseen"]), 20 + offset, UNSEEN_VAL_FRACTION)
        table[category, "unseen-train"], table[category, "unseen-val"] = tuple(rl), tuple(held_out)
        # Every phrasing of the unseen-train pairs: more distinct RL prompts, still none of unseen-val's pairs.
        table[category, "unseen-train-all"] = tuple(p for spec in rl for p in pair_prompts(category, *spec.objects))
    return table


def prompt_set(category: str, split: str) -> list[PromptSpec]:
    """The prompts of `category` in `split` (one of SPLITS), in a fixed order."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; choose one of {CATEGORIES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return list(_prompt_table()[category, split])


def all_prompts(split: str) -> list[PromptSpec]:
    """All categories' prompts of `split`, concatenated in CATEGORIES order."""
    return [p for c in CATEGORIES for p in prompt_set(c, split)]


# ----------------------------------------------------------------------------- renderer

@dataclass(frozen=True)
class Placement:
    """One drawn object: bounding box top-left (x, y) and side `side`, in pixels (floats)."""

    obj: ShapeObject
    x: float
    y: float
    side: float


def _separated(a: Placement, b: Placement, gap: float) -> bool:
    return (a.x + a.side + gap <= b.x or b.x + b.side + gap <= a.x
            or a.y + a.side + gap <= b.y or b.y + b.side + gap <= a.y)


def _in_relation(s: Placement, o: Placement, relation: str, gap: float) -> bool:
    """Subject box `s` entirely on the `relation` side of `o`, `gap` px apart (y grows down)."""
    if relation == "above":
        return s.y + s.side + gap <= o.y
    if relation == "below":
        return _in_relation(o, s, "above", gap)
    if relation == "left of":
        return s.x + s.side + gap <= o.x
    return _in_relation(o, s, "left of", gap)


def _objects_to_draw(spec: PromptSpec) -> tuple[ShapeObject, ...]:
    return spec.objects * spec.count if spec.category == "counting" else spec.objects


def sample_layout(spec: PromptSpec, rng: np.random.Generator, size: int = 32) -> list[Placement]:
    """Random non-overlapping placements satisfying the render rules (rejection sampling)."""
    objects = _objects_to_draw(spec)
    unit = size / 32
    lo, hi = SIZE_RANGE[0] * size, SIZE_RANGE[1] * size
    for _ in range(10_000):
        boxes: list[Placement] = []
        for obj in objects:
            side = rng.uniform(lo, hi)
            x, y = rng.uniform(unit, size - unit - side, size=2)
            boxes.append(Placement(obj, float(x), float(y), float(side)))
        if not all(_separated(a, b, GAP * unit) for a, b in combinations(boxes, 2)):
            continue
        if spec.relation is not None and not _in_relation(boxes[0], boxes[1], spec.relation, SPATIAL_GAP * unit):
            continue
        return boxes
    raise RuntimeError(f"could not place the objects of {spec.text!r} at size {size}")


def draw(placements: list[Placement], size: int = 32) -> np.ndarray:
    """Draw placements at SUPERSAMPLE x resolution and box-downsample: (size, size, 3) uint8."""
    k = SUPERSAMPLE
    canvas = Image.new("RGB", (size * k, size * k), BACKGROUND)
    pen = ImageDraw.Draw(canvas)
    for p in placements:
        x0, y0, x1, y1 = p.x * k, p.y * k, (p.x + p.side) * k - 1, (p.y + p.side) * k - 1
        fill = COLORS[p.obj.color]
        if p.obj.shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif p.obj.shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            pen.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def render(spec: PromptSpec, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A random image satisfying `spec`: (size, size, 3) uint8. Same rng state -> same image."""
    return draw(sample_layout(spec, rng, size), size)
