"""The training loop, top to bottom: sample, reward, advantages, update, log, checkpoint.

One epoch = `sample.batches_per_epoch` batches of `sample.prompts_per_batch` prompts x K
images (x B branches with B2) per process, then `train.inner_epochs` passes of
`minibatches` optimizer updates over the (sample, denoising step) pairs.
Distributed runs go through accelerate: each process samples whole prompt groups, rewards
are gathered so per-prompt statistics see every sample, and each rank trains its own slice.
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from diffrl import checkpoint as ckpt
from diffrl.config import Config, minibatches, validate
from diffrl.core import b2 as b2core
from diffrl.core.advantages import PerPromptStatTracker
from diffrl.core.estimators import ESTIMATORS, compute_advantages
from diffrl.errors import DiffrlError
from diffrl.evaluation import generate_fixed_seed, score_images
from diffrl.models.pipeline import add_lora, image_size, load_pipeline, resolve_model, save_lora
from diffrl.prompts import load_prompts
from diffrl.rewards.base import check_rewards, get_reward, parse_reward_spec
from diffrl.runlog import RunLogger, image_grid, plot_curves, read_metrics
from diffrl.sampling import Policy, Trajectories, ddim_timesteps, encode_prompts, sample_trajectories

CONFIG_FILE = "config.yaml"


def prepare_run_dir(out: Path, resume: bool) -> None:
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise DiffrlError(f"{out} is not a diffrl run directory (no {CONFIG_FILE}); cannot resume")
        return
    if (out / "checkpoints").exists():
        raise DiffrlError(f"{out} already holds a run; use --resume {out} or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise DiffrlError(f"output directory {out} is not writable: {err.strerror}") from None


class StopRequested:
    """SIGINT/SIGTERM set a flag; the loop checkpoints after the current epoch and exits cleanly."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(config: Config, resume: bool = False) -> Path:
    """Run (or resume) RL fine-tuning as configured; returns the run directory."""
    validate(config)
    out = Path(config.run.out)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    # cpu=True when no GPU: accelerate then runs multi-process CPU jobs (torchrun / accelerate launch) over gloo.
    accelerator = Accelerator(mixed_precision=config.train.mixed_precision, cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    estimator = ESTIMATORS[config.train.algo]
    s, t, r, b = config.sample, config.train, config.run, config.b2

    # ---- prompts and rewards first: mistakes there fail before the pipeline loads
    prompt_source = load_prompts(r.prompts)
    eval_prompts = load_prompts(r.eval_prompts).all() if r.eval_prompts else None
    reward_fn = parse_reward_spec(r.reward)
    resolve_model(config.model.pretrained)
    prepare_run_dir(out, resume)

    # ---- model: frozen pipeline + trainable LoRA (or full UNet)
    torch.manual_seed(r.seed)  # LoRA initialization, identical on every rank
    pipe = load_pipeline(config.model.pretrained, config.model.revision)
    unet = pipe.unet
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(t.mixed_precision, torch.float32)
    if device.type == "cpu":
        weight_dtype = torch.float32
    # Frozen weights in half precision save memory (as DDPO); LoRA adapters, added after, stay fp32.
    frozen_modules = (pipe.vae, pipe.text_encoder, unet) if config.model.lora else (pipe.vae, pipe.text_encoder)
    for frozen in frozen_modules:
        frozen.to(device) if weight_dtype == torch.float32 else frozen.to(device, weight_dtype)
    if config.model.lora:
        add_lora(unet, config.model.lora_rank, config.model.lora_alpha, config.model.lora_target_modules)
    else:
        unet.requires_grad_(True)
    unet.to(device)
    unet.train()
    trainable = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                  weight_decay=t.adam_weight_decay, eps=t.adam_epsilon)
    # The module handed to accelerate is the one whose forward runs the UNet, so DDP syncs LoRA grads.
    wrapped_unet, optimizer = accelerator.prepare(unet, optimizer)

    scheduler = pipe.scheduler
    policy = Policy(unet=unet, alphas_cumprod=scheduler.alphas_cumprod.to(device),
                    final_alpha_cumprod=scheduler.final_alpha_cumprod.to(device),
                    prediction_type=scheduler.config.prediction_type, eta=s.eta,
                    guidance_scale=s.guidance_scale, logprob_reduce=s.logprob_reduce)
    train_policy = dataclasses.replace(policy, unet=wrapped_unet)
    timesteps, prev_timesteps = ddim_timesteps(scheduler, s.num_steps, device)
    size = image_size(pipe, config.model.resolution)
    latent_shape = (unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    uncond = encode_prompts(pipe, [""], device)

    eval_rewards = {name: get_reward(name) for name in eval_reward_names(config, eval_prompts)}
    tracker = PerPromptStatTracker(t.stat_buffer_size, t.stat_min_count)
    history = b2core.StageRewardHistory(b.history_stages)
    prompt_rng = np.random.default_rng([r.seed, rank])
    noise_gen = torch.Generator().manual_seed(r.seed * 7919 + rank)
    train_gen = torch.Generator().manual_seed(r.seed * 104729 + 1)  # same on every rank
    counters = {"epoch": 0, "skipped_updates": 0, "nan_rewards": 0, "images_seen": 0}

    if resume:
        last = ckpt.list_checkpoints(out)
        if last:
            weights, optimizer_state, state = ckpt.load_checkpoint(last[-1])
            with torch.no_grad():
                for name, param in trainable.items():
                    param.copy_(weights[name])
            optimizer.load_state_dict(optimizer_state)
            tracker.load_state_dict(state["tracker"])
            history.load_state_dict(state["history"])
            prompt_rng.bit_generator.state = state["prompt_rng"][rank]
            noise_gen.set_state(state["torch_rng"]["noise"][rank])
            train_gen.set_state(state["torch_rng"]["train"])
            counters = state["counters"]
    elif accelerator.is_main_process:
        (out / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    logger = RunLogger(out, r.tensorboard, config.to_dict() if r.wandb else None,
                       resume_step=counters["epoch"] if resume else None) if accelerator.is_main_process else None

    def evaluate(tag: str) -> dict:
        if eval_prompts is None:
            return {}
        unet.eval()
        with accelerator.autocast():
            images, texts, metas = generate_fixed_seed(pipe, policy, eval_prompts, r.eval_images_per_prompt, r.seed,
                                                       s.num_steps, latent_shape)
        unet.train()
        scores = score_images(images, texts, metas, eval_rewards)
        if logger is not None:
            (out / "images").mkdir(exist_ok=True)
            shown = slice(0, None, r.eval_images_per_prompt)  # first image of each prompt
            captions = [f"{p} {next(iter(scores.values()))[i]:.2f}" for i, p in enumerate(texts)][shown]
            image_grid(images[shown][:32], captions[:32], columns=8).save(out / "images" / f"eval_{tag}.png")
        return {f"eval/{k}": v for k, v in {n: float(np.nanmean(v)) for n, v in scores.items()}.items()}

    per_epoch = s.prompts_per_batch * s.k * (b.branches if b.enabled else 1)
    if accelerator.is_main_process:
        print(f"diffrl: {estimator.name} ({estimator.summary}); {per_epoch * s.batches_per_epoch * world} images/epoch "
              f"({world} process(es)), {minibatches(config)} update(s) x {t.inner_epochs} inner epoch(s); run dir {out}")
    if counters["epoch"] == 0 and logger is not None:
        logger.log(evaluate("before"), epoch=0)

    bar = tqdm(total=r.epochs, initial=counters["epoch"], disable=not (r.progress and accelerator.is_main_process),
               desc="epochs", dynamic_ncols=True)
    with StopRequested() as stop:
        for epoch in range(counters["epoch"], r.epochs):
            metrics = run_epoch(epoch, config, accelerator, pipe, policy, train_policy, optimizer, trainable, estimator,
                                prompt_source, reward_fn, tracker, history, prompt_rng, noise_gen, train_gen,
                                timesteps, prev_timesteps, latent_shape, uncond, counters, out, logger)
            counters["epoch"] = epoch + 1
            done = epoch + 1 == r.epochs
            if r.eval_every and ((epoch + 1) % r.eval_every == 0) or done:
                metrics.update(evaluate("after" if done else f"{epoch + 1:05d}"))
            if logger is not None:
                logger.log(metrics, epoch=epoch + 1)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", img_s=f"{metrics['images_per_s']:.1f}")
            if done or (epoch + 1) % r.save_every == 0 or stop.signal is not None:
                save(accelerator, out, config, unet, trainable, optimizer, tracker, history, prompt_rng, noise_gen,
                     train_gen, counters)
            if stop.signal is not None:
                bar.close()
                accelerator.print(f"diffrl: stopped by signal {stop.signal} after epoch {epoch + 1}; "
                                  f"resume with: diffrl train --resume {out}")
                break
    bar.close()
    if logger is not None:
        finish_report(out)
        logger.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def eval_reward_names(config: Config, eval_prompts) -> list[str]:
    """Held-out metrics: the training reward's parts, plus the success flag on ShapesWorld prompts."""
    names = [part.split(":")[0] if part.count(":") == 1 and _is_number(part.split(":")[1]) else part
             for part in config.run.reward.split(",") if part.strip()]
    if eval_prompts and all("category" in meta for _, meta in eval_prompts):
        names.append("shapes_success")
    return list(dict.fromkeys(names))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def sample_epoch(config, policy, pipe, prompt_source, prompt_rng, noise_gen, timesteps, prev_timesteps, latent_shape,
                 uncond, branch_step: int | None) -> tuple[Trajectories, torch.Tensor, list[str], list[dict]]:
    """All batches of one epoch: (trajectories, prompt embeddings (P_total, L, D), texts, metadata) per sample."""
    s, b = config.sample, config.b2
    branches = b.branches if b.enabled else 1
    parts, embeds, texts, metas = [], [], [], []
    offset = 0
    for _ in range(s.batches_per_epoch):
        batch = prompt_source.sample(prompt_rng, s.prompts_per_batch)
        prompt_embeds = encode_prompts(pipe, [p for p, _ in batch], policy.alphas_cumprod.device)
        traj = sample_trajectories(policy, pipe.vae, prompt_embeds, uncond, s.k, timesteps, prev_timesteps,
                                   latent_shape, noise_gen, branch_step=branch_step, branches=branches)
        traj.prompt_index = traj.prompt_index + offset
        offset += len(batch)
        parts.append(traj)
        embeds.append(prompt_embeds)
        per_prompt = s.k * branches
        texts += [p for p, _ in batch for _ in range(per_prompt)]
        metas += [m for _, m in batch for _ in range(per_prompt)]
    first = parts[0]
    merged = Trajectories(
        latents=torch.cat([p.latents for p in parts]), log_probs=torch.cat([p.log_probs for p in parts]),
        timesteps=first.timesteps, prev_timesteps=first.prev_timesteps,
        prompt_index=torch.cat([p.prompt_index for p in parts]), images=np.concatenate([p.images for p in parts]),
    )
    return merged, torch.cat(embeds), texts, metas


def run_epoch(epoch, config, accelerator, pipe, policy, train_policy, optimizer, trainable, estimator, prompt_source,
              reward_fn, tracker, history, prompt_rng, noise_gen, train_gen, timesteps, prev_timesteps, latent_shape,
              uncond, counters, out, logger) -> dict:
    s, t, r, b = config.sample, config.train, config.run, config.b2
    metrics: dict = {}
    start = time.perf_counter()

    # ---- which steps are trained (B2: the last n_s steps; its first step is the branch point)
    first_step, end_step, branch_step = 0, s.num_steps, None
    if b.enabled:
        stage = b2core.stage_of_epoch(epoch, b.epochs_per_stage, b.stages)
        first_step, end_step = b2core.trained_interval(stage, s.num_steps, b.start_steps, b.stages)
        branch_step = first_step if b.branches > 1 else None
        metrics.update({"b2/stage": stage, "b2/first_trained_step": first_step, "b2/trained_steps": end_step - first_step})

    # ---- sample
    policy.unet.eval()
    with accelerator.autocast():
        traj, embeds, texts, metas = sample_epoch(config, policy, pipe, prompt_source, prompt_rng, noise_gen, timesteps,
                                                  prev_timesteps, latent_shape, uncond, branch_step)
    policy.unet.train()
    sampled = time.perf_counter()

    # ---- reward (black box), gathered so statistics see every process's samples
    rewards = check_rewards(reward_fn(traj.images, texts, metas), len(traj), r.reward)
    rewarded = time.perf_counter()
    all_rewards = accelerator.gather(torch.as_tensor(rewards, device=accelerator.device)).cpu().numpy()
    all_texts = gather_object(texts) if accelerator.num_processes > 1 else texts
    finite = np.isfinite(all_rewards)
    counters["nan_rewards"] += int((~finite).sum())
    counters["images_seen"] += len(all_rewards)

    # ---- advantages over whole groups (K per prompt, or B siblings with B2), then this rank's slice
    group_size = b.branches if b.enabled else s.k
    all_adv = compute_advantages(estimator, all_rewards, all_texts, group_size, tracker, t.loo_std, t.adv_clip_max)
    keep = finite.copy()
    if b.enabled and b.selection == "zscore":
        history.add(metrics["b2/stage"], all_texts, all_rewards)
        z = history.zscores(all_texts, all_rewards).reshape(-1, b.branches)
        keep &= b2core.select_siblings(torch.as_tensor(z), b.z_threshold).reshape(-1).numpy()
        metrics["b2/selected"] = int(keep.sum())
    mine = slice(accelerator.process_index * len(traj), (accelerator.process_index + 1) * len(traj))
    advantages = torch.as_tensor(all_adv[mine], dtype=torch.float32, device=accelerator.device)
    selected = torch.nonzero(torch.as_tensor(keep[mine])).reshape(-1)

    # ---- update: clipped surrogate or policy gradient over (sample, step) pairs
    stats = update(config, accelerator, train_policy, optimizer, trainable, estimator, traj, embeds, uncond,
                   advantages, selected, first_step, end_step, train_gen, counters)
    trained = time.perf_counter()
    if accelerator.num_processes > 1:
        # Replicas must stay identical; a spread above 0 means gradients were not synchronized.
        checksum = torch.stack([p.detach().double().sum() for p in trainable.values()]).sum().reshape(1)
        sums = accelerator.gather(checksum.to(accelerator.device))
        metrics["dist/param_spread"] = float(sums.max() - sums.min())

    valid_rewards = all_rewards[finite]
    metrics.update({
        "reward_mean": float(valid_rewards.mean()) if valid_rewards.size else float("nan"),
        "reward_std": float(valid_rewards.std()) if valid_rewards.size else float("nan"),
        "advantage_mean": float(all_adv[keep].mean()) if keep.any() else 0.0,
        "advantage_std": float(all_adv[keep].std()) if keep.any() else 0.0,
        **stats,
        "nan_rewards_total": counters["nan_rewards"],
        "skipped_updates_total": counters["skipped_updates"],
        "images_seen": counters["images_seen"],
        "sample_s": sampled - start, "reward_s": rewarded - sampled, "train_s": trained - rewarded,
        "images_per_s": len(all_rewards) / (trained - start),
    })
    for name, values in getattr(reward_fn, "last_components", {}).items():
        if len(reward_fn.last_components) > 1:
            metrics[f"reward/{name}"] = float(np.nanmean(values))
    if logger is not None and ((epoch + 1) % r.image_every == 0 or epoch == 0):
        (out / "images").mkdir(exist_ok=True)
        n = min(16, len(traj))
        image_grid(traj.images[:n], [f"{texts[i]} {rewards[i]:.2f}" for i in range(n)],
                   columns=s.k * (b.branches if b.enabled else 1) if s.k * (b.branches if b.enabled else 1) <= 8 else 8
                   ).save(out / "images" / f"epoch_{epoch + 1:05d}.png")
    return metrics


def update(config, accelerator, train_policy, optimizer, trainable, estimator, traj, embeds, uncond, advantages,
           selected, first_step, end_step, train_gen, counters) -> dict:
    """Inner epochs x minibatches of optimizer steps; each step averages the loss over its (sample, step) pairs."""
    t = config.train
    steps_per_sample = max(1, math.ceil(t.timestep_fraction * (end_step - first_step)))
    sums = {"loss": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0, "ratio_mean": 0.0, "grad_norm": 0.0}
    updates = 0
    for _ in range(t.inner_epochs):
        order = selected[torch.randperm(len(selected), generator=train_gen)]
        for minibatch in torch.tensor_split(order, minibatches(config)):
            # A random subset of the trainable steps for each sample (DDPO's timestep_fraction).
            step_choice = torch.stack([torch.randperm(end_step - first_step, generator=train_gen)[:steps_per_sample]
                                       for _ in range(len(minibatch))]) + first_step if len(minibatch) else None
            pair_sample = minibatch.repeat_interleave(steps_per_sample)
            pair_step = step_choice.reshape(-1) if step_choice is not None else torch.zeros(0, dtype=torch.long)
            weight_all = 1.0
            if len(pair_sample) == 0:
                # Keep collectives aligned across ranks: one zero-weighted pair.
                pair_sample, pair_step, weight_all = torch.zeros(1, dtype=torch.long), torch.full((1,), first_step), 0.0
            chunks = list(zip(pair_sample.split(t.chunk_size), pair_step.split(t.chunk_size)))
            for i, (ps, pt) in enumerate(chunks):
                sync = i == len(chunks) - 1
                with accelerator.no_sync(train_policy.unet) if not sync else nullcontext():
                    terms = pair_loss(accelerator, train_policy, estimator, traj, embeds, uncond, advantages, ps, pt,
                                      t.clip_range)
                    accelerator.backward(terms.loss * (weight_all * len(ps) / len(pair_sample)))
                for key in ("loss", "approx_kl", "clip_fraction", "ratio_mean"):
                    sums[key] += float(getattr(terms, key).detach()) * len(ps) / len(pair_sample)
            grad_norm = accelerator.clip_grad_norm_(list(trainable.values()), t.max_grad_norm)
            if torch.isfinite(torch.as_tensor(grad_norm)):
                optimizer.step()
                sums["grad_norm"] += float(grad_norm)
            else:
                counters["skipped_updates"] += 1  # a non-finite gradient never reaches the weights
            optimizer.zero_grad(set_to_none=True)
            updates += 1
    return {k: v / max(updates, 1) for k, v in sums.items()} | {"updates": updates}


def pair_loss(accelerator, train_policy, estimator, traj, embeds, uncond, advantages, sample_ids, step_ids, clip_range):
    """Re-evaluate log pi_theta of stored actions for a chunk of (sample, step) pairs in one UNet call."""
    device = accelerator.device
    sample_ids, step_ids = sample_ids.to(device), step_ids.to(device)
    x_t = traj.latents[sample_ids, step_ids]  # (M, C, h, w)
    x_prev = traj.latents[sample_ids, step_ids + 1]
    n = len(sample_ids)
    with accelerator.autocast():
        result = train_policy.step(x_t, traj.timesteps[step_ids], traj.prev_timesteps[step_ids],
                                   embeds[traj.prompt_index[sample_ids]], uncond.expand(n, -1, -1), prev_sample=x_prev)
    return estimator.loss(result.log_prob.float(), traj.log_probs[sample_ids, step_ids], advantages[sample_ids],
                          clip_range)


def save(accelerator, out, config, unet, trainable, optimizer, tracker, history, prompt_rng, noise_gen, train_gen,
         counters) -> None:
    """Checkpoint + LoRA export. Every rank reaches the same collectives; only the main process writes."""
    prompt_states = gather_object([prompt_rng.bit_generator.state]) if accelerator.num_processes > 1 else \
        [prompt_rng.bit_generator.state]
    noise_states = gather_object([noise_gen.get_state()]) if accelerator.num_processes > 1 else [noise_gen.get_state()]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"counters": dict(counters), "tracker": tracker.state_dict(), "history": history.state_dict(),
                 "prompt_rng": prompt_states, "torch_rng": {"noise": noise_states, "train": train_gen.get_state()}}
        ckpt.save_checkpoint(out, counters["epoch"], dict(trainable), optimizer.state_dict(), state,
                             config.run.keep_checkpoints)
        if config.model.lora:
            save_lora(unet, out / "lora")
        else:
            unet.save_pretrained(out / "unet", safe_serialization=True)
    accelerator.wait_for_everyone()


def finish_report(out: Path) -> None:
    """Reward curves (training and held-out) as PNG, and a before/after grid of the held-out images."""
    records = read_metrics(out)
    keys = ["reward_mean"] + sorted({k for rec in records for k in rec if k.startswith("eval/")})
    plot_curves(records, keys, out / "reward_curve.png", title=out.name)
    before, after = out / "images" / "eval_before.png", out / "images" / "eval_after.png"
    if before.exists() and after.exists():
        from PIL import Image, ImageDraw

        a, c = Image.open(before), Image.open(after)
        both = Image.new("RGB", (max(a.width, c.width), a.height + c.height + 28), "white")
        draw = ImageDraw.Draw(both)
        draw.text((2, 2), "before (base model)", fill="black")
        both.paste(a, (0, 14))
        draw.text((2, a.height + 16), "after fine-tuning", fill="black")
        both.paste(c, (0, a.height + 28))
        both.save(out / "before_after.png")
