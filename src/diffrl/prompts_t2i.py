"""T2I-CompBench prompt files (Huang et al., NeurIPS 2023): `t2i-compbench:<category>_<split>`.

The benchmark's repository ships them as examples/dataset/<category>_<split>.txt, one prompt per
line (about 700 train and 300 val prompts per category). They are not bundled here: point
$DIFFRL_T2I_COMPBENCH_DIR (or `root`) at a copy of that directory.
"""
from __future__ import annotations

import os
from pathlib import Path

from diffrl.errors import DiffrlError

PREFIX = "t2i-compbench:"
ROOT_ENV = "DIFFRL_T2I_COMPBENCH_DIR"
CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
SPLITS = ("train", "val")


def parse_t2i_compbench(spec: str) -> tuple[str, str]:
    """``"t2i-compbench:non_spatial_val"`` -> ("non_spatial", "val")."""
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    category, _, split = name.rpartition("_")
    if category not in CATEGORIES or split not in SPLITS:
        options = ", ".join(f"{c}_{s}" for c in CATEGORIES for s in SPLITS)
        raise DiffrlError(f"unknown T2I-CompBench prompt set {spec!r}; use {PREFIX}<category>_<split>: {options}")
    return category, split


def load_t2i_compbench(spec: str, root: str | os.PathLike | None = None) -> list[str]:
    """The prompts of `spec`, read from `<root>/<category>_<split>.txt` (blank lines skipped)."""
    category, split = parse_t2i_compbench(spec)
    root = root or os.environ.get(ROOT_ENV, "").strip()
    if not root:
        raise DiffrlError(f"{spec}: set ${ROOT_ENV} to T2I-CompBench's examples/dataset directory")
    directory = Path(root)
    if not directory.is_dir():
        raise DiffrlError(f"{spec}: T2I-CompBench directory {str(directory)!r} does not exist (${ROOT_ENV})")
    path = directory / f"{category}_{split}.txt"
    if not path.is_file():
        raise DiffrlError(f"{spec}: {str(path)!r} not found; expected T2I-CompBench's {category}_{split}.txt there")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DiffrlError(f"{spec}: {str(path)!r} holds no prompts")
    return prompts
