"""One epoch's sampling of the spatial preset, timed at several `sample.chunk_size`s, in side-by-side processes.

    .venv/bin/python benchmarks/sampling_chunks.py                          # 2 processes x 1 thread, as the pair runs
    .venv/bin/python benchmarks/sampling_chunks.py --chunks all 64 128 --prompts 128 --rounds 2 --processes 1

Each process loads `builtin:shapes-spatial2`, encodes --prompts training prompts, and samples them K = 8 times
(DDIM 10 steps, eta 1, guidance 3, the base's weights: one sampling batch of the spatial preset, 1,024 images at
128 prompts) once per chunk size per round, the chunk sizes in the same order in every process so that they meet
the same load; every process checks that each chunk size's latents and log-probs equal its first one's bit for
bit. The processes run at the same time (the spatial pair runs two, one torch thread each); per chunk size the
median seconds over processes and rounds is reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

TAG = "SAMPLING_CHUNK "


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from diffrl.config import load_config
    from diffrl.models.pipeline import load_pipeline
    from diffrl.prompts import load_prompts
    from diffrl.sampling import encode_prompts, make_policy, sample_trajectories

    torch.set_num_threads(args.threads)
    config = load_config("shapes_spatial")
    pipe = load_pipeline(config.model.pretrained)
    policy = make_policy(pipe, pipe.unet, torch.device("cpu"), config.sample)
    timesteps, prev = policy.schedule(pipe.scheduler, config.sample.num_steps, "cpu")
    source = load_prompts(config.run.prompts)  # drawn as the trainer draws them
    texts = [text for text, _ in source.sample(np.random.default_rng(0), args.prompts)]
    embeds, uncond = encode_prompts(pipe, texts, "cpu"), encode_prompts(pipe, [""], "cpu")
    latent_shape = (pipe.unet.config.in_channels, *[pipe.unet.config.sample_size] * 2)
    first = {}
    pipe.unet.eval()
    for round_ in range(args.rounds):
        for chunk in args.chunks:
            start = time.perf_counter()
            with torch.no_grad():
                traj = sample_trajectories(policy, pipe.vae, embeds, uncond, config.sample.k, timesteps, prev,
                                           latent_shape, torch.Generator().manual_seed(round_),
                                           chunk_size=None if chunk == "all" else int(chunk))
            seconds = time.perf_counter() - start
            reference = first.setdefault(round_, traj)
            same = torch.equal(traj.latents, reference.latents) and torch.equal(traj.log_probs, reference.log_probs)
            print(TAG + json.dumps({"round": round_, "chunk": chunk, "seconds": seconds, "images": len(traj.latents),
                                    "identical": same}), flush=True)


def add_side_by_side_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a benchmark whose workers sample one spatial batch side by side (this one's, merged_sampling's)."""
    parser.add_argument("--prompts", type=int, default=128, help="prompts per batch (x K = 8 images)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def side_by_side(script: str, args: argparse.Namespace, worker_arguments: list[str], tag: str) -> list[dict]:
    """Runs `script --worker` in args.processes processes at once; the JSON rows they print after `tag`."""
    command = [sys.executable, script, "--worker", *worker_arguments, "--prompts", str(args.prompts),
               "--rounds", str(args.rounds), "--threads", str(args.threads)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
               for _ in range(args.processes)]
    rows = []
    for process in workers:
        out, _ = process.communicate()
        if process.returncode:
            sys.exit(f"a worker failed (exit {process.returncode}); run it alone: {' '.join(command)}")
        rows += [json.loads(line[len(tag):]) for line in out.splitlines() if line.startswith(tag)]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", nargs="+", default=["all", "64", "128", "256"],
                        help="images per denoiser call ('all': the whole batch)")
    add_side_by_side_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    rows = side_by_side(__file__, args, ["--chunks", *args.chunks], TAG)
    print(f"{args.processes} process(es) x {args.threads} thread(s), {rows[0]['images']} images per batch, "
          f"{args.rounds} round(s)")
    base = statistics.median(r["seconds"] for r in rows if r["chunk"] == args.chunks[0])
    for chunk in args.chunks:
        times = [r["seconds"] for r in rows if r["chunk"] == chunk]
        identical = all(r["identical"] for r in rows if r["chunk"] == chunk)
        print(f"chunk {chunk:>5}: median {statistics.median(times):6.2f} s ({base / statistics.median(times):.2f}x "
              f"{args.chunks[0]}), range {min(times):.2f}-{max(times):.2f} s; bit-identical to {args.chunks[0]}: "
              f"{identical}")


if __name__ == "__main__":
    main()
