"""The state of a training run: built once (`start_run`), checkpointed (`save`) and restored (`restore`).

`RunState` holds everything an epoch reads or changes: the pipeline, the policy and its optimizer, the
prompt source and rewards, the three random streams, the DDIM schedule, the statistics and counters.
A checkpoint stores the parts that change (trainable weights, AdamW state, the learning-rate schedule's
position, RNG states, statistics, counters); the rest is rebuilt from config.yaml, so a resumed run
continues bit for bit.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object

from diffrl import checkpoint as ckpt
from diffrl.config import (LR_SCHEDULES, RESUMABLE_KEYS, Config, check_device, frozen_torch_dtype,
                           images_per_epoch, inner_epochs, load_config, minibatches, resume_conflicts, total_updates,
                           validate, with_resolved_defaults)
from diffrl.core import b2 as b2core
from diffrl.core.advantages import PerPromptStatTracker
from diffrl.core.ddim import trained_steps
from diffrl.core.losses import noise_aware_step_weights
from diffrl.core.estimators import ESTIMATORS, Estimator
from diffrl.errors import DiffrlError, RunHalted
from diffrl.evaluation import eval_reward_names
from diffrl.models.pipeline import (add_lora, add_text_encoder_lora, check_text_encoder_trainable, denoiser,
                                    denoiser_name, frozen_modules, image_size, load_pipeline, resolve_model, save_lora)
from diffrl.pretraining_data import ImageFolder, OwnSamples, ShapesRenders, load_pretraining_data
from diffrl.prompts import PromptSource, split_prompts
from diffrl.rewards.base import get_reward, parse_reward_spec
from diffrl.runlog import RunLogger
from diffrl.sampling import FlowPolicy, Policy, PromptEmbeds, encode_prompts, make_policy
from diffrl.update import resolved_clip_range

CONFIG_FILE = "config.yaml"
TEXT_ENCODER_PREFIX = "text_encoder."  # checkpoint names of the text encoder's adapters, beside the UNet's


@dataclass
class RunState:
    """Everything an epoch reads or changes; `start_run` builds it once, checkpoints save and restore it."""

    config: Config
    out: Path  # the run directory
    accelerator: Accelerator
    pipe: Any  # the diffusers pipeline: frozen VAE and text encoder(s); its UNet (SD3: transformer) is trained
    policy: Policy | FlowPolicy  # samples and evaluates with the bare UNet (SD3: transformer)
    train_policy: Policy | FlowPolicy  # trains through the accelerate-wrapped UNet, so DDP syncs the gradients
    # model.train_text_encoder: the accelerate-wrapped pipe.text_encoder (with LoRA) that training chunks encode
    # through, so DDP syncs its gradients too; sampling and evaluation use pipe.text_encoder. None: frozen.
    train_text_encoder: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler  # train.lr_schedule; steps once per applied optimizer step
    trainable: dict[str, torch.nn.Parameter]
    estimator: Estimator
    prompts: PromptSource  # training prompts (without the held-out ones)
    held_out: list | None  # held-out prompts; None: no held-out evaluation
    reward_fn: Any  # the training reward (a WeightedSum of the run.reward parts)
    eval_rewards: dict  # name -> reward, scored on the held-out images; the first is eval_key's
    tracker: PerPromptStatTracker  # ppo's per-prompt reward statistics
    history: b2core.StageRewardHistory  # B2's per-stage rewards for the sibling z-scores
    flat_prompts: set[str]  # prompts whose images all had a zero advantage when last drawn (sample.skip_zero_advantage)
    prompt_rng: np.random.Generator  # prompt sampling, one stream per rank
    noise_gen: torch.Generator  # sampling noise, one stream per rank
    train_gen: torch.Generator  # minibatch order and step subsets, the same on every rank
    timesteps: torch.Tensor  # (T,) DDIM timesteps, descending (SD3: sigmas)
    prev_timesteps: torch.Tensor  # (T,) the timestep each step lands on
    step_stds: torch.Tensor  # (T,) sigma_t: which steps are trained (train.min_noise_std)
    latent_shape: tuple[int, int, int]
    uncond: torch.Tensor | PromptEmbeds  # the empty prompt's embedding (classifier-free guidance)
    # epoch, skipped_updates, nan_rewards, images_seen, consecutive_skips (the skip guard), best_eval:
    # [held-out reward, epoch] (early stop); checkpointed.
    counters: dict
    pretraining_data: ShapesRenders | ImageFolder | OwnSamples | None = None  # train.ptx_data (None: no such loss)
    logger: RunLogger | None = None  # main process only
    saved_epoch: int = 0  # epoch of the newest checkpoint this run wrote or resumed from (0: none)
    save_pending: bool = False  # a checkpoint due while updates were being skipped waits for a clean epoch
    warned: set[str] = field(default_factory=set)  # once-per-run warnings already given

    @property
    def eval_key(self) -> str:
        return f"eval/{next(iter(self.eval_rewards))}"


def use_tf32(enabled: bool) -> None:
    """TF32 for fp32 matrix products and convolutions on GPUs that have it (process-wide torch flags)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def start_run(config: Config, resume: bool) -> RunState:
    """Everything the loop needs, loaded once: prompts, rewards, pipeline, optimizer, RNGs, restored state, logger.

    Mistakes in the prompts, the rewards or the model fail before anything is written.
    """
    validate(config)
    config = with_resolved_defaults(config)
    check_device(config, torch.cuda.is_available())  # adamw8bit, fp16 frozen weights: fail before anything loads
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    deterministic = config.run.deterministic  # by default an op without a deterministic variant warns, not fails
    torch.use_deterministic_algorithms(not torch.cuda.is_available() if deterministic is None else deterministic,
                                       warn_only=deterministic is None)
    use_tf32(config.train.allow_tf32)
    # cpu=True when no GPU: accelerate then runs multi-process CPU jobs (torchrun / accelerate launch) over gloo.
    accelerator = Accelerator(mixed_precision=config.train.mixed_precision, cpu=not torch.cuda.is_available())
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    s, t, r, b = config.sample, config.train, config.run, config.b2
    out = run_directory(config, accelerator)

    # ---- prompts and rewards first: mistakes there fail before the pipeline loads
    prompts = split_prompts(r.prompts, r.eval_prompts)  # run.eval_prompts=auto is resolved here, once
    if r.early_stop_drop is not None and prompts.held_out is None:
        raise DiffrlError(f"run.early_stop_drop needs held-out prompts, and there are none: {prompts.note}")
    reward_fn = parse_reward_spec(r.reward)
    pretraining_data = load_pretraining_data(t.ptx_data, prompts.held_out) if t.ptx_coef else None
    resolve_model(config.model.pretrained)
    prepare_run_dir(out, resume, config)

    # ---- model: frozen pipeline + trainable LoRA (or full UNet)
    # LoRA initialization, identical on every rank
    torch.manual_seed(r.seed if config.model.lora_init_seed is None else config.model.lora_init_seed)
    pipe = load_pipeline(config.model.pretrained, config.model.revision)
    if config.model.train_text_encoder:  # resolved above: a bool
        check_text_encoder_trainable(pipe, config.model.pretrained)
    unet = denoiser(pipe)  # SD3: the transformer
    # train.frozen_dtype ('auto': the mixed-precision dtype on a GPU, fp32 on CPU). Frozen weights in half
    # precision save memory (as DDPO); LoRA adapters stay fp32 (peft 0.21 creates them in the base layer's dtype:
    # cast back below, so the optimizer and its states are fp32).
    weight_dtype = frozen_torch_dtype(config, device.type == "cuda")
    for frozen in frozen_modules(pipe) + ([unet] if config.model.lora else []):
        frozen.to(device) if weight_dtype == torch.float32 else frozen.to(device, weight_dtype)
    if config.model.lora:
        add_lora(unet, config.model.lora_rank, config.model.lora_alpha, config.model.lora_target_modules)
    else:
        unet.requires_grad_(True)
    unet.to(device)
    unet.train()
    if t.gradient_checkpointing:
        unet.enable_gradient_checkpointing()  # diffusers ModelMixin; recomputes activations in backward
    trainable = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    text_encoder = pipe.text_encoder if config.model.train_text_encoder else None
    if text_encoder is not None:
        add_text_encoder_lora(text_encoder, config.model.lora_rank, config.model.lora_alpha)
        text_encoder.eval()  # peft's new layers too: sampling and training must encode alike
        trainable |= {TEXT_ENCODER_PREFIX + n: p for n, p in text_encoder.named_parameters() if p.requires_grad}
    for name, param in trainable.items():
        if param.dtype != torch.float32:  # peft's adapters on a bf16/fp16 base layer
            param.data = param.data.float()
    if t.text_encoder_lr is not None:  # a second parameter group (one otherwise, as older checkpoints hold)
        in_text_encoder = {n: n.startswith(TEXT_ENCODER_PREFIX) for n in trainable}
        params = [{"params": [p for n, p in trainable.items() if not in_text_encoder[n]]},
                  {"params": [p for n, p in trainable.items() if in_text_encoder[n]], "lr": t.text_encoder_lr}]
    else:
        params = list(trainable.values())
    optimizer = make_optimizer(t, params)
    # On the bare optimizer, and not handed to accelerate: its AcceleratedScheduler would step num_processes times
    # per call. Every rank takes every update (the same count, the same skips), so each rank steps its own
    # schedule once per applied update and total_updates(config) is its length on any number of processes.
    lr_scheduler = make_lr_scheduler(config, optimizer)
    # The modules handed to accelerate are the ones whose forward runs in training (the UNet, and a trained text
    # encoder), so DDP syncs their LoRA grads.
    wrapped_text_encoder = None
    if text_encoder is not None:
        wrapped_unet, wrapped_text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    else:
        wrapped_unet, optimizer = accelerator.prepare(unet, optimizer)

    policy = make_policy(pipe, unet, device, s)
    timesteps, prev_timesteps = policy.schedule(pipe.scheduler, s.num_steps, device)
    step_stds = policy.noise_stds(timesteps, prev_timesteps)  # sigma_t per step: which steps are trained
    steps, first_step, _ = epoch_steps(config, step_stds, epoch=0)  # B2's first stage trains the fewest steps
    if not len(steps):
        end_step = min(s.num_steps, t.first_steps or s.num_steps)
        raise DiffrlError(f"no denoising step in [{first_step}, {end_step}) (B2's interval, train.first_steps) "
                          f"has sigma_t >= train.min_noise_std="
                          f"{t.min_noise_std:g}; lower it, or train more steps (sample.num_steps, b2.start_steps)")
    size = image_size(pipe, config.model.resolution)

    run = RunState(
        config=config, out=out, accelerator=accelerator, pipe=pipe, policy=policy,
        train_policy=dataclasses.replace(policy, unet=wrapped_unet), train_text_encoder=wrapped_text_encoder,
        optimizer=optimizer, lr_scheduler=lr_scheduler,
        trainable=trainable, estimator=ESTIMATORS[t.algo], prompts=prompts.train, held_out=prompts.held_out,
        reward_fn=reward_fn,
        eval_rewards={name: get_reward(name) for name in eval_reward_names(config, prompts.held_out)},
        tracker=PerPromptStatTracker(t.stat_buffer_size, t.stat_min_count),
        history=b2core.StageRewardHistory(b.history_stages),
        flat_prompts=set(),
        pretraining_data=pretraining_data,
        **seeded_generators(r.seed, rank),
        timesteps=timesteps, prev_timesteps=prev_timesteps, step_stds=step_stds,
        latent_shape=(unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor),
        uncond=encode_prompts(pipe, [""], device, s.max_sequence_length),  # re-encoded each epoch if trained
        counters={"epoch": 0, "skipped_updates": 0, "nan_rewards": 0, "images_seen": 0, "consecutive_skips": 0,
                  "best_eval": None},
    )
    restored = restore(run) if resume else None
    run.counters.update(restored or {})
    run.saved_epoch = run.counters["epoch"]
    if accelerator.is_main_process:
        write_config(out, config)
        # Resuming drops metrics logged after the restored checkpoint (all of them when there was none yet).
        run.logger = RunLogger(out, r.tensorboard, config.to_dict() if r.wandb else None,
                               resume_step=(run.counters["epoch"] if restored else -1) if resume else None)
        estimator = run.estimator
        print(f"diffrl: {estimator.name} ({estimator.summary}); {images_per_epoch(config) * world} images/epoch "
              f"({world} process(es)), {minibatches(config)} update(s) x {inner_epochs(config)} inner epoch(s)"
              + (f", clip range {resolved_clip_range(config, run.latent_shape):.3g}" if estimator.clipped else "")
              + (f", lr schedule {t.lr_schedule} ({t.lr_warmup_updates} warmup of {total_updates(config)} updates)"
                 if t.lr_schedule != "constant" or t.lr_warmup_updates else "")
              + (f", step weights {format_step_weights(run, steps)} (train.step_weight_power {t.step_weight_power:g})"
                 if t.step_weight_power else "")
              + (", LoRA on the text encoder too" if run.train_text_encoder is not None else "")
              + (f" (lr {t.text_encoder_lr:g})" if t.text_encoder_lr is not None else "")
              + (f", prompts whose last group was flat passed over with p = {s.skip_zero_advantage:g}"
                 if s.skip_zero_advantage else "")
              + (f", pretraining loss x {t.ptx_coef:g} on {t.ptx_batch} images of {t.ptx_data} per update"
                 + (f" (noise levels in [{t.ptx_min_noise:g}, {t.ptx_max_noise:g}))"
                    if (t.ptx_min_noise, t.ptx_max_noise) != (0, 1) else "") if t.ptx_coef else "")
              + f"; run dir {out}")
        if prompts.note:
            print(f"diffrl: {prompts.note}")
    return run


