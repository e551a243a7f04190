"""Weight averaging of LoRA fine-tunes of one base model: a model soup.

Runs that start from the same base and differ in their seed (or settings) end with adapters whose weight changes
share what the reward taught and differ in what each run's sampling noise pushed; averaging the changes keeps the
first and shrinks the second (model soups, Wortsman et al., ICML 2022; for RL-fine-tuned policies: rewarded soups,
Ramé et al., NeurIPS 2023, and WARP, Ramé et al., 2024). docs/tuning.md, section 33, measures it on ShapesWorld.

The weighted sum of LoRA changes, sum_i w_i s_i B_i A_i (s_i = alpha_i / rank_i), is itself a LoRA of rank
sum_i rank_i: the A matrices stacked by rows, the B matrices by columns, each scaled by w_i s_i. So the soup is
exact (no refactoring) and loads with plain diffusers' `load_lora_weights` at scale 1.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from diffrl.errors import DiffrlError

LORA_FILE = "pytorch_lora_weights.safetensors"
ADAPTER_METADATA = "lora_adapter_metadata"  # where diffusers' save_lora_weights stores each component's LoraConfig


def average_lora(adapters: list[dict[str, torch.Tensor]], scales: list[dict[str, float]],
                 weights: list[float]) -> dict[str, torch.Tensor]:
    """The adapter state dict whose change in every module is sum_i weights[i] * scale_i * B_i @ A_i.

    `adapters`: peft-format state dicts (`<module>.lora_A.weight`, `<module>.lora_B.weight`) with the same keys;
    `scales[i]`: alpha / rank of adapter i by component prefix (the key's first dotted name: unet, text_encoder,
    transformer); a prefix it does not name has scale 1. The result has scale 1 (alpha = its rank).
    """
    keys = set(adapters[0])
    out = {}
    for key in sorted(keys):
        component = key.split(".", 1)[0]
        if ".lora_A." in key:  # (rank, in) or a convolution's (rank, in, kh, kw): stack the ranks
            out[key] = torch.cat([a[key] for a in adapters], dim=0)
        elif ".lora_B." in key:  # (out, rank, ...): stack the ranks, carry each run's weight and scale
            out[key] = torch.cat([a[key] * (w * s.get(component, 1.0)) for a, s, w in zip(adapters, scales, weights)],
                                 dim=1)
        else:
            raise DiffrlError(f"soup: {key} is not a LoRA A or B matrix (only LoRA adapters can be averaged)")
    return out


def adapter_scales(metadata: dict[str, str] | None, source: str) -> dict[str, float]:
    """alpha / rank by component from a LoRA file's metadata; {} (scale 1, diffusers' assumption) without it."""
    if not metadata or ADAPTER_METADATA not in metadata:
        return {}
    config = json.loads(metadata[ADAPTER_METADATA])
    scales = {}
    for name, rank in config.items():
        if not name.endswith(".r"):
            continue
        component = name[:-2]
        if config.get(f"{component}.rank_pattern") or config.get(f"{component}.alpha_pattern"):
            raise DiffrlError(f"soup: {source} sets per-module ranks or alphas (rank_pattern / alpha_pattern), "
                              "which soup does not average")
        scales[component] = float(config.get(f"{component}.lora_alpha", rank)) / rank
    return scales


def lora_file(path: Path) -> Path:
    """A run directory's RUN/lora/ file, or a LoRA directory's own; a one-line error for anything else."""
    for candidate in (path / "lora" / LORA_FILE, path / LORA_FILE):
        if candidate.is_file():
            return candidate
    if (path / "unet").is_dir() or (path / "transformer").is_dir():
        raise DiffrlError(f"soup: {path} is a full fine-tune; soup averages LoRA adapters only")
    raise DiffrlError(f"soup: {path} is neither a run directory with lora/ nor a LoRA directory ({LORA_FILE})")


def soup_files(paths: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """Load the LoRA files of `paths` (run or LoRA directories) and average them with `weights`; one-line errors
    when they do not fit together."""
    from safetensors import safe_open

    if len(weights) != len(paths):
        raise DiffrlError(f"soup: {len(weights)} weights for {len(paths)} runs")
    adapters, scales = [], []
    for path in paths:
        file = lora_file(path)
        with safe_open(str(file), "pt") as f:
            adapters.append({key: f.get_tensor(key) for key in f.keys()})
            scales.append(adapter_scales(f.metadata(), str(path)))
    for path, adapter in zip(paths[1:], adapters[1:]):
        if set(adapter) != set(adapters[0]):
            only = sorted(set(adapter) ^ set(adapters[0]))
            raise DiffrlError(f"soup: {path} and {paths[0]} adapt different modules ({len(only)} keys differ, "
                              f"e.g. {only[0]}): average runs with the same model.lora_target_modules and "
                              "model.train_text_encoder")
        for key, value in adapter.items():
            if ".lora_A." in key and value.shape[1:] != adapters[0][key].shape[1:]:
                raise DiffrlError(f"soup: {path} and {paths[0]} have different shapes at {key}: different models")
    return average_lora(adapters, scales, weights)
