"""One UNet call of the spatial preset's shape, timed under ways of computing it that leave the model as it is.

    .venv/bin/python benchmarks/unet_call_variants.py                    # every variant, 512 rows, 1 thread
    .venv/bin/python benchmarks/unet_call_variants.py --variants stock bf16 --rows 256

The call: `builtin:shapes-spatial2`'s UNet with LoRA (rank 4) on the attention projections, as the trainer attaches
it, on R rows of 8x8x4 latents and 16 text tokens (the tokenizer's length): `infer` is a forward without gradients
(at R = 512, a quarter of a sampling step of the spatial preset's 1,024 images with guidance), `train` a forward and
backward of a scalar (at R = 512, about one training call of the preset: 64 samples x 9 steps, of which the
zero-advantage skip leaves about half). Each variant runs in its own subprocess (so one variant's patch cannot
leak into another), warms up once, then times --repeats calls; rounds interleave the variants so that a changing
machine load hits them alike, and medians are reported.

Variants:
  stock         diffusers as shipped (scaled-dot-product attention, AttnProcessor2_0)
  geglu_split   the feed-forward's GEGLU as two half-width matmuls, so that GELU and the product read contiguous
                halves instead of the strided halves `chunk` returns (the largest elementwise item of the profile)
  bf16          torch.autocast("cpu", bfloat16): on a CPU with AMX, matmuls and convolutions in bfloat16
  attn_classic  diffusers' AttnProcessor (baddbmm + softmax) instead of SDPA
  sdpa_math     SDPA forced to its math backend
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

VARIANTS = ("stock", "geglu_split", "bf16", "attn_classic", "sdpa_math")
TAG = "UNET_CALL "


def apply_variant(name: str, unet) -> list:
    """Patch the process for `name`; returns context managers to keep entered."""
    import torch
    import torch.nn.functional as F

    if name == "geglu_split":
        from diffusers.models.activations import GEGLU

        def split_forward(self, hidden_states, *args, **kwargs):
            weight, bias = self.proj.weight, self.proj.bias
            half = weight.shape[0] // 2
            value = F.linear(hidden_states, weight[:half], bias[:half])
            gate = F.linear(hidden_states, weight[half:], bias[half:])
            return value * F.gelu(gate)

        GEGLU.forward = split_forward
    elif name == "attn_classic":
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    elif name == "bf16":
        return [torch.autocast("cpu", dtype=torch.bfloat16)]
    elif name == "sdpa_math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return [sdpa_kernel(SDPBackend.MATH)]
    return []


def worker(args) -> None:
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from diffrl.models.pipeline import resolve_model

    torch.set_num_threads(args.threads)
    unet = UNet2DConditionModel.from_pretrained(resolve_model("builtin:shapes-spatial2"), subfolder="unet")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    for context in apply_variant(args.worker, unet):
        context.__enter__()
    generator = torch.Generator().manual_seed(0)
    rows = args.rows
    latents = torch.randn(rows, 4, 8, 8, generator=generator)
    timesteps = torch.randint(0, 1000, (rows,), generator=generator)
    text = torch.randn(rows, 16, unet.config.cross_attention_dim, generator=generator)

    def call(train: bool) -> None:
        if train:
            unet(latents, timesteps, text).sample.square().mean().backward()
        else:
            with torch.no_grad():
                unet(latents, timesteps, text)

    result = {}
    for mode, train in (("infer", False), ("train", True)):
        call(train)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            call(train)
            times.append(time.perf_counter() - start)
        result[mode] = statistics.median(times)
    print(TAG + json.dumps(result))


def run_worker(name: str, args) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--worker", name, "--rows", str(args.rows), "--threads",
                          str(args.threads), "--repeats", str(args.repeats)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith(TAG))[len(TAG):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per variant, interleaved A, B, ..., A, B")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    names = ["stock"] + [name for name in args.variants if name != "stock"]  # the reference of every ratio
    rounds = [{name: run_worker(name, args) for name in names} for _ in range(args.rounds)]
    median = {name: {mode: statistics.median(r[name][mode] for r in rounds) for mode in ("infer", "train")}
              for name in names}
    print(f"{'variant':<14}{'infer s':>10}{'train s':>10}{'infer vs stock':>16}{'train vs stock':>16}"
          f"   (median over {args.rounds} process(es) of {args.repeats} calls each)")
    for name, result in median.items():
        speedups = [median["stock"][mode] / result[mode] for mode in ("infer", "train")]
        print(f"{name:<14}{result['infer']:>10.3f}{result['train']:>10.3f}{speedups[0]:>15.2f}x{speedups[1]:>15.2f}x")


if __name__ == "__main__":
    main()
