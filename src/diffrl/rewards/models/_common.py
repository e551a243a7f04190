"""Shared plumbing for model-backed rewards: settings from the environment, loading, batching.

Everything that touches a transformers API that changed between 4.x and 5.x lives here, so a
future change is fixed in one place.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from diffrl.errors import DiffrlError

DEVICE_ENV = "DIFFRL_REWARD_DEVICE"
BATCH_SIZE_ENV = "DIFFRL_REWARD_BATCH_SIZE"
DEFAULT_BATCH_SIZE = 16


def env_or(name: str, default: str | None) -> str | None:
    """The environment variable `name` if set and non-empty, else `default`."""
    value = os.environ.get(name, "").strip()
    return value or default


def resolve_device(device: str | None = None) -> str:
    """`device`, else $DIFFRL_REWARD_DEVICE, else "cuda" when available, else "cpu"."""
    device = device or env_or(DEVICE_ENV, None)
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_batch_size(batch_size: int | None = None) -> int:
    """`batch_size`, else $DIFFRL_REWARD_BATCH_SIZE, else 16."""
    if batch_size is None:
        raw = env_or(BATCH_SIZE_ENV, str(DEFAULT_BATCH_SIZE))
        try:
            batch_size = int(raw)
        except ValueError:
            raise DiffrlError(f"${BATCH_SIZE_ENV}={raw!r} is not an integer") from None
    if batch_size < 1:
        raise DiffrlError(f"reward batch size must be >= 1, got {batch_size}")
    return batch_size


def load_pretrained(cls, model_id: str, what: str, env: str | None = None):
    """`cls.from_pretrained(model_id)` with a one-line DiffrlError naming the fix on failure."""
    try:
        return cls.from_pretrained(model_id)
    except (OSError, ValueError) as err:
        hint = f" (set ${env} to a local directory)" if env else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DiffrlError(f"cannot load {what} from {model_id!r}{hint}: {first}") from None


def prepare(model, device: str):
    """Move to `device`, eval mode, no gradients: rewards are black boxes."""
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def check_inputs(images: np.ndarray, prompts: list[str], metadata: list[dict] | None = None) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DiffrlError(f"reward expects uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    if len(prompts) != len(images):
        raise DiffrlError(f"reward got {len(images)} images but {len(prompts)} prompts")
    return images


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def to_pil(images: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(image) for image in images]


def embeddings(output):
    """The projected embedding tensor from CLIP's get_image_features / get_text_features.

    transformers 5 returns a BaseModelOutputWithPooling whose `pooler_output` holds the projected
    embeddings; transformers 4.x returned the tensor itself. Both are accepted here.
    """
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected CLIP features output {type(output).__name__}")
    return pooled


def l2_normalize(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
