"""The five estimators differ only in which advantage and which loss they use.

| algo          | advantage                                   | loss                       | updates per batch |
|---------------|---------------------------------------------|----------------------------|-------------------|
| reinforce     | r                                           | policy gradient            | 1 (on-policy)     |
| reinforce-loo | r_i - mean_{j != i} r_j (K >= 2)            | policy gradient            | 1 (on-policy)     |
| ppo           | per-prompt (r - mu_c) / sigma_c (DDPO)      | clipped, importance ratio  | several           |
| loop          | r_i - mean_{j != i} r_j (K >= 2)            | clipped, importance ratio  | several           |
| grpo          | (r_i - mean) / std over the group (K >= 2)  | clipped, importance ratio  | several           |
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffrl.core import advantages as adv
from diffrl.core.losses import LossTerms, clipped_surrogate, policy_gradient


@dataclass(frozen=True)
class Estimator:
    name: str
    advantage: str  # "raw" | "loo" | "per_prompt" | "group"
    clipped: bool  # PPO clipping + importance sampling, several updates per batch allowed
    needs_group: bool  # requires K >= 2 samples per prompt
    summary: str

    def loss(self, log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float) -> LossTerms:
        if self.clipped:
            return clipped_surrogate(log_prob, old_log_prob, advantages, clip_range)
        return policy_gradient(log_prob, old_log_prob, advantages)


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in [
    Estimator("reinforce", "raw", False, False, "score function, no baseline, one step per batch (DDPO_SF)"),
    Estimator("reinforce-loo", "loo", False, True, "REINFORCE with the leave-one-out baseline over K samples"),
    Estimator("ppo", "per_prompt", True, False, "DDPO_IS: per-prompt reward statistics, importance ratio, clipping"),
    Estimator("loop", "loo", True, True, "LOOP: leave-one-out advantage + PPO clipping and importance sampling"),
    Estimator("grpo", "group", True, True, "group mean/std advantage + PPO clipping"),
]}


def compute_advantages(
    estimator: Estimator,
    rewards: np.ndarray,
    prompts: list[str],
    group_size: int,
    tracker: adv.PerPromptStatTracker | None = None,
    std_mode: str = "none",
    clip: float = 5.0,
) -> np.ndarray:
    """Advantages for N = G * group_size samples laid out group by group (non-finite rewards -> 0).

    rewards: (N,), prompts: N strings (used by the per-prompt tracker). Returns (N,) clamped to [-clip, clip].
    """
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if estimator.advantage == "per_prompt":
        if tracker is None:
            raise ValueError("the ppo estimator needs a PerPromptStatTracker")
        a = torch.as_tensor(tracker.update(prompts, rewards))
    else:
        grouped = r.reshape(-1, group_size)  # (G, group_size)
        valid = torch.isfinite(grouped)
        if estimator.advantage == "raw":
            a = adv.raw_reward(grouped, valid)
        elif estimator.advantage == "loo":
            a = adv.scale_by_std(adv.leave_one_out(grouped, valid), valid, std_mode)
        elif estimator.advantage == "group":
            a = adv.group_normalized(grouped, valid)
        else:
            raise ValueError(f"unknown advantage kind {estimator.advantage!r}")
        a = a.reshape(-1)
    return a.clamp(-clip, clip).numpy()
