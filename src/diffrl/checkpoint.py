"""Atomic checkpoints: written to a temporary directory, then renamed into place.

A checkpoint holds the trainable weights (safetensors), the optimizer, the RNG states of
every generator the loop uses, the per-prompt statistics and counters, so a resumed run
continues exactly where the checkpoint was taken.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffrl.errors import DiffrlError

CHECKPOINT_DIR = "checkpoints"


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:05d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a complete one has its state.json, written last)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("epoch_*") if (p / "state.json").is_file() and not p.name.endswith(".tmp"))


def save_checkpoint(run_dir: Path, epoch: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    state: dict, keep: int) -> Path:
    """Write checkpoint `epoch` atomically, then delete all but the newest `keep` complete ones."""
    final = checkpoint_path(run_dir, epoch)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(state.pop("torch_rng"), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiffrlError(f"could not write checkpoint {final}: {err.strerror or err}; the previous checkpoint is intact") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(trainable weights, optimizer state, loop state incl. 'torch_rng')."""
    state = json.loads((path / "state.json").read_text())
    state["torch_rng"] = torch.load(path / "rng.pt", weights_only=False)
    optimizer_state = torch.load(path / "optimizer.pt", weights_only=False)
    return load_file(path / "trainable.safetensors"), optimizer_state, state
