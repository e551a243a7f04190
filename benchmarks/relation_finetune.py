"""Can a ShapesWorld model learn to read the relation word at all? Fine-tune it on a few spatial prompts.

Takes `--pairs` object pairs of the spatial train split with "above" or "below", adds each with the relation
inverted (so the relation word is the only thing that tells a prompt from its partner), and continues the
pretraining loss (the model's own epsilon or v target, UNet + text encoder) on fresh renders of them. Every 100
steps it prints the x0 loss at t 900-999 with the true prompt and how much it rises when the relation is
inverted (as `relation_use.py`). Timesteps are uniform, except that a `--high-noise-fraction` of each batch is
drawn from t >= 900, as `diffrl shapes pretrain --high-noise-fraction` does. `--held-out-pairs N` also reports
the rise on N object pairs never trained on (in either order or relation): a rise there is a rule, a rise on
the trained pairs alone can be memorized layouts.

    python benchmarks/relation_finetune.py --model runs/pretrain/zsnr --high-noise-fraction 0.3
    python benchmarks/relation_finetune.py --model runs/pretrain/zsnr --high-noise-fraction 0.3 --pairs 64 \
        --held-out-pairs 32 --train-steps 1000
"""
from __future__ import annotations

import numpy as np
import torch

from diffrl.models.pipeline import load_pipeline, resolve_model
from diffrl.pretraining_data import to_tensor
from diffrl.sampling import encode_images
from diffrl.shapes.pretrain import denoiser_mse, draw_timesteps, encode_prompts
from diffrl.shapes.world import prompt_set, render
from probe import probe_parser
from relation_use import implied_estimates, inverted


def main() -> None:
    parser = probe_parser(__doc__, "shapes:spatial_train", reward=None)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--high-noise-fraction", type=float, default=0.0)
    parser.add_argument("--held-out-pairs", type=int, default=0)
    parser.add_argument("--report-every", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    pipe = load_pipeline(resolve_model(args.model))
    unet, text_encoder, scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
    pool = [s for s in prompt_set("spatial", "train") if s.relation in ("above", "below")]
    order = rng.permutation(len(pool))
    chosen = [pool[i] for i in order[:args.pairs]]
    trained_pairs = {frozenset(s.objects) for s in chosen}
    unseen = [pool[i] for i in order[args.pairs:] if frozenset(pool[i].objects) not in trained_pairs]
    held_out = unseen[:args.held_out_pairs]
    if len(held_out) < args.held_out_pairs:
        parser.error(f"only {len(held_out)} pairs are left for --held-out-pairs after --pairs {args.pairs}")
    specs = chosen + [inverted(s) for s in chosen]

    def batch(n: int, drawn_from=specs):
        drawn = [drawn_from[i] for i in rng.integers(len(drawn_from), size=n)]
        return drawn, encode_images(pipe.vae, to_tensor(np.stack([render(s, rng) for s in drawn])))

    probes = {"trained": batch(256)}  # the same images at every report
    if held_out:
        probes["held-out"] = batch(256, held_out + [inverted(s) for s in held_out])

    @torch.no_grad()
    def report(step: int) -> None:
        parts = []
        for name, (probe_specs, probe_z0) in probes.items():
            g = torch.Generator().manual_seed(args.seed + 2)  # the same noise and timesteps at every report
            t = torch.randint(900, 1000, (len(probe_specs),), generator=g)
            zt = scheduler.add_noise(probe_z0, torch.randn(probe_z0.shape, generator=g), t)
            loss = {which: ((implied_estimates(pipe, zt, t, encode_prompts(pipe.tokenizer, text_encoder, texts))[0]
                             - probe_z0) ** 2).mean().item()
                    for which, texts in (("true", [s.text for s in probe_specs]),
                                         ("inverted", [inverted(s).text for s in probe_specs]))}
            parts.append(f"{name} pairs: x0 loss at t 900-999 {loss['true']:.4f}, relation inverted "
                         f"{loss['inverted'] - loss['true']:+.4f}")
        print(f"step {step}: " + "; ".join(parts), flush=True)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    for p in params:
        p.requires_grad_(True)
    unet.train(), text_encoder.train()
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    report(0)
    for step in range(1, args.train_steps + 1):
        drawn, z0 = batch(32)
        t = draw_timesteps(len(drawn), len(scheduler.alphas_cumprod), args.high_noise_fraction)
        loss = denoiser_mse(pipe, z0, [s.text for s in drawn], t).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % args.report_every == 0:
            unet.eval(), text_encoder.eval()
            report(step)
            unet.train(), text_encoder.train()


if __name__ == "__main__":
    main()
