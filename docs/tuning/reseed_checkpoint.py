"""Give a run's checkpoint the random streams a new run at SEED starts with (prompt sampling, sampling noise, the
training generator), its weights, AdamW moments and counters kept: a further member of a synchronized pair, resumed
from the pair's average with noise of its own (docs/tuning.md, section 54). `diffrl train --resume` restores the
streams from the checkpoint, so a changed `run.seed` alone would replay the copied run's noise.

    python docs/tuning/reseed_checkpoint.py RUN --epoch 30 --seed 14
"""
from __future__ import annotations

import argparse
from pathlib import Path

from diffrl.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from diffrl.run_state import seeded_generators


def reseed(run: Path, epoch: int, seed: int) -> None:
    """Rewrite `run`'s checkpoint at `epoch` with the streams of a one-process run at `seed`, through the trainer's
    own reader and atomic writer."""
    path = checkpoint_path(run, epoch)
    if path not in list_checkpoints(run):  # the trainer's own rule for a complete checkpoint
        raise SystemExit(f"reseed_checkpoint: no complete checkpoint {path}")
    trainable, optimizer_state, state = load_checkpoint(path)
    if len(state["prompt_rng"]) != 1:
        raise SystemExit(f"reseed_checkpoint: {path} was written by {len(state['prompt_rng'])} processes; "
                         "only one-process checkpoints are handled")
    fresh = seeded_generators(seed, rank=0)
    state["prompt_rng"] = [fresh["prompt_rng"].bit_generator.state]
    state["torch_rng"] = {"noise": [fresh["noise_gen"].get_state()], "train": fresh["train_gen"].get_state()}
    save_checkpoint(run, epoch, trainable, optimizer_state, state, keep=len(list_checkpoints(run)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory (its checkpoints/epoch_N is rewritten)")
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True, help="the seed whose fresh streams it gets")
    args = parser.parse_args()
    reseed(args.run, args.epoch, args.seed)


if __name__ == "__main__":
    main()
