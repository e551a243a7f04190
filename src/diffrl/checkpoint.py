"""Atomic checkpoints: written to a temporary directory, then renamed into place.

A checkpoint holds the trainable weights (safetensors), the optimizer and its learning-rate schedule,
the RNG states of every generator the loop uses, the per-prompt statistics and counters, so a resumed
run continues exactly where the checkpoint was taken.

Crash safety (docs/reliability.md): files are written into `epoch_XXXXX.tmp/`, fsynced, and the
directory is renamed to `epoch_XXXXX` only when complete (`state.json` is written last). A kill or a
full disk at any point leaves the previous checkpoint untouched; leftovers (`*.tmp`) are never
listed and are removed by the next save. Old checkpoints are pruned only after a new one exists.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffrl.errors import DiffrlError, RunHalted

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"epoch_\d+")
TORCH_FILES = ("torch_rng", "lr_scheduler")  # keys of the loop state saved with torch.save (rng.pt, lr_scheduler.pt)


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:05d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a complete one is named epoch_N and has its state.json, written last)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _NAME.fullmatch(p.name) and (p / "state.json").is_file())


def _fsync(path: Path) -> None:
    """Flush a file (or a directory entry) to disk so a rename never exposes unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, epoch: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    state: dict, keep: int) -> Path:
    """Write checkpoint `epoch` atomically, then delete all but the newest `keep` complete ones.

    A failed write (disk full, I/O error) removes its temporary directory and raises RunHalted;
    the checkpoints already on disk are untouched.
    """
    final = checkpoint_path(run_dir, epoch)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("epoch_*.*"):  # leftovers of a killed save (.tmp) or of a replaced checkpoint (.old)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(final.name + ".tmp")
    try:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(state["torch_rng"], tmp / "rng.pt")
        if "lr_scheduler" in state:
            torch.save(state["lr_scheduler"], tmp / "lr_scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k not in TORCH_FILES}))
        for path in (*tmp.iterdir(), tmp):
            _fsync(path)
        if final.exists():  # the same epoch saved again: move the old one aside, never delete it first
            final.rename(final.with_name(final.name + ".old"))
        tmp.rename(final)
        _fsync(root)
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save reports a full disk as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
        newest = list_checkpoints(run_dir)
        kept = f"newest valid checkpoint: {newest[-1]}" if newest else "no checkpoint was written yet"
        raise RunHalted(f"could not write checkpoint {final}: {reason}; {kept}") from None
    shutil.rmtree(final.with_name(final.name + ".old"), ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep]:  # keep >= 1: the newest is never deleted
        shutil.rmtree(old, ignore_errors=True)
    return final


def replace_dir(final: Path, write) -> None:
    """`write(tmp_dir)`, then swap the result in for `final` (the LoRA / UNet export users load).

    A kill leaves either the old export or the new one in place (or, for an instant, `final.old`).
    """
    final = Path(final)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
    except (OSError, RuntimeError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
        raise RunHalted(f"could not write {final}: {reason}; the checkpoints are intact") from None
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(trainable weights, optimizer state, loop state incl. 'torch_rng' and, when saved, 'lr_scheduler')."""
    state = json.loads((path / "state.json").read_text())
    state["torch_rng"] = torch.load(path / "rng.pt", weights_only=False)
    if (path / "lr_scheduler.pt").is_file():  # absent from checkpoints written before train.lr_schedule
        state["lr_scheduler"] = torch.load(path / "lr_scheduler.pt", weights_only=False)
    optimizer_state = torch.load(path / "optimizer.pt", weights_only=False)
    return load_file(path / "trainable.safetensors"), optimizer_state, state


def load_latest(run_dir: Path) -> tuple[Path, tuple[dict[str, torch.Tensor], dict, dict]] | None:
    """The newest checkpoint that loads, with its contents; None when the run has none yet.

    A checkpoint that fails to load (a damaged disk, files edited by hand) is reported on stderr and
    the next older one is tried; if every checkpoint is damaged, a DiffrlError names the newest.
    """
    checkpoints = list_checkpoints(run_dir)
    for path in reversed(checkpoints):
        try:
            return path, load_checkpoint(path)
        except Exception as err:  # noqa: BLE001 -- any unreadable file means "try the previous checkpoint"
            print(f"diffrl: warning: checkpoint {path} is unreadable ({type(err).__name__}); trying an older one",
                  file=sys.stderr)
    if checkpoints:
        raise DiffrlError(f"no checkpoint of {run_dir} can be read (newest: {checkpoints[-1]}); cannot resume")
    return None
