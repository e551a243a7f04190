"""Which denoising steps carry reward signal? Per-step agreement of independent policy-gradient estimates.

Samples `--batches` independent batches (P prompts x K images) from the base model, computes the
leave-one-out REINFORCE gradient of each denoising step separately (LoRA parameters, as training
does), and prints for every step the mean cosine similarity between the batches' gradients (about 0
for pure noise; it grows with signal-to-noise) and the mean gradient norm, then the same for sums
over step ranges. This is the measurement behind `train.min_noise_std` (docs/shapesworld.md).

    python benchmarks/gradient_snr.py --steps 10 --batches 4
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from diffrl.core.advantages import leave_one_out
from diffrl.models.pipeline import add_lora
from diffrl.prompts import load_prompts
from diffrl.rewards import get_reward
from diffrl.sampling import ddim_timesteps, encode_prompts, sample_trajectories
from probe import base_policy, probe_parser


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """vectors: (B, D) -> mean cosine similarity over the B(B-1)/2 pairs."""
    return float(np.mean([float(torch.nn.functional.cosine_similarity(a, b, dim=0))
                          for a, b in itertools.combinations(vectors, 2)]))


def mirrored_noise(generator: torch.Generator, k: int):
    """A noise source whose draws for P*K rows pair sample j of each group with sample j + K/2, negated."""
    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        half = torch.randn((shape[0] // k, k // 2, *shape[1:]), generator=generator)
        return torch.cat([half, -half], dim=1).reshape(shape)
    return draw


def leave_pair_out(rewards: torch.Tensor) -> torch.Tensor:
    """(P, K) -> (P, K): r_i minus the mean of the group's K - 2 others that are neither i nor its mirror j +- K/2."""
    k = rewards.shape[-1]
    mirror = rewards.roll(k // 2, dims=-1)
    return rewards - (rewards.sum(-1, keepdim=True) - rewards - mirror) / (k - 2)


def mirror_agreement(rewards: torch.Tensor) -> str:
    """How alike mirrored samples' rewards are, within prompts: the share of mirror pairs (j, j + K/2) with equal
    rewards against the share of the group's other pairs, and the correlation of their deviations from the group
    mean against the other pairs' (-1/(K-1) for exchangeable independent samples)."""
    k = rewards.shape[-1]
    deviation = rewards - rewards.mean(-1, keepdim=True)
    mirror = [(j, j + k // 2) for j in range(k // 2)]
    others = [(i, j) for i in range(k) for j in range(i + 1, k) if (i, j) not in mirror]

    def stats(pairs):
        a, b = zip(*pairs)
        equal = float((rewards[:, list(a)] == rewards[:, list(b)]).float().mean())
        x, y = deviation[:, list(a)].reshape(-1), deviation[:, list(b)].reshape(-1)
        return equal, float((x * y).mean() / (x.pow(2).mean() * y.pow(2).mean()).sqrt().clamp(min=1e-12))

    (me, mc), (oe, oc) = stats(mirror), stats(others)
    return f"equal rewards: mirror pairs {me:.3f}, other pairs {oe:.3f}; deviation correlation {mc:+.3f} vs {oc:+.3f}"


@torch.no_grad()
def x0_values(policy, vae, traj, embeds, uncond, reward, texts, metas) -> torch.Tensor:
    """(n, T): the reward of the decoded x0-prediction at each step's input x_t."""
    from diffrl.core.ddim import abar_pair, predicted_x0
    from diffrl.sampling import decode_images

    n, steps = traj.latents.shape[0], traj.latents.shape[1] - 1
    out = []
    for j in range(steps):
        x, t = traj.latents[:, j], traj.timesteps[j].repeat(n)
        eps = policy.guided_noise(x, t, embeds[traj.prompt_index], uncond.expand(n, -1, -1))
        abar, _ = abar_pair(t, t, policy.alphas_cumprod, policy.final_alpha_cumprod)
        x0 = predicted_x0(x, eps, abar.reshape(-1, 1, 1, 1))
        out.append(torch.as_tensor(reward(decode_images(vae, x0), texts, metas), dtype=torch.float32))
    return torch.stack(out, dim=1)


def main() -> None:
    parser = probe_parser(__doc__, "shapes:color_binding_unseen-train")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--prompts-per-batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--advantage", choices=["loo", "x0", "x0-loo", "x0-td", "leave-pair-out"], default="loo",
                        help="loo: r_i - mean_{j!=i} r_j for every step; x0: r - V(x_t) with V the reward of the "
                             "decoded x0-prediction at x_t (a state-dependent baseline); x0-loo: leave-one-out "
                             "over the group of r - V(x_t); x0-td: V(x_{t-1}) - V(x_t) with V(x_0) = r; "
                             "leave-pair-out: r_i minus the mean of the group's others except i's mirror "
                             "(unbiased under --antithetic)")
    parser.add_argument("--antithetic", action="store_true",
                        help="mirrored noise: in each group of K, sample j and sample j + K/2 start from x_T and -x_T "
                             "and draw each step's noise with opposite signs")
    args = parser.parse_args()
    if (args.antithetic or args.advantage == "leave-pair-out") and (args.k % 2 or args.k < 4):
        parser.error("--antithetic and leave-pair-out pair each group's samples: --k must be even and >= 4")
    pipe, policy, latent_shape = base_policy(args)
    add_lora(pipe.unet, 4, 4.0, ["to_k", "to_q", "to_v", "to_out.0"])  # the policy's UNet, adapted in place
    sch = pipe.scheduler
    timesteps, prev_timesteps = ddim_timesteps(sch, args.steps, "cpu")
    stds = policy.noise_stds(timesteps, prev_timesteps)
    uncond = encode_prompts(pipe, [""], "cpu")
    prompts, reward = load_prompts(args.prompts).all(), get_reward(args.reward)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    noise_gen, rng = torch.Generator().manual_seed(args.seed + 1), np.random.default_rng(args.seed)

    grads = []  # per batch: (T, n_params)
    for b in range(args.batches):
        batch = [prompts[i] for i in rng.integers(len(prompts), size=args.prompts_per_batch)]
        embeds = encode_prompts(pipe, [p for p, _ in batch], "cpu")
        source = mirrored_noise(noise_gen, args.k) if args.antithetic else None
        with torch.no_grad():
            traj = sample_trajectories(policy, pipe.vae, embeds, uncond, args.k, timesteps, prev_timesteps,
                                       latent_shape, noise_gen, noise_source=source)
        texts = [p for p, _ in batch for _ in range(args.k)]
        metas = [m for _, m in batch for _ in range(args.k)]
        rewards = torch.as_tensor(reward(traj.images, texts, metas), dtype=torch.float32)
        baseline = leave_pair_out if args.advantage == "leave-pair-out" else leave_one_out
        advantages = baseline(rewards.reshape(-1, args.k)).reshape(-1)
        if args.antithetic:
            print("   " + mirror_agreement(rewards.reshape(-1, args.k)), flush=True)
        print(f"batch {b}: mean reward {float(rewards.mean()):.3f}, nonzero advantages "
              f"{int((advantages.abs() > 1e-6).sum())}/{len(advantages)}", flush=True)
        n = len(traj)
        values = None
        if args.advantage not in ("loo", "leave-pair-out"):
            values = x0_values(policy, pipe.vae, traj, embeds, uncond, reward, texts, metas)  # (n, T)
            values = torch.cat([values, rewards[:, None]], dim=1)  # V(x_0) = r
            explained = [float(np.corrcoef(values[:, j], rewards)[0, 1]) if values[:, j].std() > 0 else 0.0
                         for j in range(args.steps)]
            print("   corr(V(x_t), r) per step: " + " ".join(f"{c:.2f}" for c in explained), flush=True)
        per_step = []
        for j in range(args.steps):
            if args.advantage == "x0":
                advantages = rewards - values[:, j]
            elif args.advantage == "x0-loo":
                advantages = leave_one_out((rewards - values[:, j]).reshape(-1, args.k)).reshape(-1)
            elif args.advantage == "x0-td":
                advantages = values[:, j + 1] - values[:, j]
            result = policy.step(traj.latents[:, j], timesteps[j].repeat(n), prev_timesteps[j].repeat(n),
                                 embeds[traj.prompt_index], uncond.expand(n, -1, -1), prev_sample=traj.latents[:, j + 1])
            grad = torch.autograd.grad(-(advantages * result.log_prob).mean(), params)
            per_step.append(torch.cat([g.reshape(-1) for g in grad]))
        grads.append(torch.stack(per_step))
    grads = torch.stack(grads)  # (B, T, n_params)

    print(f"\n{'step':>4} {'t':>4} {'sigma_t':>8} {'cos between batches':>20} {'grad norm':>10}")
    for j in range(args.steps):
        print(f"{j:>4} {int(timesteps[j]):>4} {float(stds[j]):>8.3f} {mean_pairwise_cosine(grads[:, j]):>20.4f} "
              f"{float(grads[:, j].norm(dim=1).mean()):>10.2e}")
    keep = stds >= 0.05
    ranges = [("all steps", torch.ones_like(keep)), ("sigma_t >= 0.05", keep), ("sigma_t < 0.05", ~keep)]
    for first in (1, 2, 3, 4, 6):  # the early, layout-deciding steps only (train.max_trained_step)
        early = keep & (torch.arange(args.steps) < first)
        ranges.append((f"steps 0-{first - 1}", early))
    for name, mask in ranges:
        if mask.any():
            print(f"{name:>16}: cos between batches of the summed gradient "
                  f"{mean_pairwise_cosine(grads[:, mask].sum(1)):.4f}")


if __name__ == "__main__":
    main()
