"""Loading Stable Diffusion pipelines (SD 1.x/2.x with a UNet, SD3 with a transformer), attaching LoRA,
saving what diffusers loads back.

Version-sensitive diffusers/peft calls live here and nowhere else.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline

from diffrl.config import BUILTIN_PREFIX
from diffrl.errors import DiffrlError


def resolve_model(spec: str) -> str:
    """`builtin:NAME` -> a shipped ShapesWorld pipeline; local paths are checked; others are hub ids."""
    if spec.startswith(BUILTIN_PREFIX):
        from diffrl.shapes import BUILTIN_MODELS

        name = spec[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_MODELS:
            raise DiffrlError(f"unknown built-in model {spec!r}; available: "
                              + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS))
        path = BUILTIN_MODELS[name]
        if not (path / "model_index.json").is_file():
            raise DiffrlError(f"the built-in ShapesWorld model {spec} is missing at {path}; "
                              "run `diffrl shapes pretrain --out DIR` and pass --model DIR")
        return str(path)
    path = Path(spec).expanduser()
    looks_local = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") != 1
    if looks_local:
        if not path.is_dir():
            raise DiffrlError(f"model directory not found: {spec}")
        if not (path / "model_index.json").is_file():
            raise DiffrlError(f"{spec} is not a diffusers pipeline directory (no model_index.json)")
        return str(path)
    return spec  # a hub id such as stabilityai/stable-diffusion-2-base


def pipeline_class_name(source: str, revision: str | None = None) -> str:
    """model_index.json's `_class_name` ('' when it cannot be read)."""
    try:
        path = Path(source) / "model_index.json"
        if path.is_file():
            return json.loads(path.read_text()).get("_class_name", "")
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(source, revision=revision).get("_class_name", "")
    except (OSError, ValueError):
        return ""


def is_sd3(pipe) -> bool:
    """Whether `pipe` denoises with a rectified-flow transformer (SD3) rather than a UNet."""
    return isinstance(pipe, StableDiffusion3Pipeline)


def is_sd3_source(source: str, revision: str | None = None) -> bool:
    """`is_sd3` before loading: whether the resolved pipeline source's model_index.json names SD3's pipeline."""
    return pipeline_class_name(source, revision) == "StableDiffusion3Pipeline"


def load_pipeline(spec: str, revision: str | None = None):
    """A StableDiffusionPipeline with a DDIM scheduler, or a StableDiffusion3Pipeline with its flow-matching
    scheduler, all weights frozen, in eval mode."""
    source = resolve_model(spec)
    sd3 = is_sd3_source(source, revision)
    try:
        if sd3:
            pipe = StableDiffusion3Pipeline.from_pretrained(source, revision=revision)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(source, revision=revision, safety_checker=None,
                                                           requires_safety_checker=False)
    except (OSError, ValueError) as err:
        raise DiffrlError(f"cannot load pipeline {spec!r}: {str(err).splitlines()[0]}") from None
    if not sd3:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    for module in (denoiser(pipe), *frozen_modules(pipe)):
        module.requires_grad_(False)
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoiser_name(pipe) -> str:
    """The pipeline component that is trained, 'transformer' (SD3) or 'unet': a full fine-tune is exported under
    this name, so `from_pretrained(..., subfolder=name)` and `load_denoiser` find it where diffusers keeps it."""
    return "transformer" if is_sd3(pipe) else "unet"


def denoiser(pipe) -> torch.nn.Module:
    """The network that is trained: the UNet, or SD3's transformer."""
    return getattr(pipe, denoiser_name(pipe))


def load_denoiser(pipe, directory: str | Path) -> None:
    """Replace `pipe`'s denoiser by a full fine-tune saved with `save_pretrained` in `directory`, frozen, in eval mode,
    on the device of the one it replaces.

    The saved class must be the pipeline's own (a UNet cannot stand in for SD3's transformer): checked first, so a
    mismatch is one clear error rather than a pile of missing weights.
    """
    current = denoiser(pipe)
    expected = type(current).__name__
    try:
        saved = json.loads((Path(directory) / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError) as err:
        raise DiffrlError(f"cannot read {Path(directory) / 'config.json'}: {str(err).splitlines()[0]}") from None
    if saved != expected:
        raise DiffrlError(f"{directory} holds a {saved}, but this pipeline's {denoiser_name(pipe)} is a {expected}; "
                          "evaluate it with the model it was fine-tuned from (--model)")
    try:
        network = type(current).from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise DiffrlError(f"cannot load {directory}: {str(err).splitlines()[0]}") from None
    network.requires_grad_(False)
    setattr(pipe, denoiser_name(pipe), network.to(current.device).eval())


def frozen_modules(pipe) -> list[torch.nn.Module]:
    """The VAE and the text encoders (SD3 has up to three; T5 may be left out)."""
    encoders = ("text_encoder", "text_encoder_2", "text_encoder_3") if is_sd3(pipe) else ("text_encoder",)
    return [pipe.vae] + [m for m in (getattr(pipe, name, None) for name in encoders) if m is not None]


def add_lora(unet: torch.nn.Module, rank: int, alpha: float, target_modules: list[str]) -> None:
    """Attach trainable LoRA adapters (peft) to the modules named by `target_modules` (names or dotted-name
    suffixes, as peft matches them). peft's gaussian init zeroes the B matrices: training starts at the base model.
    A target that names no module is an error (peft would skip it silently when another one matches)."""
    from peft import LoraConfig

    names = [name for name, _ in unet.named_modules()]
    unmatched = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise DiffrlError(f"model.lora_target_modules: {', '.join(unmatched)} names no module of the "
                          f"{type(unet).__name__} (targets are module names or suffixes, e.g. to_q, conv1, ff.net.2)")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=target_modules))