def step_weights(run: RunState, steps: torch.Tensor) -> torch.Tensor | None:
    """train.step_weight_power's weight of each step's surrogate over these trained steps, (T,); None: uniform."""
    power = run.config.train.step_weight_power
    if not power:
        return None
    x0_coefficients = run.policy.x0_coefficients(run.timesteps, run.prev_timesteps)
    return noise_aware_step_weights(run.step_stds, x0_coefficients, steps, power)


def format_step_weights(run: RunState, steps: torch.Tensor) -> str:
    """The trained steps' weights, first to last, for the start message."""
    return "/".join(f"{w:.2g}" for w in step_weights(run, steps)[steps].tolist())


def epoch_steps(config: Config, step_stds: torch.Tensor, epoch: int) -> tuple[torch.Tensor, int, int | None]:
    """(denoising steps trained in `epoch`, the first step of its interval, B2's stage or None).

    B2 trains the last n_s steps of stage s (the interval's first step is the branch point); train.first_steps
    keeps only the early, high-noise steps, where the layout is decided (docs/tuning.md); train.min_noise_std
    drops the near-deterministic ones.
    """
    s, t, b = config.sample, config.train, config.b2
    first_step, end_step, stage = 0, s.num_steps, None
    if b.enabled:
        stage = b2core.stage_of_epoch(epoch, b.epochs_per_stage, b.stages)
        first_step, end_step = b2core.trained_interval(stage, s.num_steps, b.start_steps, b.stages)
    end_step = min(end_step, t.first_steps or end_step)
    return trained_steps(first_step, end_step, step_stds, t.min_noise_std), first_step, stage


