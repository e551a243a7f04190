"""Average the trainable weights and AdamW moments of runs' checkpoints at one epoch, and write the average back
into every run's checkpoint, so that each run resumes (`diffrl train --resume`) from the same averaged point with
its own sampling noise: one synchronization of local SGD, or of WARP's iterated merges (docs/tuning.md, section 43).

The runs must share their LoRA initialization (`model.lora_init_seed`): averaging A and B separately is then close
to averaging their products (`diffrl soup`), which independent initializations are not. Each run's original
checkpoint is kept as RUN/own_epoch_N/ (outside checkpoints/, which the trainer prunes), its weights and moments
before the average.

    python docs/tuning/average_checkpoints.py RUN1 RUN2 [...] --epoch N
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from diffrl.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint

MOMENTS = ("exp_avg", "exp_avg_sq")


def mean_trainable(weights: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The elementwise mean of several runs' trainable tensors (same names and shapes in every run)."""
    names = weights[0].keys()
    if any(w.keys() != names for w in weights):
        raise SystemExit("average_checkpoints: the runs train different parameters; they cannot be averaged")
    return {name: torch.stack([w[name] for w in weights]).mean(0) for name in names}


def mean_optimizer(states: list[dict]) -> dict:
    """The first optimizer state with AdamW's first and second moments replaced by the runs' means; the step
    counts and param groups must agree (the runs took the same number of updates)."""
    first = states[0]
    merged = {"param_groups": first["param_groups"], "state": {}}
    for index, slot in first["state"].items():
        slots = [s["state"][index] for s in states]
        if any(float(s["step"]) != float(slot["step"]) for s in slots):
            raise SystemExit("average_checkpoints: the runs' optimizers took different numbers of steps")
        merged["state"][index] = {**slot, **{m: torch.stack([s[m] for s in slots]).mean(0) for m in MOMENTS}}
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--epoch", type=int, required=True)
    args = parser.parse_args(argv)
    dirs = [checkpoint_path(run, args.epoch) for run in args.runs]
    for run, d in zip(args.runs, dirs):
        if d not in list_checkpoints(run):  # the trainer's own rule for a complete checkpoint
            raise SystemExit(f"average_checkpoints: no complete checkpoint {d}")
    loaded = [load_checkpoint(d) for d in dirs]  # (trainable, optimizer state, loop state) of each run
    weights = mean_trainable([trainable for trainable, _, _ in loaded])
    moments = mean_optimizer([optimizer for _, optimizer, _ in loaded])
    for run, d, (_, _, loop_state) in zip(args.runs, dirs, loaded):
        own = run / f"own_epoch_{args.epoch}"
        if not own.exists():  # a rerun must not overwrite the runs' own weights with an average
            shutil.copytree(d, own)
        # The trainer's own atomic writer, each run keeping its loop state (RNGs, schedule, prompt statistics) and
        # every checkpoint it has.
        save_checkpoint(run, args.epoch, weights, moments, loop_state, keep=len(list_checkpoints(run)))
    print(f"average_checkpoints: {len(weights)} tensors and their AdamW moments averaged over {len(dirs)} runs "
          f"at epoch {args.epoch}")


if __name__ == "__main__":
    main()
