"""Probe (docs/tuning.md section 8): does training LoRA adapters on the text encoder too speed up learning?

Color-binding failures on ShapesWorld are attribute leakage ("a purple square and an orange triangle" drawn
all purple), which in SD is traced to the text encoder; TextCraftor (Li et al., CVPR 2024) fine-tunes the text
encoder against rewards. This wraps `diffrl train` without changing the library: it adds LoRA (same rank and
alpha as the UNet's) to the CLIP text encoder's attention projections, puts those adapters in the optimizer,
and re-encodes the epoch's prompts (and the empty prompt for guidance) with gradient in every training chunk,
so the importance ratio compares the current text encoder + UNet with the ones that sampled. Held-out
evaluations inside the run use the current text encoder. No resume, one process.

    OMP_NUM_THREADS=1 python docs/tuning/probe_text_encoder.py --out runs/study/NAME [diffrl train options]
"""
from __future__ import annotations

import dataclasses
import sys

import torch
from peft import LoraConfig

from diffrl import run_state, sampling, trainer
from diffrl.cli import main

TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
epoch_prompts: list[str] = []  # the prompts sampled this epoch, in the row order of Batch.embeds


def start_run(config, resume):
    if resume:
        raise SystemExit("probe_text_encoder: no resume")
    run = original_start_run(config, resume)
    te = run.pipe.text_encoder
    m = config.model
    te.add_adapter(LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, init_lora_weights="gaussian",
                              target_modules=TE_TARGETS))
    te.train()
    params = {f"text_encoder.{n}": p for n, p in te.named_parameters() if p.requires_grad}
    run.trainable.update(params)  # gradient-norm clipping and checkpoints see them too
    run.optimizer.optimizer.add_param_group({"params": list(params.values())})
    run.lr_scheduler = run_state.make_lr_scheduler(config, run.optimizer.optimizer)  # one factor per group
    print(f"probe_text_encoder: {sum(p.numel() for p in params.values())} text-encoder LoRA parameters trained")
    return run


def encode_without_grad(pipe, prompts, device, *args):
    epoch_prompts.extend(prompts)
    with torch.no_grad():
        return original_encode(pipe, prompts, device, *args)


def run_epoch(epoch, run):
    epoch_prompts.clear()
    with torch.no_grad():  # guidance's empty prompt under the text encoder that samples this epoch
        run.uncond = original_encode(run.pipe, [""], run.accelerator.device)
    return original_run_epoch(epoch, run)


def encode_with_grad(pipe, prompts, device):
    """sampling.encode_prompts runs under no_grad; here the gradient must reach the text encoder's LoRA."""
    return pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)[0]


def pair_loss(run, batch, sample_ids, step_ids, clip_range):
    device = run.accelerator.device
    sampled_uncond = run.uncond
    embeds = encode_with_grad(run.pipe, epoch_prompts, device)
    run.uncond = encode_with_grad(run.pipe, [""], device)
    try:
        return original_pair_loss(run, dataclasses.replace(batch, embeds=embeds), sample_ids, step_ids, clip_range)
    finally:
        run.uncond = sampled_uncond


original_start_run, original_encode = run_state.start_run, sampling.encode_prompts
original_run_epoch, original_pair_loss = trainer.run_epoch, trainer.pair_loss
trainer.start_run = start_run
trainer.encode_prompts = encode_without_grad
trainer.run_epoch = run_epoch
trainer.pair_loss = pair_loss

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