def make_optimizer(t, params) -> torch.optim.Optimizer:
    """train.optimizer: torch's AdamW, or bitsandbytes' AdamW8bit (config.check_device made sure it can run), at
    train.learning_rate for parameters or parameter groups that name no lr of their own."""
    kwargs = dict(lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.adam_weight_decay,
                  eps=t.adam_epsilon)
    if t.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def make_lr_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """train.lr_schedule as diffusers' get_scheduler builds it: factor u / W over the first W =
    train.lr_warmup_updates updates, then 1 ('constant'), or down to 0 at update N = total_updates(config) along a
    line ('linear') or a half cosine ('cosine'). Position u counts applied updates; u = 0 is the first update's."""
    from diffusers.optimization import get_scheduler

    t = config.train
    return get_scheduler(LR_SCHEDULES[t.lr_schedule], optimizer, num_warmup_steps=t.lr_warmup_updates,
                         num_training_steps=total_updates(config))


def run_directory(config: Config, accelerator: Accelerator) -> Path:
    """`run.out`, or runs/<date>-<time>-<algo> chosen by the main process and shared with every rank."""
    if config.run.out is None:
        from accelerate.utils import broadcast_object_list

        name = [f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.train.algo}"]
        if accelerator.num_processes > 1:
            broadcast_object_list(name)
        config.run.out = name[0]  # recorded in config.yaml
    return Path(config.run.out)


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


