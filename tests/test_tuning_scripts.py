"""The study scripts under docs/tuning: their pure helpers."""
import numpy as np

from tests.conftest import TUNING, load_script


def test_base_level_groups_split_at_0_15_and_0_85():
    seeds = load_script(TUNING / "seeds.py")
    base = np.array([0.0, 0.14, 0.15, 0.5, 0.84, 0.85, 1.0])
    assert seeds.base_level_groups(base) == {
        "base rare (< 0.15)": [0, 1],
        "base middle": [2, 3, 4],
        "base near-solved (>= 0.85)": [5, 6],
    }
