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
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from diffrl import checkpoint as ckpt
from diffrl.config import (RESUMABLE_KEYS, Config, branches, images_per_epoch, load_config, minibatches,
                           resume_conflicts, validate)
from diffrl.core import b2 as b2core
from diffrl.core.advantages import PerPromptStatTracker
from diffrl.core.ddim import trained_steps
from diffrl.core.estimators import ESTIMATORS, compute_advantages
from diffrl.errors import DiffrlError, RunHalted, RunInterrupted
from diffrl.evaluation import generate_fixed_seed, score_images
from diffrl.models.pipeline import add_lora, image_size, load_pipeline, resolve_model, save_lora
from diffrl.prompts import load_prompts
from diffrl.rewards.base import check_rewards, get_reward, parse_reward_spec, split_reward_spec
from diffrl.runlog import RunLogger, image_grid, plot_curves, read_metrics
from diffrl.sampling import Policy, Trajectories, ddim_timesteps, encode_prompts, sample_trajectories

CONFIG_FILE = "config.yaml"


def prepare_run_dir(out: Path, resume: bool, config: Config | None = None) -> None:
    """Check the run directory before anything loads. Writes nothing: the directory appears with config.yaml."""
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise DiffrlError(f"{out} is not a diffrl run directory (no {CONFIG_FILE}); cannot resume")
        if config is not None:
            check_resumable(out, config)
        return
    if (out / "checkpoints").exists():
        raise DiffrlError(f"{out} already holds a run; use --resume {out} or another --out")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the nearest existing ancestor must accept a new directory
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "a path component is not a directory")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise DiffrlError(f"output directory {out} is not writable: {err.strerror or err}") from None


def check_resumable(out: Path, config: Config) -> None:
    """Refuse to resume with settings that change the math of the remaining updates (config.RESUMABLE_KEYS may differ)."""
    saved = load_config(out / CONFIG_FILE)
    conflicts = resume_conflicts(saved, config)
    if conflicts:
        raise DiffrlError(f"cannot resume {out} with different settings: {'; '.join(conflicts)} "
                          f"(only {', '.join(sorted(RESUMABLE_KEYS))} may change; start a new run with --out)")


