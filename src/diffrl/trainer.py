"""The training loop, top to bottom: sample, reward, advantages, update, log, checkpoint.

One epoch = `sample.batches_per_epoch` batches of `sample.prompts_per_batch` prompts x K
images (x B branches with B2) per process, then the update (`diffrl.update`): `train.inner_epochs`
passes of `minibatches` optimizer updates over the (sample, denoising step) pairs.
Everything the loop reads or changes lives in one `RunState`, built once by `start_run`.
Distributed runs go through accelerate: each process samples whole prompt groups, rewards
are gathered so per-prompt statistics see every sample, and each rank trains its own slice.
"""
from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from diffrl import checkpoint as ckpt
from diffrl.config import Config, branches, sampling_chunk_size
from diffrl.core import b2 as b2core
from diffrl.core.estimators import compute_advantages
from diffrl.core.prompt_filter import draw_skipping_flat, flat_prompts, update_flat_set
from diffrl.errors import RewardUnavailable, RunHalted, RunInterrupted
from diffrl.evaluation import eval_reward_names, generate_fixed_seed, score_images
from diffrl.models.pipeline import lora_merged
from diffrl.pretraining_data import OwnSamples
from diffrl.rewards.base import check_rewards
from diffrl.run_state import (CONFIG_FILE, RunState, agree, epoch_steps, newest_checkpoint, restore, save,
                              set_rng_states, rng_states, start_run, step_weights, write_config)
from diffrl.runlog import finish_report, image_grid
from diffrl.sampling import Trajectories, cat_embeds, encode_prompts, sample_trajectories
from diffrl.update import Batch, count_update, pair_loss, resolved_clip_range, update

# Also reached through this module: tests swap trainer.run_epoch / trainer.pair_loss, benchmarks trainer.save.
__all__ = ["CONFIG_FILE", "RunState", "train", "run_epoch", "pair_loss", "update", "save", "restore",
           "eval_reward_names", "write_config"]

# Before the first step of an epoch the ratios are 1 up to arithmetic: a few 1e-6 in fp32 on CPU. A quarter of the
# clip range is far above that and far below where the clip's share of the pairs is decided.
ONPOLICY_DEV_LIMIT = 0.25


def train(config: Config, resume: bool = False) -> Path:
    """Run (or resume) RL fine-tuning as configured; returns the run directory."""
    run = start_run(config, resume)
    r, counters = config.run, run.counters
    counters.pop("stopped_early", None)  # a resumed early-stopped run is training again
    bar = None
    try:
        if counters["epoch"] == 0:
            before = evaluate(run, "before")
            track_eval(counters, before, run.eval_key, 0, r.early_stop_drop)
            if run.logger is not None:
                run.logger.log(before, epoch=0)
        bar = tqdm(total=r.epochs, initial=counters["epoch"],
                   disable=not (r.progress and run.accelerator.is_main_process), desc="epochs", dynamic_ncols=True)
        with StopRequested() as stop:
            for epoch in range(counters["epoch"], r.epochs):
                metrics = run_epoch(epoch, run)  # sample, reward, advantages, update
                counters["epoch"] = epoch + 1
                warn_about_trust_region(run, metrics)
                if r.eval_every and (epoch + 1) % r.eval_every == 0 or epoch + 1 == r.epochs:
                    metrics.update(evaluate(run, "after" if epoch + 1 == r.epochs else f"{epoch + 1:05d}"))
                collapse = track_eval(counters, metrics, run.eval_key, epoch + 1, r.early_stop_drop)
                if run.logger is not None:
                    run.logger.log(metrics, epoch=epoch + 1)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", img_s=f"{metrics['images_per_s']:.1f}")
                if not guard_and_checkpoint(run, stop.signal or 0, collapse):
                    break
    except (RunHalted, RunInterrupted):  # raised on every rank alike (agreed): leave the process group together
        leave_together(run)
        raise
    finally:
        if bar is not None:
            bar.close()
        if run.logger is not None:
            run.logger.close()
    if run.logger is not None:
        finish_report(run.out)
    leave_together(run)
    return run.out


