"""Advantage estimators. Rewards arrive grouped by prompt: (P, K) = P prompts x K samples each.

`valid` masks samples whose reward was NaN/inf: they get advantage 0 and are excluded
from every baseline and statistic.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor


def _mask(rewards: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    valid = torch.isfinite(rewards) if valid is None else valid & torch.isfinite(rewards)
    return torch.where(valid, rewards, torch.zeros_like(rewards)), valid


def leave_one_out(rewards: Tensor, valid: Tensor | None = None) -> Tensor:
    """A_i = r_i - 1/(K-1) sum_{j != i} r_j over the valid members of each group.

    Groups with fewer than two valid samples have no baseline and get advantage 0.
    rewards: (P, K) -> (P, K).
    """
    if rewards.shape[-1] < 2:
        raise ValueError("leave-one-out needs K >= 2 samples per prompt")
    r, valid = _mask(rewards, valid)
    n = valid.sum(dim=-1, keepdim=True)
    others = (r.sum(dim=-1, keepdim=True) - r) / (n - 1).clamp(min=1)
    return torch.where(valid & (n >= 2), r - others, torch.zeros_like(r))


def group_normalized(rewards: Tensor, valid: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """GRPO: A_i = (r_i - mean_group) / (std_group + eps), population std over valid members. (P, K) -> (P, K)."""
    if rewards.shape[-1] < 2:
        raise ValueError("group normalization needs K >= 2 samples per prompt")
    r, valid = _mask(rewards, valid)
    n = valid.sum(dim=-1, keepdim=True).clamp(min=1)
    mean = r.sum(dim=-1, keepdim=True) / n
    std = (((r - mean) ** 2 * valid).sum(dim=-1, keepdim=True) / n).sqrt()
    ok = valid & (valid.sum(dim=-1, keepdim=True) >= 2)
    return torch.where(ok, (r - mean) / (std + eps), torch.zeros_like(r))


def scale_by_std(advantages: Tensor, valid: Tensor, mode: str, eps: float = 1e-6) -> Tensor:
    """Optionally divide leave-one-out advantages by a std ('none', 'group' or 'batch'); LOOP leaves this open."""
    if mode == "none":
        return advantages
    a = torch.where(valid, advantages, torch.zeros_like(advantages))
    if mode == "group":
        n = valid.sum(dim=-1, keepdim=True).clamp(min=1)
        mean = a.sum(dim=-1, keepdim=True) / n
        std = (((a - mean) ** 2 * valid).sum(dim=-1, keepdim=True) / n).sqrt()
    elif mode == "batch":
        std = a[valid].std(unbiased=False) if valid.any() else a.new_tensor(1.0)
    else:
        raise ValueError(f"unknown std mode {mode!r}; use none, group or batch")
    return torch.where(valid, a / (std + eps), a)


def raw_reward(rewards: Tensor, valid: Tensor | None = None) -> Tensor:
    """REINFORCE without baseline: the advantage is the reward itself."""
    r, valid = _mask(rewards, valid)
    return torch.where(valid, r, torch.zeros_like(r))


class PerPromptStatTracker:
    """DDPO's per-prompt reward normalization: A = (r - mu_c) / (sigma_c + 1e-6).

    mu_c, sigma_c come from a buffer of the last `buffer_size` rewards of prompt c
    (current batch included); while a prompt has fewer than `min_count` rewards, the
    whole batch's statistics are used instead.
    """

    def __init__(self, buffer_size: int = 16, min_count: int = 16):
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffers: dict[str, deque] = {}

    def update(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        """prompts: N strings; rewards: (N,) with NaN for invalid samples -> (N,) advantages (0 where invalid)."""
        rewards = np.asarray(rewards, dtype=np.float64)
        finite = np.isfinite(rewards)
        advantages = np.zeros_like(rewards)
        batch_mean = rewards[finite].mean() if finite.any() else 0.0
        batch_std = rewards[finite].std() if finite.any() else 1.0
        for prompt in dict.fromkeys(prompts):
            idx = np.array([i for i, p in enumerate(prompts) if p == prompt and finite[i]], dtype=int)
            if idx.size == 0:
                continue
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[idx].tolist())
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                mean, std = np.mean(buffer), np.std(buffer)
            advantages[idx] = (rewards[idx] - mean) / (std + 1e-6)
        return advantages

    def state_dict(self) -> dict:
        return {"buffer_size": self.buffer_size, "min_count": self.min_count,
                "buffers": {k: list(v) for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffer_size, self.min_count = state["buffer_size"], state["min_count"]
        self.buffers = {k: deque(v, maxlen=self.buffer_size) for k, v in state["buffers"].items()}
