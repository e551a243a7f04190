"""Skipping prompts whose last group taught nothing: pre-sampling filtering of zero-advantage prompts.

Under a group baseline (LOOP, GRPO, REINFORCE-LOO) a prompt whose K images all got the same reward has a zero
advantage for every image: no gradient without a KL penalty, yet its sampling costs as much as any other. A
prompt's outcome changes slowly from one epoch to the next, so a prompt that was flat the last time it was drawn is
likely flat again; passing over it with probability `skip_prob` (and drawing another prompt in its place) spends
the sampling on prompts that still teach, while every flat prompt keeps a chance (1 - skip_prob per draw) to show
it has started to teach again. This is the selective-rollout idea of GRESO (Zheng et al., 2025, "Act Only When It
Pays"), with one fixed skip probability instead of GRESO's adaptive one.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

# Draw rounds before giving up on replacements: with every prompt flat and skip_prob near 1 the batch is filled
# with whatever the next round draws, so an epoch never stalls.
MAX_DRAW_ROUNDS = 100


def flat_prompts(texts: Sequence[str], advantages: np.ndarray) -> dict[str, bool]:
    """For each prompt of an epoch: True when every one of its images has a zero advantage (a NaN advantage
    counts as nonzero: the prompt is not known to be flat)."""
    flat: dict[str, bool] = {}
    for text, advantage in zip(texts, advantages):
        flat[text] = flat.get(text, True) and advantage == 0
    return flat


def update_flat_set(flat_set: set[str], epoch_flat: dict[str, bool]) -> None:
    """Record each prompt's latest outcome: flat prompts join the set, prompts that taught leave it."""
    for text, is_flat in epoch_flat.items():
        if is_flat:
            flat_set.add(text)
        else:
            flat_set.discard(text)


def draw_skipping_flat(draw: Callable[[int], list], n: int, flat_set: Collection[str], skip_prob: float,
                       rng: np.random.Generator) -> tuple[list, int]:
    """n prompts from `draw(m)` (m (prompt, metadata) pairs), each drawn prompt in `flat_set` passed over with
    probability skip_prob and replaced by a new draw. Returns (prompts, how many were passed over). With skip_prob
    0 it is `draw(n)` and consumes nothing of `rng`."""
    chosen, passed_over = [], 0
    for _ in range(MAX_DRAW_ROUNDS):
        for prompt in draw(n - len(chosen)):
            if skip_prob > 0 and prompt[0] in flat_set and rng.random() < skip_prob:
                passed_over += 1
            else:
                chosen.append(prompt)
        if len(chosen) == n:
            return chosen, passed_over
    return chosen + draw(n - len(chosen)), passed_over