def leave_together(run: RunState) -> None:
    """Barrier, then tear the process group down on every rank: a rank that exits while its peer still holds
    gloo connections can abort in the peer's destructor (SIGABRT instead of the agreed exit code).

    The DDP wrappers go first. Their reducer holds the process group, and if it is the last holder, gloo's
    destructor joins its worker threads with the GIL held; a worker still freeing a collective's Python tensor waits
    for the GIL, and the rank hangs after its work is done (pytorch/pytorch#56297; seen under CPU contention). Freed
    by destroy_process_group instead, the group is destroyed with the GIL released."""
    run.accelerator.wait_for_everyone()
    run.train_policy, run.train_text_encoder = run.policy, None  # the run is over: nothing trains through them
    run.accelerator.free_memory()  # accelerate's own references to the wrappers, then a garbage collection
    run.accelerator.end_training()


def run_epoch(epoch: int, run: RunState) -> dict:
    """One epoch: sample, reward, advantages, update. Returns its metrics."""
    start = time.perf_counter()
    rng_at_start = rng_states(run)  # what a reward outage checkpoints: nothing else changes before the reward
    steps, branch_step, metrics = steps_of_epoch(run, epoch)
    traj, embeds, texts, metas = sample_epoch(run, branch_step, metrics)
    sampled = time.perf_counter()
    rewards = score(run, epoch, traj.images, texts, metas, rng_at_start)
    rewarded = time.perf_counter()
    all_rewards, all_adv, keep = advantages(run, rewards, texts, metrics)
    finite = np.isfinite(all_rewards)
    if finite.any():
        rank, device = run.accelerator.process_index, run.accelerator.device
        mine = slice(rank * len(traj), (rank + 1) * len(traj))  # this rank's slice of the gathered samples
        if isinstance(run.pretraining_data, OwnSamples):  # train.ptx_data=own_samples: this epoch's winners
            winners = np.flatnonzero(keep[mine] & (all_adv[mine] > 0))
            run.pretraining_data.refill([texts[i] for i in winners], traj.latents[torch.from_numpy(winners), -1])
        batch = Batch(traj, embeds, advantages=torch.as_tensor(all_adv[mine], dtype=torch.float32, device=device),
                      selected=torch.nonzero(torch.as_tensor(keep[mine])).reshape(-1), steps=steps,
                      prompts=texts[::run.config.sample.k * branches(run.config)],  # sampling's sample layout
                      step_weights=step_weights(run, steps))
        metrics.update(update(run, batch, loss_fn=pair_loss))  # this module's pair_loss: tests swap it
    else:  # not one finite reward on any rank: nothing to learn from; counts as one skipped update
        metrics["updates"] = 0
        count_update(run.counters, applied=False)
    trained = time.perf_counter()

    valid, counters = all_rewards[finite], run.counters
    metrics.update({
        "reward_mean": float(valid.mean()) if valid.size else float("nan"),
        "reward_std": float(valid.std()) if valid.size else float("nan"),
        "advantage_mean": float(all_adv[keep].mean()) if keep.any() else 0.0,
        "advantage_std": float(all_adv[keep].std()) if keep.any() else 0.0,
        "nan_rewards_total": counters["nan_rewards"], "skipped_updates_total": counters["skipped_updates"],
        "images_seen": counters["images_seen"],
        "lr": run.lr_scheduler.get_last_lr()[0],  # after the epoch's updates: the next update's learning rate
        "sample_s": sampled - start, "reward_s": rewarded - sampled, "train_s": trained - rewarded,
        "images_per_s": len(all_rewards) / (trained - start),
        **extra_metrics(run),
    })
    if run.logger is not None and ((epoch + 1) % run.config.run.image_every == 0 or epoch == 0):
        save_grid(run, traj.images, [f"{text} {reward:.2f}" for text, reward in zip(texts, rewards)],
                  f"epoch_{epoch + 1:05d}.png")
    return metrics


