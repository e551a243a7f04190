"""Which denoising steps decide the reward? Reward variance left among siblings that share a prefix.

For every prompt of a set, samples K trajectories, branches each into B siblings after step s (they share
x_T and steps [0, s), as in B2-DiffuRL's branch sampling) and reports the mean within-sibling reward variance
as a fraction of the per-prompt variance: what the steps from s on still decide (docs/tuning.md).

    python benchmarks/step_variance.py --prompts shapes:spatial_unseen-train --reward shapes_success
"""
from __future__ import annotations

import torch

from diffrl.prompts import load_prompts
from diffrl.rewards import get_reward
from diffrl.sampling import ddim_timesteps, encode_prompts, sample_trajectories
from probe import base_policy, probe_parser


def main() -> None:
    parser = probe_parser(__doc__, "shapes:color_binding_unseen-train")
    parser.add_argument("--k", type=int, default=4, help="trajectories per prompt")
    parser.add_argument("--branches", type=int, default=4, help="siblings per trajectory")
    parser.add_argument("--branch-steps", default="0,3,5", help="branch points s (comma separated)")
    args = parser.parse_args()
    pipe, policy, latent_shape = base_policy(args)
    timesteps, prev_timesteps = ddim_timesteps(pipe.scheduler, args.steps, "cpu")
    uncond = encode_prompts(pipe, [""], "cpu")
    prompts, reward = load_prompts(args.prompts).all(), get_reward(args.reward)
    embeds = encode_prompts(pipe, [p for p, _ in prompts], "cpu")
    generator = torch.Generator().manual_seed(args.seed)
    per_sample = args.k * args.branches
    texts = [p for p, _ in prompts for _ in range(per_sample)]
    metas = [m for _, m in prompts for _ in range(per_sample)]
    for branch_step in (int(s) for s in args.branch_steps.split(",")):
        traj = sample_trajectories(policy, pipe.vae, embeds, uncond, args.k, timesteps, prev_timesteps,
                                   latent_shape, generator,
                                   branch_step=branch_step, branches=args.branches)
        r = reward(traj.images, texts, metas).reshape(len(prompts), args.k, args.branches)
        total = r.reshape(len(prompts), -1).var(axis=1).mean()
        within = r.var(axis=2).mean()
        print(f"siblings share x_T and steps [0, {branch_step}): mean reward {r.mean():.3f}, per-prompt variance "
              f"{total:.4f}, left among siblings {within:.4f} ({within / total:.0%})", flush=True)


if __name__ == "__main__":
    main()
