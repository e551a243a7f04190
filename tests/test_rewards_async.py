"""AsyncReward: background scoring gives exactly the synchronous results."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from diffrl.errors import DiffrlError
from diffrl.rewards.asynchronous import AsyncReward
from diffrl.rewards.simple import brightness, jpeg_compressibility


def batches(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8), ["p"] * 3, [{}] * 3) for _ in range(n)]


@pytest.mark.parametrize("reward", [brightness, jpeg_compressibility])
def test_results_identical_to_synchronous(reward):
    data = batches()
    with AsyncReward(reward) as scorer:
        futures = [scorer.submit(*b) for b in data]
        for future, b in zip(futures, data):
            np.testing.assert_array_equal(future.result(timeout=10), reward(*b))
        np.testing.assert_array_equal(scorer(*data[0]), reward(*data[0]))


def test_runs_in_background_while_caller_continues():
    release, started = threading.Event(), threading.Event()

    def slow(images, prompts, metadata):
        started.set()
        assert release.wait(10)
        return brightness(images, prompts, metadata)

    images, prompts, metadata = batches(1)[0]
    with AsyncReward(slow) as scorer:
        future = scorer.submit(images, prompts, metadata)
        assert started.wait(10) and not future.done()  # the "sampling" thread is free meanwhile
        expected = brightness(images, prompts, metadata)
        images[:] = 0  # the caller reuses its buffer: the submitted copy is unaffected
        release.set()
        np.testing.assert_array_equal(future.result(timeout=10), expected)


def test_errors_and_bad_outputs_surface_from_result():
    def broken(images, prompts, metadata):
        raise ValueError("boom")

    with AsyncReward(broken) as scorer:
        with pytest.raises(ValueError, match="boom"):
            scorer.submit(*batches(1)[0]).result(timeout=10)
    with AsyncReward(lambda images, prompts, metadata: [1.0], name="short") as scorer:
        with pytest.raises(DiffrlError, match="'short' returned shape"):
            scorer.submit(*batches(1)[0]).result(timeout=10)