def guard_and_checkpoint(run: RunState, signum: int, collapse: str | None) -> bool:
    """After an epoch is logged: the skip guard, signals, the early stop and the checkpoint. False: stop now."""
    counters, config, out = run.counters, run.config, run.out
    epoch, done = counters["epoch"], counters["epoch"] == config.run.epochs
    if counters["consecutive_skips"] >= config.train.max_consecutive_skips:  # same count on every rank
        raise RunHalted(halt_message(out, counters))  # no save: the newest checkpoint predates the fault
    signum, collapse_flag = agree(run.accelerator, signum, collapse is not None)
    stopping = done or signum or collapse_flag
    due = stopping or epoch % config.run.save_every == 0 or run.save_pending
    if collapse_flag and not done:
        counters["stopped_early"] = collapse or "another process stopped early"  # `diffrl report` reads it back
    run.save_pending = bool(due and not stopping and counters["consecutive_skips"])
    if due and not run.save_pending:
        save(run)
    if collapse_flag and not done:
        run.accelerator.print(f"diffrl: early stop after epoch {epoch}: {collapse}")
        return False
    if signum and not done:
        raise RunInterrupted(f"{signal.Signals(signum).name} after epoch {epoch}; checkpoint "
                             f"{ckpt.checkpoint_path(out, epoch)} written; resume with: "
                             f"diffrl train --resume {out}", signum)
    return True


# --------------------------------------------------------------------------- the steps of an epoch


def steps_of_epoch(run: RunState, epoch: int) -> tuple[torch.Tensor, int | None, dict]:
    """The denoising steps trained this epoch (`run_state.epoch_steps`), B2's branch point (None: no
    branching) and B2's metrics."""
    steps, first_step, stage = epoch_steps(run.config, run.step_stds, epoch)
    metrics: dict = {"trained_steps": len(steps)}
    branch_step = None
    if stage is not None:
        b, num_steps = run.config.b2, run.config.sample.num_steps
        branch_step = first_step if b.branches > 1 else None
        metrics.update({"b2/stage": stage, "b2/first_trained_step": first_step,
                        "b2/trained_steps": b2core.trained_step_count(stage, num_steps, b.start_steps, b.stages)})
    return steps, branch_step, metrics


def sample_epoch(run: RunState, branch_step: int | None, metrics: dict
                 ) -> tuple[Trajectories, torch.Tensor, list[str], list[dict]]:
    """All batches of one epoch: (trajectories, prompt embeddings (P_total, L, D), texts, metadata) per sample.
    Records in `metrics` how many drawn prompts sample.skip_zero_advantage passed over."""
    s = run.config.sample
    per_prompt = s.k * branches(run.config)
    parts, embeds, texts, metas = [], [], [], []
    offset = passed_over = 0
    run.policy.unet.eval()
    with run.accelerator.autocast(), lora_merged(run.policy.unet, s.merge_lora):
        if run.train_text_encoder is not None:  # guidance's empty prompt under this epoch's text encoder
            run.uncond = encode_prompts(run.pipe, [""], run.accelerator.device)
        for _ in range(s.batches_per_epoch):
            batch, passed = draw_skipping_flat(lambda n: run.prompts.sample(run.prompt_rng, n), s.prompts_per_batch,
                                               run.flat_prompts, s.skip_zero_advantage, run.prompt_rng)
            passed_over += passed
            prompt_embeds = encode_prompts(run.pipe, [p for p, _ in batch], run.accelerator.device,
                                           s.max_sequence_length)
            traj = sample_trajectories(run.policy, run.pipe.vae, prompt_embeds, run.uncond, s.k, run.timesteps,
                                       run.prev_timesteps, run.latent_shape, run.noise_gen, branch_step=branch_step,
                                       branches=branches(run.config),
                                       chunk_size=sampling_chunk_size(s, run.accelerator.device.type == "cuda"))
            traj.prompt_index = traj.prompt_index + offset
            offset += len(batch)
            parts.append(traj)
            embeds.append(prompt_embeds)
            texts += [p for p, _ in batch for _ in range(per_prompt)]
            metas += [m for _, m in batch for _ in range(per_prompt)]
    run.policy.unet.train()
    if s.skip_zero_advantage:
        metrics.update({"prompts_passed_over": passed_over, "flat_prompts": len(run.flat_prompts)})
    first = parts[0]
    merged = Trajectories(
        latents=torch.cat([p.latents for p in parts]), log_probs=torch.cat([p.log_probs for p in parts]),
        timesteps=first.timesteps, prev_timesteps=first.prev_timesteps,
        prompt_index=torch.cat([p.prompt_index for p in parts]), images=np.concatenate([p.images for p in parts]),
    )
    return merged, cat_embeds(embeds), texts, metas