def save(run: RunState) -> None:
    """Checkpoint + export (lora/, or a full fine-tune's unet/ or SD3 transformer/). Every rank reaches the same
    collectives; only the main process writes."""
    accelerator, out, config, counters = run.accelerator, run.out, run.config, run.counters
    prompt_states = gather_object([run.prompt_rng.bit_generator.state]) if accelerator.num_processes > 1 else \
        [run.prompt_rng.bit_generator.state]
    noise_states = gather_object([run.noise_gen.get_state()]) if accelerator.num_processes > 1 else \
        [run.noise_gen.get_state()]
    accelerator.wait_for_everyone()
    error = None
    if accelerator.is_main_process:
        state = {"counters": dict(counters), "tracker": run.tracker.state_dict(), "history": run.history.state_dict(),
                 "flat_prompts": sorted(run.flat_prompts),
                 "prompt_rng": prompt_states, "torch_rng": {"noise": noise_states, "train": run.train_gen.get_state()},
                 "lr_scheduler": run.lr_scheduler.state_dict()}  # the same on every rank
        unet = run.policy.unet
        try:
            ckpt.save_checkpoint(out, counters["epoch"], dict(run.trainable), run.optimizer.state_dict(), state,
                                 config.run.keep_checkpoints)
            if config.model.lora:
                text_encoder = run.pipe.text_encoder if run.train_text_encoder is not None else None
                ckpt.replace_dir(out / "lora", lambda tmp: save_lora(unet, tmp, text_encoder))
            else:
                # Under the pipeline's own name (unet/, SD3's transformer/), as diffusers lays out a pipeline.
                ckpt.replace_dir(out / denoiser_name(run.pipe),
                                 lambda tmp: unet.save_pretrained(tmp, safe_serialization=True))
        except RunHalted as err:  # disk full: every rank must hear of it, or they would wait here forever
            error = err
    _, failed = agree(accelerator, 0, error is not None)  # also the barrier after the write
    if failed:
        raise error or RunHalted(f"the main process could not write checkpoint {ckpt.checkpoint_path(out, counters['epoch'])}")
    run.saved_epoch = counters["epoch"]


