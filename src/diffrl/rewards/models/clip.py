"""CLIP-family rewards: CLIPScore (cosine), PickScore (logit_scale * cosine), LAION aesthetic.

All three share one forward: embed images and prompts with a transformers `CLIPModel`,
L2-normalize, and compare each image with its own prompt (a diagonal, not an N x N matrix).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diffrl.errors import DiffrlError
from diffrl.rewards.models._common import (
    batches, check_inputs, embeddings, env_or, l2_normalize, load_pretrained, prepare, resolve_batch_size,
    resolve_device, to_pil,
)

CLIP_ENV = "DIFFRL_CLIP_MODEL"
# T2I-CompBench's CLIPScore (non-spatial category) uses OpenAI CLIP ViT-B/32.
CLIP_DEFAULT = "openai/clip-vit-base-patch32"
PICKSCORE_ENV, PICKSCORE_PROCESSOR_ENV = "DIFFRL_PICKSCORE_MODEL", "DIFFRL_PICKSCORE_PROCESSOR"
PICKSCORE_DEFAULT, PICKSCORE_PROCESSOR_DEFAULT = "yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
AESTHETIC_CLIP_ENV, AESTHETIC_HEAD_ENV = "DIFFRL_AESTHETIC_MODEL", "DIFFRL_AESTHETIC_HEAD"
AESTHETIC_CLIP_DEFAULT = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                      "sac%2Blogos%2Bava1-l14-linearMSE.pth")
OPEN_CLIP_PREFIX = "open_clip:"


def _load_clip(model, processor, model_id: str, processor_id: str, env: str, device: str):
    from transformers import CLIPModel, CLIPProcessor

    if model is None:
        model = load_pretrained(CLIPModel, model_id, "CLIP model", env)
    if processor is None:
        processor = load_pretrained(CLIPProcessor, processor_id, "CLIP processor", env)
    return prepare(model, device), processor


def clip_cosine(model, processor, images: np.ndarray, prompts: list[str], device: str, batch_size: int):
    """cos(image_i, prompt_i) for each i, as a float tensor (N,) on the CPU."""
    out = []
    with torch.no_grad():
        for part in batches(len(images), batch_size):
            inputs = processor(
                text=list(prompts[part]), images=to_pil(images[part]), return_tensors="pt", padding=True,
                truncation=True,
            ).to(device)
            image_emb = l2_normalize(embeddings(model.get_image_features(pixel_values=inputs["pixel_values"])))
            text_emb = l2_normalize(embeddings(model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])))
            out.append((image_emb * text_emb).sum(-1).float().cpu())  # (B,)
    return torch.cat(out) if out else torch.zeros(0)


class ClipScore:
    """CLIPScore without the 2.5 * max(cos, 0) rescaling: cosine similarity in [-1, 1].

    `model_id` may also be ``open_clip:ARCH/PRETRAINED`` (e.g. ``open_clip:ViT-H-14/laion2b_s32b_b79k``,
    B2-DiffuRL's reward) when the optional package open-clip-torch is installed.
    """

    def __init__(self, model=None, processor=None, model_id: str | None = None, device: str | None = None,
                 batch_size: int | None = None):
        self.model_id = model_id or env_or(CLIP_ENV, CLIP_DEFAULT)
        self.device = resolve_device(device)
        self.batch_size = resolve_batch_size(batch_size)
        self._open_clip = None
        if model is None and self.model_id.startswith(OPEN_CLIP_PREFIX):
            self._open_clip = _OpenClip(self.model_id[len(OPEN_CLIP_PREFIX):], self.device)
        else:
            self.model, self.processor = _load_clip(model, processor, self.model_id, self.model_id, CLIP_ENV,
                                                    self.device)

    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        images = check_inputs(images, prompts)
        if self._open_clip is not None:
            return self._open_clip.cosine(images, list(prompts), self.batch_size)
        cos = clip_cosine(self.model, self.processor, images, list(prompts), self.device, self.batch_size)
        return cos.double().numpy()


class PickScore:
    """PickScore (Kirstain et al. 2023): logit_scale.exp() * cos(image, prompt); typically ~18-24."""

    def __init__(self, model=None, processor=None, model_id: str | None = None, processor_id: str | None = None,
                 device: str | None = None, batch_size: int | None = None):
        self.model_id = model_id or env_or(PICKSCORE_ENV, PICKSCORE_DEFAULT)
        processor_id = processor_id or env_or(PICKSCORE_PROCESSOR_ENV, PICKSCORE_PROCESSOR_DEFAULT)
        self.device = resolve_device(device)
        self.batch_size = resolve_batch_size(batch_size)
        self.model, self.processor = _load_clip(model, processor, self.model_id, processor_id, PICKSCORE_ENV,
                                                self.device)

    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        images = check_inputs(images, prompts)
        cos = clip_cosine(self.model, self.processor, images, list(prompts), self.device, self.batch_size)
        return (self.model.logit_scale.exp().float().cpu() * cos).double().numpy()


class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head, layer for layer, so its state dict loads as is.

    From christophschuhmann/improved-aesthetic-predictor `MLP` (the linear variant: no ReLUs,
    which is what `sac+logos+ava1-l14-linearMSE.pth` was trained with); the Lightning wrapper dropped.
    """

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, 1)
        return self.layers(embedding)


