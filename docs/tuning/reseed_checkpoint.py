"""Give a run's checkpoint the random streams a new run at SEED starts with (prompt sampling, sampling noise, the
training generator), its weights, AdamW moments and counters kept: a further member of a synchronized pair, resumed
from the pair's average with noise of its own (docs/tuning.md, section 54). `diffrl train --resume` restores the
streams from the checkpoint, so a changed `run.seed` alone would replay the copied run's noise.

    python docs/tuning/reseed_checkpoint.py RUN/checkpoints/epoch_00030 14
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffrl.run_state import seeded_generators


def reseed(checkpoint: Path, seed: int) -> None:
    """Rewrite `checkpoint`'s state.json and rng.pt with the streams of a one-process run at `seed`."""
    state_file, rng_file = checkpoint / "state.json", checkpoint / "rng.pt"
    state = json.loads(state_file.read_text())
    if len(state["prompt_rng"]) != 1:
        raise SystemExit(f"reseed_checkpoint: {checkpoint} was written by {len(state['prompt_rng'])} processes; "
                         "only one-process checkpoints are handled")
    fresh = seeded_generators(seed, rank=0)
    state["prompt_rng"] = [fresh["prompt_rng"].bit_generator.state]
    torch.save({"noise": [fresh["noise_gen"].get_state()], "train": fresh["train_gen"].get_state()}, rng_file)
    state_file.write_text(json.dumps(state))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint directory (RUN/checkpoints/epoch_N)")
    parser.add_argument("seed", type=int, help="the seed whose fresh streams it gets")
    args = parser.parse_args()
    reseed(args.checkpoint, args.seed)


if __name__ == "__main__":
    main()