@contextmanager
def lora_merged(network: torch.nn.Module, enabled: bool = True):
    """Inside: every LoRA layer of `network` runs as one base layer holding W + (alpha / r) B A (peft's `merge`), so
    sampling pays no adapter calls; on exit the base weights are copied back from a saved copy, bit for bit (peft's
    `unmerge` subtracts the delta again, which leaves rounding in W that a resumed run would not have). Costs a copy
    of the adapted layers' weights while inside. Without LoRA layers (full fine-tuning), or with `enabled` false, it
    does nothing."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in network.modules() if isinstance(m, LoraLayer) and not m.merged
              and not m.disable_adapters] if enabled else []
    saved = [m.get_base_layer().weight.detach().clone() for m in layers]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.merge()  # the active adapters; sets layer.merged, so forward calls the base layer alone
        yield
    finally:
        with torch.no_grad():
            for layer, weight in zip(layers, saved):
                layer.get_base_layer().weight.copy_(weight)
                layer.merged_adapters.clear()


# The CLIP text encoder's attention projections (transformers' CLIPAttention), as diffusers' DreamBooth LoRA script
# targets them; model.train_text_encoder puts adapters there. diffusers' load_lora_weights only restores text-encoder
# adapters under these names (0.36 converts no others), so other encoders (a BERT one, as ShapesWorld's
# --bidirectional-text builds) are refused rather than exported in a form plain diffusers cannot load.
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TEXT_ENCODER_LORA_CLASS = "CLIPTextModel"


def text_encoder_lora_targets(text_encoder: torch.nn.Module) -> list[str]:
    """The module names `add_text_encoder_lora` targets; a one-line error for a text encoder other than CLIP's."""
    kind = type(text_encoder).__name__
    if kind != TEXT_ENCODER_LORA_CLASS:
        raise DiffrlError(f"model.train_text_encoder supports CLIP text encoders ({TEXT_ENCODER_LORA_CLASS}, whose "
                          f"adapters diffusers' load_lora_weights restores); this pipeline's is a {kind}: set "
                          "model.train_text_encoder=false")
    return TEXT_ENCODER_LORA_TARGETS


def check_text_encoder_trainable(pipe, source: str) -> None:
    """model.train_text_encoder's start-up check, before any weights move: an SD 1.x/2.x pipeline with a CLIP
    text encoder (one-line error otherwise)."""
    if is_sd3(pipe):
        raise DiffrlError("model.train_text_encoder is for SD 1.x/2.x pipelines (one CLIP text encoder); "
                          f"{source} is an SD3 pipeline: set model.train_text_encoder=false")
    text_encoder_lora_targets(pipe.text_encoder)


def add_text_encoder_lora(text_encoder: torch.nn.Module, rank: int, alpha: float) -> None:
    """Attach trainable LoRA adapters (peft, through transformers' add_adapter) to an SD 1.x/2.x CLIP text encoder's
    attention projections; zero B matrices, as `add_lora`, so it starts as the base encoder."""
    add_lora(text_encoder, rank, alpha, text_encoder_lora_targets(text_encoder))


def save_lora(unet: torch.nn.Module, directory: str | Path, text_encoder: torch.nn.Module | None = None) -> None:
    """Write `pytorch_lora_weights.safetensors` so `pipe.load_lora_weights(directory)` restores the adapters: the
    UNet's and, when given (model.train_text_encoder), the text encoder's (`text_encoder.` keys).

    `unet` may be SD3's transformer (`transformer.` prefix). The keys stay peft's (`lora_A`/`lora_B`), which
    load_lora_weights reads for every module type: diffusers' older key format names only attention projections,
    and a file mixing the two (model.lora_target_modules with convolutions) loaded without its attention adapters.
    """
    from diffusers import SD3Transformer2DModel
    from peft.utils import get_peft_model_state_dict

    def adapter_config(module):  # stored in the file, so load_lora_weights restores alpha / rank (else it assumes 1)
        return module.peft_config["default"].to_dict() if module is not None else None

    if isinstance(unet, SD3Transformer2DModel):
        if text_encoder is not None:
            raise DiffrlError("text-encoder LoRA is for SD 1.x/2.x pipelines only")
        StableDiffusion3Pipeline.save_lora_weights(
            str(directory), transformer_lora_layers=get_peft_model_state_dict(unet),
            transformer_lora_adapter_metadata=adapter_config(unet), safe_serialization=True)
        return
    StableDiffusionPipeline.save_lora_weights(
        str(directory), unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(text_encoder) if text_encoder is not None else None,
        unet_lora_adapter_metadata=adapter_config(unet), text_encoder_lora_adapter_metadata=adapter_config(text_encoder),
        safe_serialization=True)


def image_size(pipe, resolution: int | None) -> int:
    return resolution or denoiser(pipe).config.sample_size * pipe.vae_scale_factor
