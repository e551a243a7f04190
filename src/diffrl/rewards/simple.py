"""Model-free rewards: DDPO's JPEG (in)compressibility (file size at quality 95, in kB) and brightness."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from diffrl.rewards.base import register_reward


def jpeg_size_kb(images: np.ndarray, quality: int = 95) -> np.ndarray:
    sizes = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return np.asarray(sizes, dtype=np.float64)


def jpeg_compressibility(images, prompts, metadata):
    return -jpeg_size_kb(images)


def jpeg_incompressibility(images, prompts, metadata):
    return jpeg_size_kb(images)


def brightness(images, prompts, metadata):
    """Mean pixel value in [0, 1]: a dense toy reward for smoke and learning tests."""
    return np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3)) / 255.0


register_reward("jpeg_compressibility")(lambda: jpeg_compressibility)
register_reward("jpeg_incompressibility")(lambda: jpeg_incompressibility)
register_reward("brightness")(lambda: brightness)
