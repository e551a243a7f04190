"""The study scripts under docs/tuning: their pure helpers."""
import importlib.util
from pathlib import Path

import numpy as np

TUNING = Path(__file__).resolve().parents[1] / "docs" / "tuning"


def load_tuning_script(name: str):
    spec = importlib.util.spec_from_file_location(name, TUNING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_base_level_groups_split_at_0_15_and_0_85():
    seeds = load_tuning_script("seeds")
    base = np.array([0.0, 0.14, 0.15, 0.5, 0.84, 0.85, 1.0])
    assert seeds.base_level_groups(base) == {
        "base rare (< 0.15)": [0, 1],
        "base middle": [2, 3, 4],
        "base near-solved (>= 0.85)": [5, 6],
    }
