"""The policy update of one epoch: `train.inner_epochs` passes of `minibatches` optimizer steps.

Each optimizer step trains a minibatch of samples, each on a random subset of its trainable denoising
steps (DDPO's `train.timestep_fraction`): the (sample, step) pairs are re-evaluated under the current
policy in chunks of `train.chunk_size` (by default all at once on CPU, 8 on a GPU; `pair_loss`: one UNet call
per chunk, plus one without the LoRA adapters for the KL penalty `train.kl_coef`), their loss averaged, and
the gradient applied only if the loss and the gradient norm are finite on every rank (the skip guard's
`count_update`). With `model.train_text_encoder` each chunk first re-encodes its prompts, with gradient,
through the text encoder. With `train.ptx_coef` each step first adds the gradient of the denoiser's own training
loss on `train.ptx_batch` images of `train.ptx_data` (`pretraining_backward`).
Pairs whose sample has advantage 0 (a leave-one-out or GRPO group whose K rewards are all equal) contribute
nothing to any surrogate's gradient and are not evaluated (`without_zero_advantage`), unless a KL penalty is on.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffrl.config import Config, chunk_size, inner_epochs, minibatches
from diffrl.core.ddim import gaussian_kl
from diffrl.core.losses import calibrated_clip_range
from diffrl.pretraining_data import OwnSamples
from diffrl.sampling import PromptEmbeds, Trajectories, encode_images, encode_prompts, encode_prompts_trainable

if TYPE_CHECKING:
    from diffrl.run_state import RunState

# Per optimizer step: averaged over its pairs, then over the applied steps of the epoch.
AVERAGED = ("loss", "approx_kl", "clip_fraction", "ratio_mean", "kl_to_base")
# Of these, averaged over the pairs drawn (skipped zero-advantage pairs count as 0); the rest over the pairs evaluated.
OVER_DRAWN = ("loss",)


@dataclass
class Batch:
    """What one epoch trains on, on this rank."""

    traj: Trajectories  # sampled trajectories and their log-probs under the sampling policy (pi_old)
    embeds: torch.Tensor | PromptEmbeds  # prompt embeddings, rows indexed by traj.prompt_index
    advantages: torch.Tensor  # (N,) one per sample
    selected: torch.Tensor  # indices of the samples to train on (finite reward, B2's sibling selection)
    steps: torch.Tensor  # the denoising steps that may be trained
    prompts: list[str] | None = None  # the text of each row of embeds (model.train_text_encoder re-encodes them)
    step_weights: torch.Tensor | None = None  # (T,) weight of each step's surrogate (train.step_weight_power); None: 1


@dataclass
class Pairs:
    """One minibatch's (sample, step) pairs; weight 0 marks the stand-in pair of an empty minibatch."""

    samples: torch.Tensor
    steps: torch.Tensor
    weight: float = 1.0
    drawn: int | None = None  # pairs the minibatch drew (the loss's normalizer); None: len(samples)

    def __post_init__(self):
        if self.drawn is None:
            self.drawn = len(self.samples)


