"""T2I-CompBench prompt files (Huang et al., NeurIPS 2023): `t2i-compbench:<name>`.

The benchmark's repository ships them as examples/dataset/<name>.txt, one prompt per line: the
original <category>_<split>.txt files (color_train, non_spatial_val, ...) and T2I-CompBench++'s
additions (numeracy_val, 3d_spatial_train, shape_val_unseen, ...). Any `<name>.txt` in the folder is
accepted. They are not bundled here: point $DIFFRL_T2I_COMPBENCH_DIR (or `root`) at a copy of that
directory.
"""
from __future__ import annotations

import os
from pathlib import Path

from diffrl.errors import DiffrlError

PREFIX = "t2i-compbench:"
ROOT_ENV = "DIFFRL_T2I_COMPBENCH_DIR"


def parse_t2i_compbench(spec: str) -> str:
    """``"t2i-compbench:non_spatial_val"`` -> "non_spatial_val" (the prefix and a ``.txt`` are optional)."""
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    name = name.strip().removesuffix(".txt")
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise DiffrlError(f"unknown T2I-CompBench prompt set {spec!r}; use {PREFIX}<name> for a <name>.txt "
                          f"in ${ROOT_ENV}")
    return name


def available_sets(directory: str | os.PathLike) -> list[str]:
    """The prompt-set names in a T2I-CompBench dataset folder: the stems of its .txt files, sorted."""
    return sorted(p.stem for p in Path(directory).glob("*.txt") if p.is_file() and not p.name.startswith("."))


def load_t2i_compbench(spec: str, root: str | os.PathLike | None = None) -> list[str]:
    """The prompts of `spec`, read from `<root>/<name>.txt` (blank lines skipped)."""
    name = parse_t2i_compbench(spec)
    root = root or os.environ.get(ROOT_ENV, "").strip()
    if not root:
        raise DiffrlError(f"{spec}: set ${ROOT_ENV} to T2I-CompBench's examples/dataset directory")
    directory = Path(root)
    if not directory.is_dir():
        raise DiffrlError(f"{spec}: T2I-CompBench directory {str(directory)!r} does not exist (${ROOT_ENV})")
    path = directory / f"{name}.txt"
    if not path.is_file():
        names = available_sets(directory)
        listed = ", ".join(names) if names else "none (no .txt files; is it T2I-CompBench's examples/dataset?)"
        raise DiffrlError(f"unknown T2I-CompBench prompt set {spec!r}: no {name}.txt in {str(directory)!r}; "
                          f"available: {listed}")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DiffrlError(f"{spec}: {str(path)!r} holds no prompts")
    return prompts
