"""Average one run's LoRA weights over its own checkpoints (docs/tuning.md, section 38): stochastic weight averaging
or an exponential moving average of the weights, made after the run from its per-epoch checkpoints.

    python docs/tuning/trajectory_average.py RUN --from-epoch 30 --out runs/avg/RUN_from30
    python docs/tuning/trajectory_average.py RUN --ema 0.9 --out runs/avg/RUN_ema09

The checkpoints' trainable weights (RUN/checkpoints/epoch_N/trainable.safetensors; keep every epoch with
`--set run.save_every=1 --set run.keep_checkpoints=1000`) are averaged parameter by parameter, LoRA A and B each,
and written as a run directory (lora/ and config.yaml) that `diffrl evaluate --lora` reads (the run's own lora/
file gives the key names and the adapter metadata, its config.yaml the base model).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffrl.checkpoint import list_checkpoints
from diffrl.soup import LORA_FILE


def lora_key(trainable_key: str) -> str:
    """A trainable weight's name in the exported LoRA file: peft's adapter name dropped, the UNet's prefix added."""
    key = trainable_key.replace(".default.", ".")
    return key if key.startswith("text_encoder.") else "unet." + key


def snapshots(run: Path) -> dict[int, Path]:
    """The run's complete checkpoints by epoch, oldest first (`diffrl.checkpoint.list_checkpoints`)."""
    found = {int(p.name.removeprefix("epoch_")): p for p in list_checkpoints(run)}
    if not found:
        raise SystemExit(f"error: no complete checkpoints under {run}/checkpoints")
    return found


def snapshot_weights(epochs: list[int], from_epoch: int | None = None, ema: float | None = None) -> list[float]:
    """Each checkpoint's weight in the average (they sum to 1): uniform over the epochs >= from_epoch, or the
    exponential moving average ema_n = d ema_(n-1) + (1 - d) w_n over every epoch, started at the first one."""
    if from_epoch is not None:
        chosen = [e >= from_epoch for e in epochs]
        if not any(chosen):
            raise SystemExit(f"error: no checkpoint at or after epoch {from_epoch}")
        return [c / sum(chosen) for c in chosen]
    if epochs != list(range(epochs[0], epochs[0] + len(epochs))):
        raise SystemExit("error: --ema needs a checkpoint at every epoch")
    n = len(epochs)
    return [ema ** (n - 1)] + [(1 - ema) * ema ** (n - 1 - i) for i in range(1, n)]


def average(weighted: list[tuple[Path, float]]) -> dict[str, torch.Tensor]:
    """The weighted sum of the checkpoints' trainable weights, parameter by parameter."""
    out: dict[str, torch.Tensor] = {}
    for path, w in weighted:
        for key, value in load_file(path / "trainable.safetensors").items():
            out[key] = out.get(key, 0) + value.double() * w
    return {k: v.float() for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, required=True)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--from-epoch", type=int, help="uniform average of the checkpoints after epoch N-1 (N..last)")
    how.add_argument("--ema", type=float, help="exponential average over epochs with this decay per epoch, started "
                     "at the first checkpoint")
    a = p.parse_args()
    snaps = snapshots(a.run)
    weights = snapshot_weights(list(snaps), a.from_epoch, a.ema)
    chosen = {e: (path, w) for (e, path), w in zip(snaps.items(), weights) if w}
    averaged = average(list(chosen.values()))
    template = a.run / "lora" / LORA_FILE
    with safe_open(str(template), "pt") as f:
        metadata, keys = f.metadata(), set(f.keys())
    tensors = {lora_key(k): v for k, v in averaged.items()}
    if set(tensors) != keys:
        raise SystemExit(f"error: checkpoint weights do not match {template}'s keys")
    (a.out / "lora").mkdir(parents=True, exist_ok=True)  # laid out as a run: evaluate reads its config.yaml
    save_file(tensors, str(a.out / "lora" / LORA_FILE), metadata=metadata)
    shutil.copy(a.run / "config.yaml", a.out / "config.yaml")
    print(f"{a.out}: {len(chosen)} checkpoints (epochs {min(chosen)}-{max(chosen)})")


if __name__ == "__main__":
    main()