def load_aesthetic_head(path: str, input_size: int = 768):
    """The MLP with weights from a ``.safetensors`` file or the original ``.pth`` state dict."""
    import os

    if not os.path.isfile(path):
        raise DiffrlError(f"aesthetic head weights not found at {path!r} (set ${AESTHETIC_HEAD_ENV})")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    head = AestheticMLP(input_size)
    try:
        head.load_state_dict(state)
    except RuntimeError as err:
        raise DiffrlError(f"{path!r} is not an aesthetic MLP head for {input_size}-d embeddings: "
                          f"{str(err).splitlines()[0]}") from None
    return head


class AestheticScore:
    """LAION improved aesthetic predictor: MLP on L2-normalized CLIP ViT-L/14 image embeddings (~1-10)."""

    def __init__(self, model=None, processor=None, head=None, model_id: str | None = None,
                 head_path: str | None = None, device: str | None = None, batch_size: int | None = None):
        self.model_id = model_id or env_or(AESTHETIC_CLIP_ENV, AESTHETIC_CLIP_DEFAULT)
        self.device = resolve_device(device)
        self.batch_size = resolve_batch_size(batch_size)
        if head is None:
            head_path = head_path or env_or(AESTHETIC_HEAD_ENV, None)
            if not head_path:
                raise DiffrlError(f"aesthetic reward needs the MLP head weights: set ${AESTHETIC_HEAD_ENV} to a local "
                                  f"copy of {AESTHETIC_HEAD_URL} (or a .safetensors of the same state dict)")
        self.model, self.processor = _load_clip(model, processor, self.model_id, self.model_id, AESTHETIC_CLIP_ENV,
                                                self.device)
        width = self.model.config.projection_dim
        self.head = prepare(head if head is not None else load_aesthetic_head(head_path, width), self.device)

    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        images = check_inputs(images, prompts)
        out = []
        with torch.no_grad():
            for part in batches(len(images), self.batch_size):
                pixels = self.processor(images=to_pil(images[part]), return_tensors="pt")["pixel_values"]
                emb = l2_normalize(embeddings(self.model.get_image_features(pixel_values=pixels.to(self.device))))
                out.append(self.head(emb.to(next(self.head.parameters()).dtype)).squeeze(-1).float().cpu())
        return torch.cat(out).double().numpy() if out else np.zeros(0)


class _OpenClip:
    """open_clip backend for ClipScore (optional extra: open-clip-torch)."""

    def __init__(self, spec: str, device: str):
        try:
            import open_clip
        except ImportError:
            raise DiffrlError(f"clip-score model {OPEN_CLIP_PREFIX}{spec} needs the optional package "
                              "open-clip-torch (pip install open-clip-torch)") from None
        arch, _, pretrained = spec.partition("/")
        try:
            model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None)
        except Exception as err:  # open_clip raises RuntimeError/HF errors for unknown or unreachable weights
            raise DiffrlError(f"cannot load open_clip {spec!r}: {str(err).splitlines()[0]}") from None
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.model, self.device = prepare(model, device), device

    def cosine(self, images: np.ndarray, prompts: list[str], batch_size: int) -> np.ndarray:
        out = []
        with torch.no_grad():
            for part in batches(len(images), batch_size):
                pixels = torch.stack([self.preprocess(im) for im in to_pil(images[part])]).to(self.device)
                image_emb = l2_normalize(self.model.encode_image(pixels))
                text_emb = l2_normalize(self.model.encode_text(self.tokenizer(prompts[part]).to(self.device)))
                out.append((image_emb * text_emb).sum(-1).float().cpu())
        return torch.cat(out).double().numpy() if out else np.zeros(0)