def restore(run: RunState) -> dict | None:
    """Load the newest readable checkpoint into the live objects; returns its counters (None: no checkpoint yet)."""
    found = ckpt.load_latest(run.out)
    if found is None:
        return None  # killed before its first checkpoint: the run starts over, from the same seed
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    path, (weights, optimizer_state, state) = found
    if len(state["prompt_rng"]) != world:
        raise DiffrlError(f"{path} was written by {len(state['prompt_rng'])} process(es); resume with the same number "
                          f"(this launch has {world})")
    trainable = run.trainable
    mismatch = sorted(set(weights) ^ set(trainable)) or [n for n, p in trainable.items() if weights[n].shape != p.shape]
    if mismatch:
        saved_text_encoder = any(name.startswith(TEXT_ENCODER_PREFIX) for name in weights)
        hint = (f"; it was trained {'with' if saved_text_encoder else 'without'} text-encoder adapters: resume with "
                f"--set model.train_text_encoder={str(saved_text_encoder).lower()}"
                if saved_text_encoder != (run.train_text_encoder is not None) else "")
        raise DiffrlError(f"{path} does not match this model's trainable weights (e.g. {mismatch[0]}); cannot resume"
                          + hint)
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(weights[name])
    run.optimizer.load_state_dict(optimizer_state)  # its param groups hold the learning rate the schedule last set
    if "lr_scheduler" in state:
        run.lr_scheduler.load_state_dict(state["lr_scheduler"])
    # else: a checkpoint from before train.lr_schedule. Its run had the constant schedule without warmup (its
    # config.yaml lacks both keys, so they load at their defaults, and resume_conflicts refuses to change them),
    # whose factor is 1 at every update: the fresh scheduler just starts counting at this resume, at update 0.
    run.tracker.load_state_dict(state["tracker"])
    run.history.load_state_dict(state["history"])
    run.flat_prompts = set(state.get("flat_prompts", ()))  # absent from checkpoints older than the key
    set_rng_states(run, (state["prompt_rng"][rank], state["torch_rng"]["noise"][rank], state["torch_rng"]["train"]))
    return state["counters"]


def seeded_generators(seed: int, rank: int) -> dict:
    """A new run's random streams: prompt sampling and sampling noise (one stream per rank), and the training
    generator (the same on every rank)."""
    return {"prompt_rng": np.random.default_rng([seed, rank]),
            "noise_gen": torch.Generator().manual_seed(seed * 7919 + rank),
            "train_gen": torch.Generator().manual_seed(seed * 104729 + 1)}


def rng_states(run: RunState) -> tuple:
    """(prompt, noise, train) generator states of this rank."""
    return run.prompt_rng.bit_generator.state, run.noise_gen.get_state(), run.train_gen.get_state()


def set_rng_states(run: RunState, states: tuple) -> None:
    run.prompt_rng.bit_generator.state = states[0]
    run.noise_gen.set_state(states[1])
    run.train_gen.set_state(states[2])


def agree(accelerator, signum: int, flag: bool) -> tuple[int, bool]:
    """One decision for every rank: the largest pending signal number and whether any rank raised `flag`.

    A signal may reach a single process (Ctrl-C in one terminal, a per-process OOM killer warning);
    without this, that rank would stop at a collective the others never reach.
    """
    if accelerator.num_processes == 1:
        return signum, flag
    votes = accelerator.gather(torch.tensor([[float(signum), float(flag)]], device=accelerator.device)).cpu()
    return int(votes[:, 0].max()), bool(votes[:, 1].max() > 0)


def newest_checkpoint(out: Path) -> str:
    newest = ckpt.list_checkpoints(out)
    return f"newest checkpoint {newest[-1]}" if newest else "no checkpoint yet"