def write_config(out: Path, config: Config) -> None:
    """config.yaml, replaced atomically (resume reads it back; a resume records the allowed changes)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CONFIG_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(out / CONFIG_FILE)


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


def run_directory(config: Config, accelerator: Accelerator) -> Path:
    """`run.out`, or runs/<date>-<time>-<algo> chosen by the main process and shared with every rank."""
    if config.run.out is None:
        from accelerate.utils import broadcast_object_list

        name = [f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.train.algo}"]
        if accelerator.num_processes > 1:
            broadcast_object_list(name)
        config.run.out = name[0]  # recorded in config.yaml
    return Path(config.run.out)


def train(config: Config, resume: bool = False) -> Path:
    """Run (or resume) RL fine-tuning as configured; returns the run directory."""
    validate(config)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    # cpu=True when no GPU: accelerate then runs multi-process CPU jobs (torchrun / accelerate launch) over gloo.
    accelerator = Accelerator(mixed_precision=config.train.mixed_precision, cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    estimator = ESTIMATORS[config.train.algo]
    s, t, r, b = config.sample, config.train, config.run, config.b2
    out = run_directory(config, accelerator)

    # ---- prompts and rewards first: mistakes there fail before the pipeline loads
    prompt_source = load_prompts(r.prompts)
    eval_prompts = load_prompts(r.eval_prompts).all() if r.eval_prompts else None
    reward_fn = parse_reward_spec(r.reward)
    resolve_model(config.model.pretrained)
    prepare_run_dir(out, resume, config)

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
    policy = Policy.from_scheduler(unet, scheduler, device, s.eta, s.guidance_scale, s.logprob_reduce)
    train_policy = dataclasses.replace(policy, unet=wrapped_unet)
    timesteps, prev_timesteps = ddim_timesteps(scheduler, s.num_steps, device)
    step_stds = policy.noise_stds(timesteps, prev_timesteps)  # sigma_t per step: which steps are trained
    narrowest = b2core.trained_interval(0, s.num_steps, b.start_steps, b.stages) if b.enabled else (0, s.num_steps)
    if not len(trained_steps(*narrowest, step_stds, t.min_noise_std)):
        raise DiffrlError(f"no denoising step in [{narrowest[0]}, {narrowest[1]}) has sigma_t >= train.min_noise_std="
                          f"{t.min_noise_std:g}; lower it, or train more steps (sample.num_steps, b2.start_steps)")
    size = image_size(pipe, config.model.resolution)
    latent_shape = (unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    uncond = encode_prompts(pipe, [""], device)

    eval_rewards = {name: get_reward(name) for name in eval_reward_names(config, eval_prompts)}
    tracker = PerPromptStatTracker(t.stat_buffer_size, t.stat_min_count)
    history = b2core.StageRewardHistory(b.history_stages)
    prompt_rng = np.random.default_rng([r.seed, rank])
    noise_gen = torch.Generator().manual_seed(r.seed * 7919 + rank)
    train_gen = torch.Generator().manual_seed(r.seed * 104729 + 1)  # same on every rank
    # consecutive_skips: skipped updates in a row (the guard); best_eval: [held-out reward, epoch] (early stop)
    counters = {"epoch": 0, "skipped_updates": 0, "nan_rewards": 0, "images_seen": 0, "consecutive_skips": 0,
                "best_eval": None}

    restored = None
    if resume:
        restored = restore(out, trainable, optimizer, tracker, history, prompt_rng, noise_gen, train_gen, rank, world)
        counters.update(restored or {})
    if accelerator.is_main_process:
        write_config(out, config)
    # Resuming drops metrics logged after the restored checkpoint (all of them when there was none yet).
    logger = RunLogger(out, r.tensorboard, config.to_dict() if r.wandb else None,
                       resume_step=(counters["epoch"] if restored else -1) if resume else None
                       ) if accelerator.is_main_process else None

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

    if accelerator.is_main_process:
        print(f"diffrl: {estimator.name} ({estimator.summary}); {images_per_epoch(config) * world} images/epoch "
              f"({world} process(es)), {minibatches(config)} update(s) x {t.inner_epochs} inner epoch(s); run dir {out}")
    eval_key = f"eval/{eval_reward_names(config, eval_prompts)[0]}"
    if counters["epoch"] == 0:
        before = evaluate("before")
        track_eval(counters, before, eval_key, 0, r.early_stop_drop)
        if logger is not None:
            logger.log(before, epoch=0)

    bar = tqdm(total=r.epochs, initial=counters["epoch"], disable=not (r.progress and accelerator.is_main_process),
               desc="epochs", dynamic_ncols=True)
    save_pending = False  # a checkpoint due while updates were being skipped waits for a clean epoch
    try:
        with StopRequested() as stop:
            for epoch in range(counters["epoch"], r.epochs):
                metrics = run_epoch(epoch, config, accelerator, pipe, policy, train_policy, optimizer, trainable,
                                    estimator, prompt_source, reward_fn, tracker, history, prompt_rng, noise_gen,
                                    train_gen, timesteps, prev_timesteps, step_stds, latent_shape, uncond, counters,
                                    out, logger)
                counters["epoch"] = epoch + 1
                done = epoch + 1 == r.epochs
                if r.eval_every and ((epoch + 1) % r.eval_every == 0) or done:
                    metrics.update(evaluate("after" if done else f"{epoch + 1:05d}"))
                collapse = track_eval(counters, metrics, eval_key, epoch + 1, r.early_stop_drop)
                if logger is not None:
                    logger.log(metrics, epoch=epoch + 1)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", img_s=f"{metrics['images_per_s']:.1f}")

                # ---- guards, signals, checkpoint
                if counters["consecutive_skips"] >= t.max_consecutive_skips:  # same count on every rank
                    raise RunHalted(halt_message(out, counters))  # no save: the newest checkpoint predates the fault
                signum, collapse_flag = agree(accelerator, stop.signal or 0, collapse is not None)
                stopping = done or signum or collapse_flag
                due = stopping or (epoch + 1) % r.save_every == 0 or save_pending
                save_pending = bool(due and not stopping and counters["consecutive_skips"])
                if due and not save_pending:
                    save(accelerator, out, config, unet, trainable, optimizer, tracker, history, prompt_rng,
                         noise_gen, train_gen, counters)
                if collapse_flag and not done:
                    accelerator.print(f"diffrl: early stop after epoch {epoch + 1}: {collapse}")
                    break
                if signum and not done:
                    raise RunInterrupted(f"{signal.Signals(signum).name} after epoch {epoch + 1}; checkpoint "
                                         f"{ckpt.checkpoint_path(out, epoch + 1)} written; resume with: "
                                         f"diffrl train --resume {out}", signum)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if logger is not None:
        finish_report(out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def restore(out, trainable, optimizer, tracker, history, prompt_rng, noise_gen, train_gen, rank, world) -> dict | None:
    """Load the newest readable checkpoint into the live objects; returns its counters (None: no checkpoint yet)."""
    found = ckpt.load_latest(out)
    if found is None:
        return None  # killed before its first checkpoint: the run starts over, from the same seed
    path, (weights, optimizer_state, state) = found
    if len(state["prompt_rng"]) != world:
        raise DiffrlError(f"{path} was written by {len(state['prompt_rng'])} process(es); resume with the same number "
                          f"(this launch has {world})")
    mismatch = sorted(set(weights) ^ set(trainable)) or [n for n, p in trainable.items() if weights[n].shape != p.shape]
    if mismatch:
        raise DiffrlError(f"{path} does not match this model's trainable weights (e.g. {mismatch[0]}); cannot resume")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(weights[name])
    optimizer.load_state_dict(optimizer_state)
    tracker.load_state_dict(state["tracker"])
    history.load_state_dict(state["history"])
    prompt_rng.bit_generator.state = state["prompt_rng"][rank]
    noise_gen.set_state(state["torch_rng"]["noise"][rank])
    train_gen.set_state(state["torch_rng"]["train"])
    return state["counters"]


def agree(accelerator, signum: int, flag: bool) -> tuple[int, bool]:
    """One decision for every rank: the largest pending signal number and whether any rank raised `flag`.

    A signal may reach a single process (Ctrl-C in one terminal, a per-process OOM killer warning);
    without this, that rank would stop at a collective the others never reach.
    """
    if accelerator.num_processes == 1:
        return signum, flag
    votes = accelerator.gather(torch.tensor([[float(signum), float(flag)]], device=accelerator.device)).cpu()
    return int(votes[:, 0].max()), bool(votes[:, 1].max() > 0)


def track_eval(counters: dict, metrics: dict, key: str, epoch: int, drop: float | None) -> str | None:
    """Record the best held-out reward; returns why to stop when it has fallen more than `drop` below it."""
    value = metrics.get(key)
    if value is None or not math.isfinite(value):
        return None
    best = counters.get("best_eval")
    if best is None or value > best[0]:
        counters["best_eval"] = [value, epoch]
        return None
    if drop is not None and best[0] - value > drop:
        return (f"held-out {key[len('eval/'):]} is {value:.4g}, more than run.early_stop_drop={drop:g} below its best "
                f"{best[0]:.4g} (epoch {best[1]})")
    return None


def halt_message(out: Path, counters: dict) -> str:
    newest = ckpt.list_checkpoints(out)
    where = f"newest checkpoint {newest[-1]}" if newest else "no checkpoint yet"
    return (f"{counters['consecutive_skips']} updates in a row were skipped (non-finite loss or gradient, or no finite "
            f"reward) at epoch {counters['epoch']}; {where}; fix the cause (lower train.learning_rate, check the reward), "
            f"then: diffrl train --resume {out}")


def eval_reward_names(config: Config, eval_prompts) -> list[str]:
    """Held-out metrics: the training reward's parts, plus the success flag on ShapesWorld prompts."""
    names = [name for name, _ in split_reward_spec(config.run.reward)]
    if eval_prompts and all("category" in meta and "objects" in meta for _, meta in eval_prompts):  # ShapesWorld
        names.append("shapes_success")
    return list(dict.fromkeys(names))


