"""Compute rewards in the background while the trainer samples the next batch (as DDPO does).

    scorer = AsyncReward(reward)
    future = scorer.submit(images, prompts, metadata)   # returns at once
    ...sample the next batch...
    rewards = future.result()                           # (N,) float64, same as reward(...)

Inputs are copied at submit time, so the caller may reuse its buffers. With max_workers=1,
batches are scored in submission order, one at a time (a GPU reward model is not assumed
thread-safe); raise max_workers only for rewards that are (e.g. remote:URL servers).
"""
from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from diffrl.rewards.base import Reward, check_rewards


class AsyncReward:
    def __init__(self, reward: Reward, max_workers: int = 1, name: str = "reward"):
        self.reward, self.name = reward, name
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="diffrl-reward")

    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        """Synchronous call, so an AsyncReward is itself a reward."""
        return self.submit(images, prompts, metadata).result()

    def submit(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> Future:
        """A Future of the (N,) float64 rewards; it raises whatever the reward raised."""
        images = np.array(images, copy=True)
        prompts, metadata = list(prompts), copy.deepcopy(list(metadata))
        return self._pool.submit(self._score, images, prompts, metadata)

    def _score(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        return check_rewards(self.reward(images, prompts, metadata), len(images), self.name)

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)

    def __enter__(self) -> AsyncReward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