def score(run: RunState, epoch: int, images: np.ndarray, texts: list[str], metas: list[dict],
          rng_at_start: tuple) -> np.ndarray:
    """The training reward of this rank's samples. A reward server that went away halts the run (exit 3)
    with a checkpoint of the epoch's starting point, so `--resume` redoes this epoch once it is back."""
    error = None
    try:
        rewards = check_rewards(run.reward_fn(images, texts, metas), len(images), run.config.run.reward)
    except RewardUnavailable as err:
        error = err
    _, failed = agree(run.accelerator, 0, error is not None)  # every rank halts, or none
    if failed:
        set_rng_states(run, rng_at_start)  # weights, optimizer and statistics are untouched until the reward
        where = newest_checkpoint(run.out)
        # No checkpoint while updates are being skipped (as for the skip guard), nor a second one of an epoch.
        if run.counters["epoch"] != run.saved_epoch and not run.counters["consecutive_skips"]:
            save(run)
            where = f"checkpoint {ckpt.checkpoint_path(run.out, epoch)} written (the state before epoch {epoch + 1})"
        raise RunHalted(f"the reward failed in epoch {epoch + 1}: {error or 'on another process'}; {where}; "
                        f"once it answers again: diffrl train --resume {run.out}")
    return rewards


def advantages(run: RunState, rewards: np.ndarray, texts: list[str], metrics: dict) -> tuple:
    """Rewards gathered from every rank, their advantages over whole groups (K per prompt, or B2's B siblings),
    and which samples to train on (finite reward; B2's z-score selection). Counts NaN rewards and images, and
    records which prompts had a zero advantage on every image (sample.skip_zero_advantage)."""
    s, t, b, accelerator = run.config.sample, run.config.train, run.config.b2, run.accelerator
    all_rewards = accelerator.gather(torch.as_tensor(rewards, device=accelerator.device)).cpu().numpy()
    all_texts = gather_object(texts) if accelerator.num_processes > 1 else texts
    finite = np.isfinite(all_rewards)
    run.counters["nan_rewards"] += int((~finite).sum())
    run.counters["images_seen"] += len(all_rewards)
    group_size = b.branches if b.enabled else s.k  # B2: siblings form the group
    all_adv = compute_advantages(run.estimator, all_rewards, all_texts, group_size, run.tracker, t.loo_std,
                                 t.adv_clip_max)
    if s.skip_zero_advantage:
        update_flat_set(run.flat_prompts, flat_prompts(all_texts, all_adv))  # the same on every rank
    keep = finite.copy()
    if b.enabled and b.selection == "zscore":
        run.history.add(metrics["b2/stage"], all_texts, all_rewards)
        z = run.history.zscores(all_texts, all_rewards).reshape(-1, b.branches)
        keep &= b2core.select_siblings(torch.as_tensor(z), b.z_threshold).reshape(-1).numpy()
        metrics["b2/selected"] = int(keep.sum())
    return all_rewards, all_adv, keep


def extra_metrics(run: RunState) -> dict:
    """Per-part rewards of a weighted reward, and (several processes) the spread of the replicas' weights."""
    metrics = {}
    parts = getattr(run.reward_fn, "last_components", {})
    if len(parts) > 1:
        metrics.update({f"reward/{name}": float(np.nanmean(values)) for name, values in parts.items()})
    if run.accelerator.num_processes > 1:
        # Replicas must stay identical; a spread above 0 means gradients were not synchronized.
        checksum = torch.stack([p.detach().double().sum() for p in run.trainable.values()]).sum().reshape(1)
        sums = run.accelerator.gather(checksum.to(run.accelerator.device))
        metrics["dist/param_spread"] = float(sums.max() - sums.min())
    return metrics


def save_grid(run: RunState, images: np.ndarray, captions: list[str], name: str) -> None:
    """The first 16 images of an epoch, K (x B) to a row, as images/NAME."""
    (run.out / "images").mkdir(exist_ok=True)
    n = min(16, len(images))
    image_grid(images[:n], captions[:n], columns=min(8, run.config.sample.k * branches(run.config))
               ).save(run.out / "images" / name)