def sample_epoch(config, policy, pipe, prompt_source, prompt_rng, noise_gen, timesteps, prev_timesteps, latent_shape,
                 uncond, branch_step: int | None) -> tuple[Trajectories, torch.Tensor, list[str], list[dict]]:
    """All batches of one epoch: (trajectories, prompt embeddings (P_total, L, D), texts, metadata) per sample."""
    s = config.sample
    parts, embeds, texts, metas = [], [], [], []
    offset = 0
    for _ in range(s.batches_per_epoch):
        batch = prompt_source.sample(prompt_rng, s.prompts_per_batch)
        prompt_embeds = encode_prompts(pipe, [p for p, _ in batch], policy.alphas_cumprod.device)
        traj = sample_trajectories(policy, pipe.vae, prompt_embeds, uncond, s.k, timesteps, prev_timesteps,
                                   latent_shape, noise_gen, branch_step=branch_step, branches=branches(config))
        traj.prompt_index = traj.prompt_index + offset
        offset += len(batch)
        parts.append(traj)
        embeds.append(prompt_embeds)
        per_prompt = s.k * branches(config)
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
              reward_fn, tracker, history, prompt_rng, noise_gen, train_gen, timesteps, prev_timesteps, step_stds,
              latent_shape, uncond, counters, out, logger) -> dict:
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
    steps = trained_steps(first_step, end_step, step_stds, t.min_noise_std)
    metrics["trained_steps"] = len(steps)

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
    group_size = b.branches if b.enabled else s.k  # B2: siblings form the group
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
    if finite.any():
        stats = update(config, accelerator, train_policy, optimizer, trainable, estimator, traj, embeds, uncond,
                       advantages, selected, steps, train_gen, counters)
    else:  # not one finite reward on any rank: nothing to learn from; counts as one skipped update
        stats = {"updates": 0}
        count_update(counters, applied=False)
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
                   columns=min(8, s.k * branches(config))
                   ).save(out / "images" / f"epoch_{epoch + 1:05d}.png")
    return metrics


