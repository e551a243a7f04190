"""B2-DiffuRL as a schedule and a selection rule (Hu et al., CVPR 2025; hu-zijing/B2-DiffuRL).

Steps are indexed in sampling order: step 0 is x_T -> x_{T-1}, step N-1 ends at x_0.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor


def trained_step_count(stage: int, num_steps: int, start_steps: int, stages: int) -> int:
    """n_s = n_start + floor(s * (N - n_start + 1) / S), capped at N (the public code's schedule)."""
    return min(num_steps, start_steps + (stage * (num_steps - start_steps + 1)) // stages)


def trained_interval(stage: int, num_steps: int, start_steps: int, stages: int) -> tuple[int, int]:
    """[first, end) step indices trained at `stage`: the last n_s steps. `first` is also the branch point."""
    n = trained_step_count(stage, num_steps, start_steps, stages)
    return num_steps - n, num_steps


def stage_of_epoch(epoch: int, epochs_per_stage: int, stages: int) -> int:
    """Stage of a 0-based epoch; after the last stage the run stays there (all steps trained)."""
    return min(epoch // epochs_per_stage, stages - 1)


def select_siblings(z: Tensor, threshold: float) -> Tensor:
    """Keep the best sibling if its z >= threshold and the worst if its z <= -threshold.

    z: (G, B) per-prompt z-scores of G branch groups of B siblings -> (G, B) bool mask.
    Non-finite z (invalid rewards) are never selected.
    """
    finite = torch.isfinite(z)
    best = torch.where(finite, z, torch.full_like(z, -torch.inf)).argmax(dim=-1, keepdim=True)
    worst = torch.where(finite, z, torch.full_like(z, torch.inf)).argmin(dim=-1, keepdim=True)
    keep = torch.zeros_like(z, dtype=torch.bool)
    keep.scatter_(-1, best, z.gather(-1, best) >= threshold)
    keep.scatter_(-1, worst, keep.gather(-1, worst) | (z.gather(-1, worst) <= -threshold))
    return keep & finite


class StageRewardHistory:
    """Per-prompt rewards of the current stage and the last `history_stages` stages, for z-scores."""

    def __init__(self, history_stages: int = 8):
        self.history_stages = history_stages
        self.stages: deque[tuple[int, dict[str, list[float]]]] = deque(maxlen=history_stages + 1)

    def add(self, stage: int, prompts: list[str], rewards: np.ndarray) -> None:
        if not self.stages or self.stages[-1][0] != stage:
            self.stages.append((stage, {}))
        current = self.stages[-1][1]
        for prompt, reward in zip(prompts, rewards):
            if np.isfinite(reward):
                current.setdefault(prompt, []).append(float(reward))

    def zscores(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        """(r - mean_c) / (std_c + 1e-6) over prompt c's remembered rewards (NaN where r is not finite)."""
        out = np.full(len(rewards), np.nan)
        for i, (prompt, reward) in enumerate(zip(prompts, rewards)):
            pool = [r for _, table in self.stages for r in table.get(prompt, [])]
            if np.isfinite(reward) and pool:
                out[i] = (reward - np.mean(pool)) / (np.std(pool) + 1e-6)
        return out

    def state_dict(self) -> dict:
        return {"history_stages": self.history_stages, "stages": [[s, t] for s, t in self.stages]}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["history_stages"])
        self.stages.extend((s, t) for s, t in state["stages"])
