"""Shared fixtures: tiny random Stable Diffusion (SD 1.x/2.x and SD3) pipelines built from configs (no hub, no
download)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TUNING = BENCHMARKS.parent / "docs" / "tuning"
WORDS = ["a", "an", "red", "green", "blue", "yellow", "circle", "square", "triangle", "and", "two", "above", "cat", "dog"]


def load_script(path: Path):
    """The module of a script outside the package (benchmarks/, docs/tuning/: script directories, not packages),
    loaded with its directory on sys.path as `python SCRIPT` would, so its imports of sibling scripts resolve."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_benchmark(name: str):
    """The module of benchmarks/<name>.py."""
    return load_script(BENCHMARKS / f"{name}.py")


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A random SD-architecture pipeline (16x16 images, 8x8x4 latents) saved with save_pretrained."""
    from diffrl.models.tiny import build_tiny_pipeline

    directory = tmp_path_factory.mktemp("tiny_sd")
    build_tiny_pipeline(directory, WORDS, sample_size=16, block_channels=(16, 32), cross_attention_dim=16,
                        vae_channels=(16, 32), seed=0)
    return directory


@pytest.fixture(scope="session")
def sd3_dir(tmp_path_factory):
    """A random SD3-architecture pipeline (models.tiny_sd3) saved with save_pretrained."""
    from diffrl.models.tiny_sd3 import tiny_sd3_pipeline

    directory = tmp_path_factory.mktemp("tiny_sd3")
    tiny_sd3_pipeline().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("a red circle\na blue square\n\n# a comment\na green triangle\na yellow cat\n")
    return path
