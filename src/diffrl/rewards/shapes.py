"""ShapesWorld rewards: the exact scorer of `diffrl.shapes.scorer` behind the reward contract.

- ``shapes``: dense score in [0, 1], the fraction of the prompt's constraints met (any category).
- ``shapes_success``: 1.0 when every constraint is met, else 0.0.
- ``shapes_graded``: the dense score with the spatial relation graded by its pixel margin,
  sigmoid(margin / 2 px), so a spatial sample that nearly satisfies the relation scores more than one
  that is far off (the same as ``shapes`` on the other categories).
- ``shapes_hue``: the dense score with every object's color graded by how near the nearest drawn object's fill
  comes to the named color, exp(-d^2 / (2 * 50^2)) in RGB units (1 when it is that color), so that a triangle drawn
  red-orange for "an orange triangle" scores more than a red one: a signal where every sample of a group misses
  the color and the binary terms tie.
- ``shapes_success_hue``: ``shapes_success`` graded by hue: 0 for a failure, and for a success the mean over the
  prompt's objects of exp(-d^2 / (2 * 50^2)), d the RGB distance of the object's fill from its named color, so an
  object that drifts off its hue loses credit before the scorer reads it as another color, and groups whose K
  samples all succeed still carry a signal.
- ``shapes_success_strict``: ``shapes_success`` with every color read with a margin: a success counts only where
  each object's fill lies within 30% of the way from its named color to the nearest other palette color (red: 30
  RGB units toward orange), so a hue that drifts toward its neighbor fails with the full weight of a failure, not a
  small grade (docs/tuning.md, section 42).
- ``shapes_<category>`` (single, color_binding, counting, spatial): the dense score on that
  category's samples and NaN on the others. NaN rather than an error, so that one name works
  on mixed prompt sets: evaluation averages with nanmean (``shapes_spatial`` over
  ``shapes:all_val`` is the spatial-only score) and the trainer skips NaN rewards (counted in
  ``nan_rewards_total``), so training on a mixed set learns from that category alone.

Every sample needs its ShapesWorld metadata (`PromptSpec.to_metadata()`, which the
``shapes:<category>_<split>`` prompt sets attach); without it the reward raises `DiffrlError`.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diffrl.errors import DiffrlError
from diffrl.rewards.base import Reward, register_reward
from diffrl.shapes.scorer import (COLOR_SOFTNESS, graded_batch, score_batch, strict_success_batch,
                                  success_hue_batch)
from diffrl.shapes.world import CATEGORIES, PromptSpec


def _specs(prompts: list[str], metadata: list[dict]) -> list[PromptSpec]:
    """PromptSpecs from the metadata; a sample without ShapesWorld metadata is a config error."""
    specs = []
    for text, meta in zip(prompts, metadata):
        if not meta or "category" not in meta or "objects" not in meta:
            raise DiffrlError(f"the shapes reward needs ShapesWorld prompt metadata, but prompt {text!r} has none; "
                              "use a shapes:<category>_<split> prompt set")
        specs.append(PromptSpec.from_metadata(text, meta))
    return specs


def shapes_dense(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
    """(N,) fraction of each prompt's constraints met, in [0, 1]."""
    return score_batch(np.asarray(images), _specs(prompts, metadata))[0]


def shapes_success(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
    """(N,) 1.0 where every constraint is met, else 0.0."""
    return score_batch(np.asarray(images), _specs(prompts, metadata))[1].astype(np.float64)


def shapes_graded(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
    """(N,) dense score with the spatial relation graded by its margin, in [0, 1]."""
    return graded_batch(np.asarray(images), _specs(prompts, metadata))


def shapes_hue(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
    """(N,) dense score with each object's color graded by its distance from the named color, in [0, 1]."""
    return graded_batch(np.asarray(images), _specs(prompts, metadata), relation_softness=None,
                        color_softness=COLOR_SOFTNESS)


def shapes_success_hue(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
    """(N,) 0 where a constraint fails, else how near every object's fill is to its named color, in [0, 1]."""
    return success_hue_batch(np.asarray(images), _specs(prompts, metadata))


def shapes_success_strict(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
    """(N,) 1.0 where every constraint is met and every object's fill is near its named color, else 0.0."""
    return strict_success_batch(np.asarray(images), _specs(prompts, metadata))


def category_reward(category: str) -> Reward:
    """The dense score on `category`'s samples, NaN on the others (see the module docstring)."""

    def reward(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        specs = _specs(prompts, metadata)
        dense = score_batch(np.asarray(images), specs)[0]
        return np.where([s.category == category for s in specs], dense, np.nan)

    reward.__name__ = f"shapes_{category}"
    return reward


def _factory(reward: Reward) -> Callable[[], Reward]:
    return lambda: reward


register_reward("shapes")(_factory(shapes_dense))
register_reward("shapes_success")(_factory(shapes_success))
register_reward("shapes_graded")(_factory(shapes_graded))
register_reward("shapes_hue")(_factory(shapes_hue))
register_reward("shapes_success_hue")(_factory(shapes_success_hue))
register_reward("shapes_success_strict")(_factory(shapes_success_strict))
for _category in CATEGORIES:
    register_reward(f"shapes_{_category}")(_factory(category_reward(_category)))
