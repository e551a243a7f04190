"""Loading Stable Diffusion pipelines, attaching LoRA, saving what diffusers loads back.

Version-sensitive diffusers/peft calls live here and nowhere else.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers

from diffrl.errors import DiffrlError

BUILTIN_PREFIX = "builtin:"


def resolve_model(spec: str) -> str:
    """`builtin:shapes` -> the shipped ShapesWorld pipeline; local paths are checked; others are hub ids."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name != "shapes":
            raise DiffrlError(f"unknown built-in model {spec!r}; available: builtin:shapes")
        from diffrl.shapes import BUILTIN_MODEL_DIR

        if not (Path(BUILTIN_MODEL_DIR) / "model_index.json").is_file():
            raise DiffrlError(f"the built-in ShapesWorld model is missing at {BUILTIN_MODEL_DIR}; "
                              "run `diffrl shapes pretrain --out DIR` and pass --model DIR")
        return str(BUILTIN_MODEL_DIR)
    path = Path(spec).expanduser()
    looks_local = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") != 1
    if looks_local:
        if not path.is_dir():
            raise DiffrlError(f"model directory not found: {spec}")
        if not (path / "model_index.json").is_file():
            raise DiffrlError(f"{spec} is not a diffusers pipeline directory (no model_index.json)")
        return str(path)
    return spec  # a hub id such as stabilityai/stable-diffusion-2-base


def load_pipeline(spec: str, revision: str | None = None) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline with a DDIM scheduler, all weights frozen, in eval mode."""
    source = resolve_model(spec)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source, revision=revision, safety_checker=None,
                                                       requires_safety_checker=False)
    except (OSError, ValueError) as err:
        raise DiffrlError(f"cannot load pipeline {spec!r}: {str(err).splitlines()[0]}") from None
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def add_lora(unet: torch.nn.Module, rank: int, alpha: float, target_modules: list[str]) -> None:
    """Attach trainable LoRA adapters (peft) to the UNet's attention projections."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=target_modules))


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights in diffusers' key format."""
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_lora(unet: torch.nn.Module, directory: str | Path) -> None:
    """Write `pytorch_lora_weights.safetensors` so `pipe.load_lora_weights(directory)` restores the adapters."""
    StableDiffusionPipeline.save_lora_weights(str(directory), unet_lora_layers=lora_state_dict(unet),
                                              safe_serialization=True)


def image_size(pipe: StableDiffusionPipeline, resolution: int | None) -> int:
    return resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