def update(run: RunState, batch: Batch, loss_fn=None) -> dict:
    """Inner epochs x minibatches of optimizer steps; each step averages the loss over its (sample, step) pairs.

    `loss_fn` (default `pair_loss`) computes a chunk's loss terms and KL; the trainer passes its own name for it.
    """
    loss_fn = loss_fn or pair_loss
    t = run.config.train
    clip_range = resolved_clip_range(run.config, batch.traj.latents.shape[2:])
    steps_per_sample = max(1, math.ceil(t.timestep_fraction * len(batch.steps)))
    sums = dict.fromkeys(AVERAGED + ("grad_norm",), 0.0)
    evaluated = drawn = 0
    extremes = {"ratio_min": math.inf, "ratio_max": -math.inf}
    # Until the first step the weights are the sampler's, so these ratios differ from 1 by arithmetic alone
    onpolicy_low, onpolicy_high = math.inf, -math.inf
    applied = 0
    for _ in range(inner_epochs(run.config)):
        order = batch.selected[torch.randperm(len(batch.selected), generator=run.train_gen)]
        for minibatch in torch.tensor_split(order, minibatches(run.config)):
            pairs = draw_pairs(minibatch, batch.steps, steps_per_sample, run.train_gen)
            ptx = pretraining_backward(run) if t.ptx_coef else {}
            drawn += pairs.drawn
            if not t.kl_coef:  # the KL penalty's gradient does not vanish with the advantage
                pairs = without_zero_advantage(pairs, batch.advantages)
            evaluated += len(pairs.samples) if pairs.weight else 0
            step, low, high = backward(run, batch, pairs, clip_range, loss_fn)
            if not applied:
                onpolicy_low, onpolicy_high = min(onpolicy_low, low), max(onpolicy_high, high)
            grad_norm = run.accelerator.clip_grad_norm_(list(run.trainable.values()), t.max_grad_norm)
            # A non-finite loss or gradient never reaches the weights (nor AdamW's moments).
            finite = step_is_finite(run.accelerator, math.isfinite(step["loss"]), grad_norm)
            if finite:
                run.optimizer.step()
                run.lr_scheduler.step()  # the schedule counts applied updates only
                for key, value in (step | ptx).items():
                    sums[key] = sums.get(key, 0.0) + value
                sums["grad_norm"] += float(grad_norm)
                extremes = {"ratio_min": min(extremes["ratio_min"], low), "ratio_max": max(extremes["ratio_max"], high)}
                applied += 1
            count_update(run.counters, applied=finite)
            run.optimizer.zero_grad(set_to_none=True)
    if not applied:
        extremes = {"ratio_min": math.nan, "ratio_max": math.nan}
    onpolicy_dev = max(1 - onpolicy_low, onpolicy_high - 1) if math.isfinite(onpolicy_low) else math.nan
    return ({k: v / max(applied, 1) for k, v in sums.items()} | extremes
            | {"updates": applied, "pairs_evaluated": evaluated / max(drawn, 1), "ratio_onpolicy_dev": onpolicy_dev})


# The pretraining loss's draws: a stream of its own, keyed by the update's number (resume-exact without a saved state)
PTX_STREAM = 0x70747820


