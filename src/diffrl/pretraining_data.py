"""Images with captions for the pretraining loss (`train.ptx_coef`): ShapesWorld renders, or a folder of images.

A source draws a batch with a numpy Generator: `draw(rng, n, size)` -> (captions, images as a (n, 3, size, size)
float tensor in [-1, 1], the range SD's VAE takes). `train.ptx_data` names one:
  shapes:<category>_<split>[+...]   ShapesWorld renders of those prompts, a fresh layout at every draw
  path/to/folder                    images listed in folder/metadata.jsonl, one {"file_name": ..., "text": ...} a
                                    line (the Hugging Face imagefolder layout), center-cropped and resized
  own_samples                       the epoch's own samples that beat their group (`OwnSamples`): latents, not images
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffrl.errors import DiffrlError
from diffrl.prompts import Prompt, load_prompts

METADATA_FILE = "metadata.jsonl"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float in [-1, 1], the range SD's VAE works in."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class ShapesRenders:
    """ShapesWorld prompts and a fresh render of each drawn one (what the ShapesWorld bases were pretrained on)."""

    def __init__(self, prompts: list[Prompt], name: str):
        from diffrl.shapes.world import PromptSpec

        if any("objects" not in meta for _, meta in prompts):
            raise DiffrlError(f"train.ptx_data={name}: renders need ShapesWorld prompts (shapes:<category>_<split>)")
        self.specs = [PromptSpec.from_metadata(text, meta) for text, meta in prompts]
        self.captions = [spec.text for spec in self.specs]

    def draw(self, rng: np.random.Generator, n: int, size: int) -> tuple[list[str], torch.Tensor]:
        from diffrl.shapes.world import render

        specs = [self.specs[i] for i in rng.integers(len(self.specs), size=n)]
        return [s.text for s in specs], to_tensor(np.stack([render(s, rng, size) for s in specs]))


class ImageFolder:
    """Captioned images listed in a folder's metadata.jsonl, read from disk at each draw."""

    def __init__(self, directory: Path):
        metadata = directory / METADATA_FILE
        if not metadata.is_file():
            raise DiffrlError(f"train.ptx_data={directory}: no {METADATA_FILE} in it (one "
                              '{"file_name": ..., "text": ...} per line)')
        self.files, self.captions = [], []
        for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                file, caption = directory / record["file_name"], str(record["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DiffrlError(f"{metadata}, line {number}: expected "
                                  '{"file_name": ..., "text": ...}') from None
            if not file.is_file():
                raise DiffrlError(f"{metadata}, line {number}: {file} does not exist")
            self.files.append(file)
            self.captions.append(caption)
        if not self.files:
            raise DiffrlError(f"{metadata} lists no images")

    def draw(self, rng: np.random.Generator, n: int, size: int) -> tuple[list[str], torch.Tensor]:
        picks = rng.integers(len(self.files), size=n)
        images = np.stack([square_image(self.files[i], size) for i in picks])
        return [self.captions[i] for i in picks], to_tensor(images)


class OwnSamples:
    """The policy's own samples of the current epoch with a positive advantage (better than their group's baseline),
    as final latents with their prompts: the pretraining loss on them is self-imitation, reward-filtered fine-tuning
    on the model's own successes (RAFT, Dong et al. 2023; reward-weighted likelihood with 0/1 weights, Lee et al.
    2023). The trainer refills the pool every epoch from training prompts only, so nothing held out enters it."""

    def __init__(self):
        self.captions: list[str] = []
        self.latents: torch.Tensor | None = None

    def refill(self, captions: list[str], latents: torch.Tensor) -> None:
        """This epoch's pool: `latents` (n, C, h, w), one per caption (n may be 0)."""
        self.captions, self.latents = list(captions), latents.detach()

    def __len__(self) -> int:
        return len(self.captions)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[list[str], torch.Tensor]:
        """n draws with replacement: (captions, latents (n, C, h, w)). The pool must not be empty."""
        picks = rng.integers(len(self.captions), size=n)
        return [self.captions[i] for i in picks], self.latents[torch.from_numpy(picks)]


def square_image(path: Path, size: int) -> np.ndarray:
    """The image at `path` as (size, size, 3) uint8 RGB: center-cropped to a square, then resized (bicubic)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DiffrlError(f"cannot read image {path}: {err}") from None
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


OWN_SAMPLES = "own_samples"


def load_pretraining_data(spec: str, held_out: list[Prompt] | None) -> ShapesRenders | ImageFolder | OwnSamples:
    """The source `train.ptx_data` names; refuses one whose captions include a held-out prompt (the held-out
    evaluation would then measure images the model was trained to reproduce)."""
    if spec == OWN_SAMPLES:
        return OwnSamples()
    if spec.startswith("shapes:"):
        source = ShapesRenders(load_prompts(spec).all(), spec)
    elif Path(spec).expanduser().is_dir():
        source = ImageFolder(Path(spec).expanduser())
    else:
        raise DiffrlError(f"train.ptx_data={spec!r} is neither shapes:<category>_<split>, {OWN_SAMPLES}, nor a "
                          f"folder with {METADATA_FILE}")
    shared = sorted(set(source.captions) & {text for text, _ in held_out or ()})
    if shared:
        raise DiffrlError(f"train.ptx_data={spec} captions {len(shared)} held-out prompt(s), e.g. {shared[0]!r}; "
                          "held-out prompts are never trained on: use a split without them")
    return source
