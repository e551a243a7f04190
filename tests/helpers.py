"""User-style reward functions referenced as tests.helpers:NAME from the CLI tests."""
import numpy as np


def wrong_shape_reward(images, prompts, metadata):
    return np.zeros((len(images), 2))


def half_nan_reward(images, prompts, metadata):
    values = images.astype(np.float64).mean(axis=(1, 2, 3)) / 255
    values[::2] = np.nan
    return values


def left_right_contrast(images, prompts, metadata):
    """Mean brightness of the left half minus the right half, in [-1, 1].

    A dense toy reward for learning tests on random pipelines: a random VAE decoder starts with
    GroupNorm, which erases global latent shifts (so plain brightness is nearly uncontrollable),
    but keeps spatial patterns, which the UNet can learn to produce.
    """
    x = images.astype(np.float64) / 255.0
    half = x.shape[2] // 2
    return x[:, :, :half].mean(axis=(1, 2, 3)) - x[:, :, half:].mean(axis=(1, 2, 3))


def prompt_list():
    return ["a red circle", ("a blue square", {"category": "x"})]


_counter = {"n": 0}


def prompt_generator():
    _counter["n"] += 1
    return f"prompt {_counter['n']}", {"index": _counter["n"]}


def flat_reward(images, prompts, metadata):
    """The same reward for every image: every leave-one-out advantage is 0, so the policy gradient is too."""
    return np.zeros(len(images))
