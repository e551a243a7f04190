"""One epoch's sampling of the spatial preset with LoRA adapters called in every step, with the adapters merged into
the base weights (sample.merge_lora), and without adapters (the floor), in side-by-side processes.

    .venv/bin/python benchmarks/merged_sampling.py                   # wide adapters, 2 processes x 1 thread
    .venv/bin/python benchmarks/merged_sampling.py --targets to_k,to_q,to_v,to_out.0 --prompts 32 --processes 1

Each process loads `builtin:shapes-spatial2`, attaches rank-4 adapters on --targets (default: section 63's wide
list) with random B matrices (std 0.01: a trained adapter's scale), and samples --prompts training prompts K = 8
times (DDIM 10 steps, eta 1, guidance 3, 64 images per call as the trainer samples on CPU) once per mode per round,
the modes in the same order in every process so that they meet the same load. It reports per mode the median
seconds over processes and rounds, and how far the merged sampler's log-probs and final latents are from the
adapters' (the same noise: floating-point rounding only).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

from sampling_chunks import add_side_by_side_arguments, side_by_side  # the side-by-side process harness

TAG = "MERGED_SAMPLING "
MODES = ("adapters", "merged", "no adapters")
WIDE = "to_k,to_q,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2,conv1,conv2"


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from diffrl.config import load_config
    from diffrl.models.pipeline import add_lora, load_pipeline, lora_merged
    from diffrl.prompts import load_prompts
    from diffrl.sampling import encode_prompts, make_policy, sample_trajectories

    torch.set_num_threads(args.threads)
    config = load_config("shapes_spatial")
    pipe = load_pipeline(config.model.pretrained)
    torch.manual_seed(0)
    add_lora(pipe.unet, config.model.lora_rank, config.model.lora_alpha, args.targets.split(","))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    policy = make_policy(pipe, pipe.unet, torch.device("cpu"), config.sample)
    timesteps, prev = policy.schedule(pipe.scheduler, config.sample.num_steps, "cpu")
    texts = [text for text, _ in load_prompts(config.run.prompts).sample(np.random.default_rng(0), args.prompts)]
    embeds, uncond = encode_prompts(pipe, texts, "cpu"), encode_prompts(pipe, [""], "cpu")
    latent_shape = (pipe.unet.config.in_channels, *[pipe.unet.config.sample_size] * 2)
    pipe.unet.eval()
    for round_ in range(args.rounds):
        results = {}
        for mode in MODES:
            if mode == "no adapters":
                pipe.unet.disable_adapters()
            start = time.perf_counter()
            with lora_merged(pipe.unet) if mode == "merged" else nullcontext():
                results[mode] = sample_trajectories(policy, pipe.vae, embeds, uncond, config.sample.k, timesteps, prev,
                                                    latent_shape, torch.Generator().manual_seed(round_), chunk_size=64)
            seconds = time.perf_counter() - start
            pipe.unet.enable_adapters()
            row = {"round": round_, "mode": mode, "seconds": seconds, "images": len(results[mode].latents)}
            if mode == "merged":
                a, m = results["adapters"], results["merged"]
                row["log_prob_dev"] = float((a.log_probs - m.log_probs).abs().max())
                row["latent_dev"] = float((a.latents[:, -1] - m.latents[:, -1]).abs().max())
            print(TAG + json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=WIDE, help="model.lora_target_modules, comma-separated")
    add_side_by_side_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    rows = side_by_side(__file__, args, ["--targets", args.targets], TAG)
    print(f"{args.processes} process(es) x {args.threads} thread(s), {rows[0]['images']} images per batch, "
          f"{args.rounds} round(s), adapters on {args.targets}")
    median = {mode: statistics.median(r["seconds"] for r in rows if r["mode"] == mode) for mode in MODES}
    for mode in MODES:
        print(f"{mode:>11}: median {median[mode]:6.2f} s ({median['adapters'] / median[mode]:.2f}x adapters)")
    merged = [r for r in rows if r["mode"] == "merged"]
    print(f"merged vs adapters, same noise: log-probs differ by at most {max(r['log_prob_dev'] for r in merged):.2e}, "
          f"final latents by at most {max(r['latent_dev'] for r in merged):.2e}")


if __name__ == "__main__":
    main()