def evaluate(run: RunState, tag: str) -> dict:
    """Held-out metrics eval/<reward> on fixed seeds (nothing without held-out prompts); saves eval_<tag>.png."""
    if run.held_out is None:
        return {}
    r = run.config.run
    run.policy.unet.eval()
    with run.accelerator.autocast(), lora_merged(run.policy.unet, run.config.sample.merge_lora):
        images, texts, metas = generate_fixed_seed(run.pipe, run.policy, run.held_out, r.eval_images_per_prompt,
                                                   r.seed, run.config.sample.num_steps, run.latent_shape,
                                                   max_sequence_length=run.config.sample.max_sequence_length,
                                                   chunk_size=sampling_chunk_size(run.config.sample,
                                                                                  run.accelerator.device.type == "cuda"))
    run.policy.unet.train()
    error = None
    try:
        scores = score_images(images, texts, metas, run.eval_rewards)
    except RewardUnavailable as err:
        error = err
    if agree(run.accelerator, 0, error is not None)[1]:  # no checkpoint: the newest one predates this evaluation
        raise RunHalted(f"the reward failed in the held-out evaluation {tag}: {error or 'on another process'}; "
                        f"{newest_checkpoint(run.out)}; once it answers again: diffrl train --resume {run.out}")
    if run.logger is not None:
        (run.out / "images").mkdir(exist_ok=True)
        shown = slice(0, None, r.eval_images_per_prompt)  # first image of each prompt
        captions = [f"{p} {next(iter(scores.values()))[i]:.2f}" for i, p in enumerate(texts)][shown]
        image_grid(images[shown][:32], captions[:32], columns=8).save(run.out / "images" / f"eval_{tag}.png")
    return {f"eval/{k}": v for k, v in {n: float(np.nanmean(v)) for n, v in scores.items()}.items()}


def warn_about_trust_region(run: RunState, metrics: dict) -> None:
    """Once per run each: a trust region that never acts makes PPO plain REINFORCE; one that acts on ratios the
    arithmetic moved (sampling and training log-probs differ before any step) clips noise, not policy change."""
    if not run.estimator.clipped or not metrics.get("updates", 0):  # all-skipped epochs say nothing of the clip
        return
    clip_range = resolved_clip_range(run.config, run.latent_shape)
    if metrics.get("clip_fraction") == 0 and "clip_idle" not in run.warned:
        run.warned.add("clip_idle")
        run.accelerator.print(clip_idle_message(run.counters["epoch"], metrics, clip_range,
                                                run.config.train.learning_rate))
    drift = metrics.get("ratio_onpolicy_dev", 0.0)
    if drift > ONPOLICY_DEV_LIMIT * clip_range and "onpolicy_dev" not in run.warned:
        run.warned.add("onpolicy_dev")
        run.accelerator.print(
            f"diffrl: warning: before any update in epoch {run.counters['epoch']} the importance ratios already "
            f"reach 1 +- {drift:.3g}, {drift / clip_range:.0%} of the clip range {clip_range:.3g}: sampling and "
            "training compute different log-probs (arithmetic, not learning), so the clip acts on rounding; "
            "compute in fp32 (train.mixed_precision=no; on GPUs train.allow_tf32=false)")


def clip_idle_message(epoch: int, metrics: dict, clip_range: float, learning_rate: float) -> str:
    """The never-clipped warning; an annealed schedule's last epochs are expected to move too little to clip."""
    if metrics.get("lr", learning_rate) < 0.1 * learning_rate:
        why = (f"the step has annealed to {metrics['lr']:.3g} (train.lr_schedule), too small to reach the clip: "
               "expected near the schedule's end")
    else:
        why = ("reuse each batch (train.inner_epochs, train.minibatches > 1) and size the clip range to "
               "sample.logprob_reduce (train.clip_range = none calibrates it; docs/tuning.md)")
    return (f"diffrl: warning: PPO clipping never acted in epoch {epoch}: importance ratios in "
            f"[{metrics['ratio_min']:.6g}, {metrics['ratio_max']:.6g}], clip range {clip_range:.3g}; {why}")


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
    return (f"{counters['consecutive_skips']} updates in a row were skipped (non-finite loss or gradient, or no finite "
            f"reward) at epoch {counters['epoch']}; {newest_checkpoint(out)}; fix the cause (lower "
            f"train.learning_rate, check the reward), then: diffrl train --resume {out}")


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