def update(config, accelerator, train_policy, optimizer, trainable, estimator, traj, embeds, uncond, advantages,
           selected, steps, train_gen, counters) -> dict:
    """Inner epochs x minibatches of optimizer steps; each step averages the loss over its (sample, step) pairs."""
    t = config.train
    steps_per_sample = max(1, math.ceil(t.timestep_fraction * len(steps)))
    sums = {"loss": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0, "ratio_mean": 0.0, "grad_norm": 0.0}
    updates = applied = 0
    for _ in range(t.inner_epochs):
        order = selected[torch.randperm(len(selected), generator=train_gen)]
        for minibatch in torch.tensor_split(order, minibatches(config)):
            # A random subset of the trainable steps for each sample (DDPO's timestep_fraction).
            step_choice = torch.stack([steps[torch.randperm(len(steps), generator=train_gen)[:steps_per_sample]]
                                       for _ in range(len(minibatch))]) if len(minibatch) else None
            pair_sample = minibatch.repeat_interleave(steps_per_sample)
            pair_step = step_choice.reshape(-1) if step_choice is not None else torch.zeros(0, dtype=torch.long)
            weight_all = 1.0
            if len(pair_sample) == 0:
                # Keep collectives aligned across ranks: one zero-weighted pair.
                pair_sample, pair_step, weight_all = torch.zeros(1, dtype=torch.long), steps[:1], 0.0
            chunks = list(zip(pair_sample.split(t.chunk_size), pair_step.split(t.chunk_size)))
            step = dict.fromkeys(("loss", "approx_kl", "clip_fraction", "ratio_mean"), 0.0)
            for i, (ps, pt) in enumerate(chunks):
                sync = i == len(chunks) - 1
                with accelerator.no_sync(train_policy.unet) if not sync else nullcontext():
                    terms = pair_loss(accelerator, train_policy, estimator, traj, embeds, uncond, advantages, ps, pt,
                                      t.clip_range)
                    # backward even on a non-finite loss: every rank must reach DDP's gradient all-reduce
                    accelerator.backward(terms.loss * (weight_all * len(ps) / len(pair_sample)))
                for key in step:
                    step[key] += float(getattr(terms, key).detach()) * len(ps) / len(pair_sample)
            grad_norm = accelerator.clip_grad_norm_(list(trainable.values()), t.max_grad_norm)
            # A non-finite loss or gradient never reaches the weights (nor AdamW's moments).
            finite = step_is_finite(accelerator, math.isfinite(step["loss"]), grad_norm)
            if finite:
                optimizer.step()
                for key, value in step.items():
                    sums[key] += value
                sums["grad_norm"] += float(grad_norm)
                applied += 1
            count_update(counters, applied=finite)
            optimizer.zero_grad(set_to_none=True)
            updates += 1
    return {k: v / max(applied, 1) for k, v in sums.items()} | {"updates": applied}


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
    error = None
    if accelerator.is_main_process:
        state = {"counters": dict(counters), "tracker": tracker.state_dict(), "history": history.state_dict(),
                 "prompt_rng": prompt_states, "torch_rng": {"noise": noise_states, "train": train_gen.get_state()}}
        try:
            ckpt.save_checkpoint(out, counters["epoch"], dict(trainable), optimizer.state_dict(), state,
                                 config.run.keep_checkpoints)
            if config.model.lora:
                ckpt.replace_dir(out / "lora", lambda tmp: save_lora(unet, tmp))
            else:
                ckpt.replace_dir(out / "unet", lambda tmp: unet.save_pretrained(tmp, safe_serialization=True))
        except RunHalted as err:  # disk full: every rank must hear of it, or they would wait here forever
            error = err
    _, failed = agree(accelerator, 0, error is not None)  # also the barrier after the write
    if failed:
        raise error or RunHalted(f"the main process could not write checkpoint {ckpt.checkpoint_path(out, counters['epoch'])}")


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
