"""ShapesWorld: a CPU-sized miniature of Stable Diffusion + T2I-CompBench.

`world` holds the palette, prompt grammar and renderer; `pretrain` trains the small SD
pipeline shipped at `BUILTIN_MODEL_DIR`; `cli` adds the `diffrl shapes` commands.
"""
from pathlib import Path

from diffrl.shapes.world import (
    BACKGROUND, CATEGORIES, COLORS, RELATIONS, SHAPES, UNSEEN_COMBOS, PromptSpec, ShapeObject,
    all_prompts, first_named_object, prompt_set, render,
)

BUILTIN_MODEL_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "shapes"

__all__ = [
    "BACKGROUND", "BUILTIN_MODEL_DIR", "CATEGORIES", "COLORS", "RELATIONS", "SHAPES", "UNSEEN_COMBOS",
    "PromptSpec", "ShapeObject", "all_prompts", "first_named_object", "prompt_set", "render",
]
