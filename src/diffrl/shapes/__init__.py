"""ShapesWorld: a CPU-sized miniature of Stable Diffusion + T2I-CompBench.

`world` holds the palette, prompt grammar and renderer; `pretrain` trains the small SD
pipeline shipped at `BUILTIN_MODEL_DIR`; `cli` adds the `diffrl shapes` commands.
"""
from pathlib import Path

from diffrl.shapes.world import (
    BACKGROUND, CATEGORIES, COLORS, RELATIONS, SHAPES, UNSEEN_COMBOS, PromptSpec, ShapeObject,
    all_prompts, first_named_object, named_objects, prompt_set, render,
)

_ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_MODEL_DIR: Path = _ASSETS / "shapes"
# `builtin:NAME` -> shipped pipeline. shapes: the default base (docs/shapesworld.md). shapes-spatial: the base of the
# spatial-relation studies, which reads the relation word (a spatial-only high-noise curriculum after a zero-terminal-
# SNR pretraining; docs/tuning.md sections 11-13): shipped because that curriculum's outcome moves across CPUs.
# shapes-spatial2: the same curriculum with a 1,250-step spatial phase, built on another CPU, chosen for the room it
# leaves (single objects 1.000, held-out spatial 0.611; docs/tuning.md sections 30-33).
BUILTIN_MODELS: dict[str, Path] = {"shapes": BUILTIN_MODEL_DIR, "shapes-spatial": _ASSETS / "shapes_spatial",
                                   "shapes-spatial2": _ASSETS / "shapes_spatial2"}

__all__ = [
    "BACKGROUND", "BUILTIN_MODEL_DIR", "BUILTIN_MODELS", "CATEGORIES", "COLORS", "RELATIONS", "SHAPES", "UNSEEN_COMBOS",
    "PromptSpec", "ShapeObject", "all_prompts", "first_named_object", "named_objects", "prompt_set", "render",
]