def pretraining_backward(run: RunState) -> dict:
    """Accumulate train.ptx_coef x the denoiser's own training loss on a fresh batch of train.ptx_data (images,
    or the epoch's own latents; noise levels and noise drawn from (run.seed, rank, update number)); nothing while
    an own-samples pool is empty. With gradient through the trained adapters
    and, with model.train_text_encoder, the text encoder's. Runs before the step's pairs, outside DDP's
    synchronization, so that their last chunk all-reduces both. Returns ptx_loss (the MSE) and ptx_grad_norm (of
    the weighted gradient alone)."""
    accelerator, t, policy, source = run.accelerator, run.config.train, run.train_policy, run.pretraining_data
    rng = np.random.default_rng([run.config.run.seed, accelerator.process_index, PTX_STREAM,
                                 run.lr_scheduler.last_epoch])
    device = accelerator.device
    if isinstance(source, OwnSamples):
        if not len(source):  # no sample beat its group this epoch: nothing to imitate
            return {}
        captions, z0 = source.draw(rng, t.ptx_batch)
    else:
        captions, images = source.draw(rng, t.ptx_batch, run.latent_shape[-1] * run.pipe.vae_scale_factor)
        z0 = encode_images(run.pipe.vae, images)  # moves them to the VAE's device and dtype
    u = torch.from_numpy(noise_levels(rng, len(captions), t.ptx_max_noise, t.ptx_min_noise)).to(device)
    eps = torch.from_numpy(rng.standard_normal(z0.shape, dtype=np.float32)).to(device)
    with ExitStack() as stack:
        for model in filter(None, (policy.unet, run.train_text_encoder)):
            stack.enter_context(accelerator.no_sync(model))
        with accelerator.autocast():
            if run.train_text_encoder is not None:
                cond = encode_prompts_trainable(run.pipe.tokenizer, run.train_text_encoder, captions, device)
            else:
                cond = encode_prompts(run.pipe, captions, device, run.config.sample.max_sequence_length)
            loss = policy.denoising_loss(z0, u, eps, cond).mean()
        accelerator.backward(t.ptx_coef * loss)
    grads = [p.grad for p in run.trainable.values() if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else torch.zeros(())
    return {"ptx_loss": float(loss.detach()), "ptx_grad_norm": float(grad_norm)}


def noise_levels(rng: np.random.Generator, n: int, max_noise: float, min_noise: float = 0.0) -> np.ndarray:
    """(n,) float32 noise levels u ~ U[min_noise, max_noise) of the pretraining loss (`Policy.denoising_loss`:
    t = floor(u T))."""
    return np.float32(min_noise) + rng.random(n, dtype=np.float32) * np.float32(max_noise - min_noise)


def draw_pairs(minibatch: torch.Tensor, steps: torch.Tensor, steps_per_sample: int, generator) -> Pairs:
    """A random subset of the trainable steps for each sample of the minibatch, as flat (sample, step) pairs."""
    step_choice = torch.stack([steps[torch.randperm(len(steps), generator=generator)[:steps_per_sample]]
                               for _ in range(len(minibatch))]) if len(minibatch) else None
    if step_choice is None:
        # Keep collectives aligned across ranks: one zero-weighted pair.
        return Pairs(torch.zeros(1, dtype=torch.long), steps[:1], 0.0)
    return Pairs(minibatch.repeat_interleave(steps_per_sample), step_choice.reshape(-1))


def without_zero_advantage(pairs: Pairs, advantages: torch.Tensor) -> Pairs:
    """The pairs whose sample has a nonzero advantage. Every surrogate loss is the advantage times a function of
    the log-prob, so the others add exactly 0 to the gradient but would each cost a UNet forward and backward.
    The kept pairs carry the drawn count as the loss's normalizer, so the gradient is the one of all pairs."""
    keep = advantages.cpu()[pairs.samples] != 0
    if bool(keep.all()):
        return pairs
    if not bool(keep.any()):  # still one backward, so that every rank reaches DDP's all-reduce
        return Pairs(pairs.samples[:1], pairs.steps[:1], 0.0, pairs.drawn)
    return Pairs(pairs.samples[keep], pairs.steps[keep], pairs.weight, pairs.drawn)


def backward(run: RunState, batch: Batch, pairs: Pairs, clip_range: float, loss_fn) -> tuple[dict, float, float]:
    """Accumulate the gradient of the pairs' mean loss chunk by chunk; returns the step's averaged terms and
    the smallest and largest importance ratio seen."""
    accelerator, kl_coef = run.accelerator, run.config.train.kl_coef
    size = chunk_size(run.config, len(pairs.samples), accelerator.device.type == "cuda")
    chunks = list(zip(pairs.samples.split(size), pairs.steps.split(size)))
    total, drawn = len(pairs.samples), pairs.drawn
    step = dict.fromkeys(AVERAGED, 0.0)
    low, high = math.inf, -math.inf
    for i, (ps, pt) in enumerate(chunks):
        with ExitStack() as stack:
            if i < len(chunks) - 1:  # DDP all-reduces the gradients once, in the last chunk's backward
                for model in filter(None, (run.train_policy.unet, run.train_text_encoder)):
                    stack.enter_context(accelerator.no_sync(model))
            terms, kl = loss_fn(run, batch, ps, pt, clip_range)
            loss = terms.loss + kl_coef * kl if kl_coef else terms.loss
            # backward even on a non-finite loss: every rank must reach DDP's gradient all-reduce
            accelerator.backward(loss * (pairs.weight * len(ps) / drawn))
        values = terms._asdict() | {"loss": loss, "kl_to_base": kl}
        for key in step:
            step[key] += float(values[key].detach()) * len(ps) / (drawn if key in OVER_DRAWN else total)
        low, high = min(low, float(terms.ratio_min)), max(high, float(terms.ratio_max))
    return step, low, high


def pair_loss(run: RunState, batch: Batch, sample_ids: torch.Tensor, step_ids: torch.Tensor, clip_range: float):
    """Re-evaluate log pi_theta of stored actions for a chunk of (sample, step) pairs in one UNet call.

    Returns the estimator's loss terms and the mean KL of each step's Gaussian to the base model's (0 unless
    train.kl_coef > 0: the reference is the same UNet, and the text encoder if trained, with their LoRA adapters
    disabled, so no second copy is held).
    """
    accelerator, policy, traj = run.accelerator, run.train_policy, batch.traj
    device = accelerator.device
    sample_ids, step_ids = sample_ids.to(device), step_ids.to(device)
    x_t = traj.latents[sample_ids, step_ids]  # (M, C, h, w)
    x_prev = traj.latents[sample_ids, step_ids + 1]
    rows = traj.prompt_index[sample_ids]
    step_args = (x_t, traj.timesteps[step_ids], traj.prev_timesteps[step_ids])
    with accelerator.autocast():
        prompts = chunk_embeds(run, batch, rows, run.train_text_encoder)
        result = policy.step(*step_args, *prompts, prev_sample=x_prev)
    advantages = batch.advantages[sample_ids]
    if batch.step_weights is not None:  # scaling a pair's advantage scales its gradient, inside the clip or not
        advantages = advantages * batch.step_weights.to(device)[step_ids]
    terms = run.estimator.loss(result.log_prob.float(), traj.log_probs[sample_ids, step_ids], advantages, clip_range)
    kl = torch.zeros((), device=device)
    if run.config.train.kl_coef:
        unet = accelerator.unwrap_model(policy.unet)
        text_encoder = run.pipe.text_encoder if run.train_text_encoder is not None else None
        with adapters_disabled(unet, text_encoder), torch.no_grad(), accelerator.autocast():
            base_prompts = chunk_embeds(run, batch, rows, text_encoder)  # a trained text encoder's base embeddings
            reference = dataclasses.replace(policy, unet=unet).step(*step_args, *base_prompts, prev_sample=x_prev)
        kl = gaussian_kl(result.mean.float(), reference.mean.float(), result.std.float(), policy.logprob_reduce).mean()
    return terms, kl


def chunk_embeds(run: RunState, batch: Batch, rows: torch.Tensor, text_encoder) -> tuple:
    """(prompt embeddings, empty-prompt embeddings) of a chunk's samples, given their rows of `batch.embeds`: the
    sampled ones, or with `text_encoder` (model.train_text_encoder) the chunk's distinct prompts and the empty one
    re-encoded in one call through it, with gradient unless under no_grad."""
    if text_encoder is None:
        return batch.embeds[rows], run.uncond.expand(len(rows), -1, -1)
    texts = [batch.prompts[row] for row in rows.tolist()]
    distinct = {text: i for i, text in enumerate(dict.fromkeys(["", *texts]))}  # the empty prompt is row 0
    embeds = encode_prompts_trainable(run.pipe.tokenizer, text_encoder, list(distinct), rows.device)
    return embeds[[distinct[text] for text in texts]], embeds[:1].expand(len(texts), -1, -1)


@contextmanager
def adapters_disabled(*models):
    """The models (None: skipped) with their LoRA adapters switched off: the base model, for the KL reference."""
    models = [m for m in models if m is not None]
    for model in models:
        model.disable_adapters()
    try:
        yield
    finally:
        for model in models:
            model.enable_adapters()


def resolved_clip_range(config: Config, latent_shape) -> float:
    """train.clip_range, or (None) the range calibrated to the log-prob reduction and the latent size."""
    if config.train.clip_range is not None:
        return config.train.clip_range
    return calibrated_clip_range(math.prod(latent_shape), config.sample.logprob_reduce)


def step_is_finite(accelerator, loss_finite: bool, grad_norm) -> bool:
    """Whether to apply this optimizer step: finite loss and gradient norm on every rank (one decision for all)."""
    ok = loss_finite and bool(torch.isfinite(torch.as_tensor(grad_norm)))
    if accelerator.num_processes > 1:  # the gradient is all-reduced, the loss is not
        ok = bool(accelerator.gather(torch.tensor([float(ok)], device=accelerator.device)).min() > 0)
    return ok


def count_update(counters: dict, applied: bool) -> None:
    """The skip guard's bookkeeping: total skipped updates and the current run of them."""
    if applied:
        counters["consecutive_skips"] = 0
    else:
        counters["skipped_updates"] += 1
        counters["consecutive_skips"] += 1
