"""How far bfloat16 sampling moves the log-probabilities that PPO's importance ratio divides by.

    .venv/bin/python benchmarks/bf16_sampling_logprob.py [--prompts 16] [--k 8] [--threads 1]

Samples the spatial preset's trajectories (`builtin:shapes-spatial2`, DDIM 10 steps, eta 1, guidance 3, the held-out
prompts) with the UNet under torch.autocast("cpu", bfloat16), as a bf16 sampler would, and again in fp32 from the
same noise; then re-evaluates the bf16 trajectories' log-probabilities in fp32, as training does. At the first update
the importance ratio is exp(log pi_fp32 - log pi_sampled): its distance from 1, against the clip range the preset
calibrates (`train.clip_range` auto: 0.000937 at 8x8x4 latents), is what bf16 sampling would cost the trust region.
Prints, per denoising step, the mean and largest |log-ratio| for the bf16 sampler, and the same for the fp32 sampler
(the same batch re-evaluated: 0 up to arithmetic), and the sampling time of each.
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffrl.config import Config
    from diffrl.models.pipeline import load_pipeline
    from diffrl.prompts import load_prompts
    from diffrl.sampling import Policy, encode_prompts, sample_trajectories
    from diffrl.update import resolved_clip_range

    pipe = load_pipeline("builtin:shapes-spatial2")
    config = Config()
    unet = pipe.unet
    policy = Policy.from_scheduler(unet, pipe.scheduler, "cpu", eta=1.0, guidance_scale=3.0)
    timesteps, prev_timesteps = policy.schedule(pipe.scheduler, 10, "cpu")
    size = unet.config.sample_size
    latent_shape = (unet.config.in_channels, size, size)
    clip = resolved_clip_range(config, latent_shape)
    prompts = [text for text, _ in load_prompts("shapes:spatial_unseen-val").all()[:args.prompts]]
    with torch.no_grad():
        embeds = encode_prompts(pipe, prompts, "cpu")
        uncond = encode_prompts(pipe, [""], "cpu")
        runs = {}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                traj = sample_trajectories(policy, pipe.vae, embeds, uncond, args.k, timesteps, prev_timesteps,
                                           latent_shape, torch.Generator().manual_seed(0))
            runs[name] = (traj, time.perf_counter() - start)
        print(f"clip range {clip:.3g}; {len(prompts)} prompts x K = {args.k}; latents {latent_shape}")
        print(f"{'step':>4} {'sigma':>7}  {'fp32 sampler: mean |log r|':>28} {'max':>9}  {'bf16 sampler: mean':>20} "
              f"{'max':>9} {'share > clip':>13}")
        stds = policy.noise_stds(timesteps, prev_timesteps)
        n = len(traj)
        cond, unc = embeds[traj.prompt_index], uncond.expand(n, -1, -1)
        for i in range(len(timesteps)):
            if stds[i] < config.train.min_noise_std:
                continue
            cells = []
            for name in ("fp32", "bf16"):
                traj = runs[name][0]
                t, prev_t = timesteps[i].expand(n), prev_timesteps[i].expand(n)
                again = policy.step(traj.latents[:, i], t, prev_t, cond, unc, prev_sample=traj.latents[:, i + 1])
                log_ratio = (again.log_prob - traj.log_probs[:, i]).abs()
                cells.append((float(log_ratio.mean()), float(log_ratio.max()), float((log_ratio > clip).float().mean())))
            (m32, x32, _), (m16, x16, share) = cells
            print(f"{i:>4} {float(stds[i]):>7.3f}  {m32:>28.2e} {x32:>9.2e}  {m16:>20.2e} {x16:>9.2e} {share:>13.2f}")
        print(f"sampling time: fp32 {runs['fp32'][1]:.1f} s, bf16 {runs['bf16'][1]:.1f} s "
              f"({runs['fp32'][1] / runs['bf16'][1]:.2f}x)")


if __name__ == "__main__":
    main()
