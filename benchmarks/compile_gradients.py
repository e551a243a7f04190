"""Does torch.compile keep the LoRA gradients of a diffusers UNet? Eager against a compiled backend, one batch.

    .venv/bin/python benchmarks/compile_gradients.py --model builtin:shapes                  # inductor (default)
    .venv/bin/python benchmarks/compile_gradients.py --model builtin:shapes --backend aot_eager
    .venv/bin/python benchmarks/compile_gradients.py --model tiny     # the test suite's random tiny UNet

Attaches LoRA (rank 4, the attention projections, random nonzero A and B so that every adapter gets a gradient),
runs one forward and backward of sum(UNet output x fixed random weights) eagerly, then compiles the UNet in place
(`unet.compile(backend=...)`) and runs the same batch again, and prints the largest output difference and every
adapter whose gradient differs by more than 1e-4 of its scale. Exit 1 when any does (docs/performance.md: with
torch 2.13 on CPU, inductor's gradients were right on builtin:shapes and wrong on `tiny`, for the adapters of its
down and mid blocks, where aot_eager's were exact).
"""
from __future__ import annotations

import argparse
import sys

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:shapes", help="a pipeline spec, or 'tiny': the test suite's "
                        "random UNet (blocks 16, 32; 8x8x4 latents), built in a temporary directory")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from diffrl.config import ModelConfig
    from diffrl.models.pipeline import add_lora, load_pipeline

    if args.model == "tiny":
        import tempfile

        from diffrl.models.tiny import build_tiny_pipeline

        args.model = tempfile.mkdtemp(prefix="compile_gradients_")
        build_tiny_pipeline(args.model, ["a", "red", "circle"], sample_size=16, block_channels=(16, 32),
                            cross_attention_dim=16, vae_channels=(16, 32), seed=0)
    unet = load_pipeline(args.model).unet
    add_lora(unet, 4, 4, ModelConfig().lora_target_modules)  # diffrl's default targets: the attention projections
    generator = torch.Generator().manual_seed(0)
    lora = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for param in lora.values():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    size, channels = unet.config.sample_size, unet.config.in_channels
    latents = torch.randn(4, channels, size, size, generator=generator)
    timesteps = torch.tensor([999, 700, 400, 100])
    text = torch.randn(4, 8, unet.config.cross_attention_dim, generator=generator)
    weights = torch.randn(latents.shape, generator=generator)

    def forward_backward():
        unet.zero_grad()
        out = unet(latents, timesteps, encoder_hidden_states=text).sample
        (out * weights).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in lora.items()}

    eager_out, eager_grads = forward_backward()
    unet.compile(backend=args.backend)
    out, grads = forward_backward()
    print(f"{args.model}, backend {args.backend}, torch {torch.__version__}: largest output difference "
          f"{(out - eager_out).abs().max().item():.2e} (output scale {eager_out.abs().max().item():.2f})")
    wrong = []
    for name in lora:
        scale = eager_grads[name].abs().max().item()
        error = (grads[name] - eager_grads[name]).abs().max().item()
        if error > 1e-4 * max(scale, 1e-3):
            wrong.append(name)
            print(f"  {name.replace('.default.weight', '')}: gradient error {error:.3g} at scale {scale:.3g}")
    print(f"{len(wrong)} of {len(lora)} adapter gradients differ from eager")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
