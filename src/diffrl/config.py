"""Typed, nested run configuration: defaults, TOML/YAML files, `key=value` overrides, validation.

Defaults run the embedded ShapesWorld demo (LOOP, K = 4, color binding) on a CPU.
`presets/` holds files for published settings (`preset_names()`: DDPO's compressibility run, the LOOP paper's
SD 2.0 setting, Flow-GRPO's SD 3.5 PickScore setting), loaded by name like a file.
Field names follow DDPO's config where it has one (sample.*, train.*).
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffrl.core.estimators import ESTIMATORS
from diffrl.errors import DiffrlError
from diffrl.prompts import AUTO, holds_out_training_prompts

PRESET_DIR = Path(__file__).parent / "presets"


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and its documentation (shown by `diffrl config --help`-style listings)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


BUILTIN_PREFIX = "builtin:"  # a shipped pipeline (diffrl.shapes.BUILTIN_MODELS): every one is a ShapesWorld model
BUILTIN_SHAPES = "builtin:shapes"  # the embedded ShapesWorld pipeline: the default model, and what several defaults follow
BUILTIN_SHAPES_SPATIAL = "builtin:shapes-spatial"  # the shipped base of the spatial-relation studies (docs/shapesworld.md)
BUILTIN_SHAPES_SPATIAL2 = "builtin:shapes-spatial2"  # its rebuild with more room, the base of the spatial command (docs/tuning.md 33)


@dataclass
class ModelConfig:
    pretrained: str = opt(BUILTIN_SHAPES, f"Pipeline to fine-tune: a local diffusers directory, a hub id, {BUILTIN_SHAPES}, {BUILTIN_SHAPES_SPATIAL} or {BUILTIN_SHAPES_SPATIAL2} (ShapesWorld's bases for spatial relations).")
    revision: str | None = opt(None, "Hub revision of the pretrained pipeline.")
    lora: bool = opt(True, "Train LoRA adapters (True) or the whole denoiser, SD's UNet or SD3's transformer (False), exported with save_pretrained to RUN/unet/ or RUN/transformer/ (its name in a diffusers pipeline), which `diffrl evaluate --lora RUN` loads.")
    lora_rank: int = opt(4, "LoRA rank.")
    lora_alpha: float = opt(4.0, "LoRA alpha (scale = alpha / rank).")
    lora_init_seed: int | None = opt(None, "Seed of the LoRA adapters' initialization (peft's Gaussian A matrices; B starts at 0). None: run.seed. A rank-r adapter changes each layer only within the span of its A, which barely moves in training (docs/tuning.md, section 39), so runs with different initializations change the model in nearly orthogonal subspaces; runs that share it differ only in their sampling. On ShapesWorld's spatial preset, runs sharing it change the model 8x more alike and average (`diffrl soup`) no better than runs with their own (docs/tuning.md, section 42).")
    lora_target_modules: list[str] = opt(["to_k", "to_q", "to_v", "to_out.0"], "Modules of the UNet (SD3: the transformer) that get LoRA adapters (peft target_modules: names or dotted-name suffixes). Convolutions and feed-forward layers work too (e.g. conv1, conv2, proj_in, proj_out, ff.net.0.proj, ff.net.2 on SD 1.x/2.x UNets); RUN/lora/ keeps peft's key names, which diffusers' load_lora_weights restores for every module type. A name that matches no module stops the run with an error.")
    resolution: int | None = opt(None, "Image size in pixels; default: the UNet's sample size x the VAE's scale factor.")
    train_text_encoder: bool | None = opt(None, "Also train LoRA adapters on the CLIP text encoder's attention projections (q_proj, k_proj, v_proj, out_proj), with model.lora_rank and model.lora_alpha; SD 1.x/2.x pipelines with a CLIP text encoder (the only kind whose adapters diffusers' load_lora_weights restores) and model.lora = true only. Every training chunk re-encodes its prompts and the empty prompt with gradient, so the importance ratio compares the current text encoder + UNet with the ones that sampled; the empty prompt is re-encoded for guidance before each epoch's sampling, and RUN/lora/ holds both sets of adapters (diffusers' load_lora_weights restores them). On ShapesWorld color binding, whose failures are attribute leakage (both objects in one color), it reached by epoch 15 what UNet-only LoRA reaches by epochs 30-40 (four seeds), and ended at the same level (docs/tuning.md, section 8; reward fine-tuning of the text encoder: TextCraftor, Li et al., CVPR 2024). None (default): on for the built-in ShapesWorld models (builtin:shapes, builtin:shapes-spatial) with LoRA, where the 20-epoch demo reaches with it about what UNet-only LoRA reaches in 35 epochs, in 57% of the time (docs/tuning.md, section 18); off for every other pipeline. A run's config.yaml records the resolved value, so a resumed run trains what it trained whatever the default is then.")


@dataclass
class SampleConfig:
    num_steps: int = opt(10, "DDIM denoising steps T per image (DDPO: 50; ShapesWorld: 10 samples as well as 20 at half the cost).")
    eta: float = opt(1.0, "DDIM eta; > 0 makes each step a Gaussian policy.")
    guidance_scale: float = opt(3.0, "Classifier-free guidance weight w (DDPO: 5.0).")
    k: int = opt(4, "Images per prompt K (the leave-one-out / group size).")
    prompts_per_batch: int = opt(64, "Prompts per sampling batch, per process (drawn with replacement). 64 x K = 4: 256 images per epoch, 16 updates of 16 (docs/tuning.md).")
    batches_per_epoch: int = opt(1, "Sampling batches per epoch, per process.")
    skip_zero_advantage: float = opt(0.0, "Probability of passing over a drawn training prompt whose images all had a zero advantage the last time it was drawn (under loop, grpo and reinforce-loo: every image got the same reward), drawing another prompt in its place. Such a group adds nothing to the gradient without a KL penalty but costs its sampling; a skipped prompt is still drawn with probability 1 - p each time, so one that starts to teach again comes back. Selective rollouts as in GRESO (Zheng et al., 2025). 0: off (every draw is sampled); must be < 1. docs/tuning.md, section 34.")
    logprob_reduce: str = opt("mean", "Reduce the step log-density over latent dims by 'mean' (DDPO) or 'sum'.")
    flow_noise_level: float = opt(0.7, "Flow models (SD3) only: noise level a of Flow-GRPO's SDE sampler, step noise std a * sqrt(sigma / (1 - sigma)) * sqrt(sigma - sigma_next); > 0 makes each step a Gaussian policy (Flow-GRPO: 0.7). sample.eta is the DDIM models' counterpart.")
    chunk_size: int | None = opt(None, "At most this many images per denoiser call while sampling; each step's noise is drawn for the whole batch before it is split, so the chunks change no sample (bit for bit at 64, 128 and 256 on the CPU measured; up to floating-point rounding elsewhere). None: 64 on CPU, where the spatial preset's 1,024 images sampled 1.53x faster than in one call per step (two processes, one thread each, as the spatial pair runs) and the demo's 256 images 1.14x faster (one process, two threads; benchmarks/sampling_chunks.py, docs/performance.md); a whole batch per call on a GPU.")
    merge_lora: bool = opt(False, "Sample (and run the held-out evaluation) with the LoRA adapters merged into the base weights, W + (alpha / r) B A, and the base weights copied back afterwards, bit for bit: the same policy without the adapters' extra calls in every denoiser step (ShapesWorld's spatial command: sampling 1.5x faster with adapters on the convolutions and feed-forward layers too, 1.2x with attention adapters alone; docs/tuning.md section 64, benchmarks/merged_sampling.py). Holds a copy of the adapted layers' weights while sampling. The sampled log-probs then differ from the training forward's by floating-point rounding (ratio_onpolicy_dev in metrics.jsonl: at most 3.6e-7 there). Needs fp32 frozen weights (train.frozen_dtype); LoRA only, ignored under full fine-tuning.")
    max_sequence_length: int = opt(256, "SD3-style pipelines only (ignored by SD 1.x/2.x, whose CLIP encoder has a fixed 77 tokens): the T5 tokens every prompt is padded or truncated to (StableDiffusion3Pipeline.encode_prompt's max_sequence_length; diffusers' default 256, Flow-GRPO: 128). The transformer attends to the padding too, so this is part of the policy, and shorter sequences make every transformer call cheaper; prompts longer than this are truncated.")


@dataclass
class TrainConfig:
    algo: str = opt("loop", "Estimator: " + ", ".join(ESTIMATORS) + ".")
    learning_rate: float = opt(1e-3, "AdamW learning rate (DDPO on SD: 3e-4). ShapesWorld, LoRA rank 4, 16 updates of 16 samples per epoch: 1e-3; 3e-3 and 1e-2 drift and lose held-out success even inside the trust region (docs/tuning.md).")
    lr_schedule: str = opt("constant", "Learning-rate schedule over the run's optimizer updates (diffusers' get_scheduler): 'constant' keeps train.learning_rate; 'linear' and 'cosine' (a half cosine) anneal it to 0 at the last update of run.epochs, so that a long run stops drifting (at a fixed step the ShapesWorld demo's held-out success falls again past ~60 epochs; docs/tuning.md). The factor follows the count of applied updates (skipped ones do not advance it); with 'linear' or 'cosine' run.epochs may not change on resume (it sets the schedule's length).")
    lr_warmup_updates: int = opt(0, "Optimizer updates of linear warmup from 0 to train.learning_rate before train.lr_schedule applies (diffusers' convention: the first update has factor 0). Warmup keeps the first updates, taken while AdamW's second-moment estimates rest on few gradients, from moving the weights far. 0: none.")
    text_encoder_lr: float | None = opt(None, "Learning rate of the text encoder's LoRA adapters (model.train_text_encoder), as diffusers' LoRA training scripts' --text_encoder_lr; train.lr_schedule scales it as it scales train.learning_rate. None: train.learning_rate. The text encoder's adapters change every prompt that shares a word (a color's embedding), the UNet's how each is drawn: on ShapesWorld's spatial preset (lr 2e-3) the text encoder at 1e-3 ended level with it and at 4e-3 drifted and lost a third of the held-out gain (docs/tuning.md, section 50).")
    adam_beta1: float = opt(0.9, "AdamW beta1.")
    adam_beta2: float = opt(0.999, "AdamW beta2.")
    adam_weight_decay: float = opt(1e-4, "AdamW weight decay.")
    adam_epsilon: float = opt(1e-8, "AdamW epsilon.")
    inner_epochs: int | None = opt(None, "Passes over each sampled batch; default 1 (reinforce* are on-policy and must use 1). The clipped estimators (ppo, loop, grpo) may reuse samples under their trust region, but on ShapesWorld fresh samples learned more per second than 4 passes over fewer (docs/tuning.md).")
    minibatches: int | None = opt(None, "Optimizer updates per inner epoch; default 1 for reinforce* (on-policy), and for the clipped estimators one update per ~16 samples (samples per epoch // 16, lowered to a divisor; 16 at the defaults): every update after the first is off-policy, so their trust region acts even in one pass (docs/tuning.md).")
    chunk_size: int | None = opt(None, "(sample, timestep) pairs per UNet call in training; gradients accumulate over chunks (the same sums regrouped). None: every pair of a minibatch in one call on CPU, at most 256 (ShapesWorld, K = 8, 2 threads: training 1.2-1.5x faster than 32 pairs per call; REINFORCE's 2,048-pair minibatch 3.5x slower in one call than in chunks of 64-256; docs/performance.md), 8 on a GPU. Activation memory grows with it: on SD 2.x at 512px (bf16, LoRA) 8 peaks at 19.6 GB and 32 at 71 GB on the GPU, 1.15x faster; 32 with train.gradient_checkpointing peaks at 16.8 GB (docs/performance.md). A large model on CPU needs a number here.")
    clip_range: float | None = opt(None, "PPO clip range epsilon. None: calibrated to the log-prob reduction and the latent size D, 0.015/sqrt(D) for 'mean' and 0.015*sqrt(D) for 'sum' (1e-3 on ShapesWorld's D = 256; DDPO's 1e-4 on SD's D = 16,384 is the same trust region; docs/tuning.md). A fixed value that is wrong for the reduction never clips (warned once per run).")
    kl_coef: float = opt(0.0, "Weight beta of a KL penalty toward the base model, beta * KL(pi_theta || pi_base) per trained step (LoRA only: the reference is the UNet with its adapters disabled; costs one more UNet forward per trained pair). 0: off. beta is weighed against the advantages, which loop, reinforce and reinforce-loo leave in the reward's units (ppo and grpo divide by a std, as does train.loo_std): under them a reward whose advantages spread 3.5x less needs about a 3.5x smaller beta for the same pull toward the base (docs/tuning.md, section 27; compare advantage_std in metrics.jsonl).")
    ptx_coef: float = opt(0.0, "Weight of a pretraining loss added to every optimizer step: the denoiser's own training loss (SD: its epsilon or v MSE at a uniform random timestep; SD3: the velocity MSE at a uniform sigma), without guidance, on train.ptx_batch fresh images of train.ptx_data, through the trained adapters (InstructGPT's PPO-ptx; ReFL's pretraining term). It anchors the model to real images, where train.kl_coef anchors it to the base model's own samples; costs one denoiser forward and backward per image. metrics.jsonl logs ptx_loss (the MSE) and ptx_grad_norm (the norm of its weighted gradient, beside grad_norm). 0: off.")
    ptx_data: str | None = opt(None, "The images of train.ptx_coef's loss: shapes:<category>_<split>[+...] (ShapesWorld renders of those prompts, a fresh layout at every draw, e.g. shapes:single_train+shapes:spatial_train), or a folder whose metadata.jsonl lists {\"file_name\": ..., \"text\": ...} one a line (the Hugging Face imagefolder layout; center-cropped and resized to the model's resolution), or own_samples: the epoch's own samples whose advantage is positive (better than their group), as their final latents with their prompts, so that the term is self-imitation, reward-filtered fine-tuning on the model's own successes (RAFT, Dong et al. 2023); an epoch in which no sample beat its group adds nothing. A source that captions a held-out prompt is refused.")
    ptx_batch: int = opt(8, "Images of train.ptx_data per optimizer step (train.ptx_coef); each update draws its own, from a stream set by run.seed, the process and the update's number.")
    ptx_max_noise: float = opt(1.0, "The pretraining loss's noise levels u are drawn uniformly from [train.ptx_min_noise, ptx_max_noise): 1: up to the end of the schedule; below 1 only its less noisy part (SD: timesteps t < ptx_max_noise T; SD3: sigma < ptx_max_noise), so that the term leaves alone the high-noise steps, where the layout is decided (on ShapesWorld the first 3 of 10 sampling steps, t >= 700), and anchors how objects are drawn.")
    ptx_min_noise: float = opt(0.0, "The lower end of the pretraining loss's noise levels (see train.ptx_max_noise): above 0 the term leaves alone the less noisy steps, where the sampler's own texture is drawn, and acts only where the layout is decided (with train.ptx_data=own_samples: imitate where the winners put their objects, not their pixels).")
    adv_clip_max: float = opt(5.0, "Advantages are clamped to [-adv_clip_max, adv_clip_max].")
    loo_std: str = opt("none", "Divide leave-one-out advantages by a std: 'none', 'group' or 'batch'.")
    min_noise_std: float = opt(0.05, "Train only denoising steps whose noise std sigma_t (DDIM; the SDE step std for SD3) is at least this. With SD's schedule the last two steps have sigma_t 0.04 and 0.02 at any step count (0.26-0.78 before them at 10 steps); their log-prob gradients scale as 1/sigma_t and drown the reward signal of the other steps (docs/shapesworld.md). 0: every step, as DDPO.")
    first_steps: int | None = opt(None, "Train only the first N denoising steps (the high-noise ones, which decide the layout: on ShapesWorld spatial prompts the first 3 of 10 steps fix 77% of the success variance; docs/tuning.md). None: every step (within min_noise_std and B2's interval).")
    step_weight_power: float = opt(0.0, "Weight each trained step's surrogate by (sigma_t / c_t)^p, scaled to mean 1 over the trained steps, where c_t is how far the step's mean moves per unit of predicted x0 (noise-aware weighting, as TempFlow-GRPO's). Under uniform weights the first, high-noise steps, which decide the layout, get a few percent of the update (c_t / sigma_t = 0.042 at the first of 10 zero-terminal-SNR steps, 0.13 under SD 1.x/2.x's schedule, against 1.0-5.1 at the last trained ones). 1: every step's log-density equally sensitive to x0; 0: uniform (DDPO).")
    timestep_fraction: float = opt(1.0, "Fraction of the trainable denoising steps trained per sample (random subset).")
    max_grad_norm: float = opt(1.0, "Gradient-norm clip.")
    mixed_precision: str = opt("no", "'no', 'fp16' or 'bf16' (accelerate).")
    allow_tf32: bool = opt(True, "On NVIDIA GPUs (Ampere and newer), run fp32 matrix products and convolutions in TF32 (torch.backends.cuda.matmul / cudnn.allow_tf32), as TRL's DDPO does by default: 1.5-1.6x faster fp32 sampling and training on an H200 (docs/performance.md). false: full fp32 precision. No effect on CPU or in bf16/fp16.")
    stat_buffer_size: int = opt(16, "ppo: per-prompt reward buffer length.")
    stat_min_count: int = opt(16, "ppo: rewards a prompt needs before its own statistics replace the batch's.")
    gradient_checkpointing: bool = opt(False, "Recompute the denoiser's (UNet's / SD3 transformer's) activations in the backward pass instead of storing them (diffusers' enable_gradient_checkpointing; works with LoRA): less activation memory for about one more forward per trained chunk; same loss and gradients.")
    optimizer: str = opt("adamw", "'adamw' (torch.optim.AdamW) or 'adamw8bit' (bitsandbytes' AdamW8bit: 8-bit optimizer states, about a quarter of AdamW's state memory; needs `pip install bitsandbytes` and a CUDA GPU). The adam_* keys apply to both.")
    frozen_dtype: str = opt("auto", "Dtype of the frozen weights (VAE, text encoders and, with LoRA, the base UNet/transformer): 'auto' (train.mixed_precision's dtype on a GPU, fp32 on CPU), 'fp32', 'fp16' (GPU only) or 'bf16' (GPU or CPU). fp16/bf16 halve their memory and need train.mixed_precision set to the same dtype (the forward runs under autocast). LoRA adapters and fully trained weights stay fp32.")
    max_consecutive_skips: int = opt(3, "Halt the run (exit 3) after this many skipped updates in a row (non-finite loss or gradient, or an epoch whose rewards are all NaN/inf); the newest checkpoint is then from before the fault.")


@dataclass
class B2Config:
    enabled: bool = opt(False, "Turn on B2-DiffuRL (backward progressive training + branch sampling).")
    start_steps: int = opt(7, "Denoising steps trained at stage 0 (the low-noise end); grows to all steps (B2-DiffuRL's code: 14 of 20).")
    stages: int = opt(100, "Number of stages S over which the trained interval grows.")
    epochs_per_stage: int = opt(1, "Epochs spent in each stage.")
    branches: int = opt(3, "Branches B per trajectory at the branch point (the estimator's group is the B siblings).")
    selection: str = opt("zscore", "'zscore': keep the best sibling if z >= threshold and the worst if z <= -threshold; 'all': keep every sibling.")
    z_threshold: float = opt(0.5, "Selection threshold on per-prompt reward z-scores.")
    history_stages: int = opt(8, "Past stages whose rewards enter the per-prompt z-scores (plus the current one).")


@dataclass
class RunConfig:
    out: str | None = opt(None, "Run directory; default runs/<date>-<time>-<algo>.")
    seed: int = opt(0, "Seed for prompts, noise and initialization.")
    epochs: int = opt(20, "Training epochs (one epoch = sample, reward, update). Demo: 20 x 256 images with 16 updates each and the text encoder trained too, 3-9 min on 2 CPU cores depending on the machine; it reaches what 35 epochs of UNet-only LoRA reach (docs/tuning.md, section 18), and 30 or 40 epochs gain no more on average (section 20).")
    reward: str = opt("shapes", "Reward(s): NAME or module:function, comma separated, each optionally NAME:WEIGHT.")
    prompts: str = opt("shapes:color_binding_unseen-train", "Prompts: a text file, a built-in set, or module:function. Demo: color-binding prompts with color-shape combos the base model was not pretrained on.")
    eval_prompts: str | None = opt(AUTO, "Held-out prompts, evaluated before training, every eval_every epochs and at the end. 'auto' follows run.prompts: with ShapesWorld prompts (shapes:...) shapes:color_binding_unseen-val (the demo: the other half of the unseen color-binding pairs); with any other fixed set of at least 5 distinct prompts, a fixed-seed 20% of them (at least 1), which training then never samples; with fewer, or a prompt generator, none (said once at start). A prompt spec as for run.prompts: those prompts. None: off.")
    eval_every: int = opt(10, "Held-out evaluation period in epochs (0: only before and after).")
    eval_images_per_prompt: int = opt(8, "Images per held-out prompt (fixed seeds shared by every method).")
    image_every: int = opt(10, "Save an image grid every N epochs.")
    save_every: int = opt(10, "Checkpoint every N epochs (the last epoch always saves).")
    keep_checkpoints: int = opt(2, "Checkpoints kept on disk (the newest is never deleted).")
    tensorboard: bool = opt(True, "Write TensorBoard events.")
    wandb: bool = opt(False, "Also log to Weights & Biases (pip install wandb).")
    threads: int | None = opt(None, "torch CPU threads (default: torch's choice).")
    deterministic: bool | None = opt(None, "torch.use_deterministic_algorithms for the run. None (default): on without a GPU, where it costs nothing measurable on ShapesWorld and makes a run bit-reproducible at any thread count (without it, two 2-thread `make demo` runs differed from the first epoch and ended at +0.153 and +0.125; docs/tuning.md, section 20); off on GPUs, where some kernels have no deterministic variant. Under None an op without one warns; true makes it an error (and on a GPU may need CUBLAS_WORKSPACE_CONFIG=:4096:8).")
    progress: bool = opt(True, "Show a progress bar.")
    early_stop_drop: float | None = opt(None, "Stop early when the held-out reward (first reward part) falls more than this below its best so far (None: off; needs run.eval_prompts and run.eval_every >= 1).")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    b2: B2Config = field(default_factory=B2Config)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def _coerce(value: Any, annotation: Any, key: str, from_string: bool) -> Any:
    """Check `value` against a field's type; strings from the command line are parsed first."""
    hint = typing.get_type_hints(annotation) if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):  # TOML has no null
            return None
        return _coerce(value, args[0], key, from_string)
    if origin is list:
        (item,) = typing.get_args(hint)
        if from_string and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise DiffrlError(f"config key {key!r}: expected a list, got {value!r}")
        return [_coerce(v, item, key, from_string) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_string and str(value).lower() in ("true", "1", "yes", "false", "0", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise DiffrlError(f"config key {key!r}: expected true/false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise DiffrlError(f"config key {key!r}: expected a number, got {value!r}")
        if isinstance(value, str) and from_string:
            try:
                value = hint(value) if hint is float else int(value)
            except ValueError:
                raise DiffrlError(f"config key {key!r}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, float)) or (hint is int and not isinstance(value, int)):
            raise DiffrlError(f"config key {key!r}: expected {hint.__name__}, got {value!r}")
        try:
            return hint(value)
        except OverflowError:  # an integer too large for a float
            raise DiffrlError(f"config key {key!r}: {value!r} is out of range for a {hint.__name__}") from None
    if hint is str:
        if not isinstance(value, str):
            raise DiffrlError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    return value


def _fields(section: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(section)}


def apply_mapping(config: Config, mapping: dict, from_string: bool = False, prefix: str = "") -> Config:
    """Set nested keys of `config` from a dict ({"train": {"algo": "ppo"}} or {"train.algo": "ppo"})."""
    for raw_key, value in mapping.items():
        if not isinstance(raw_key, str):  # YAML allows numbers, dates... as keys
            raise DiffrlError(f"config key {raw_key!r} must be a string such as train.algo")
        key = f"{prefix}{raw_key}"
        if "." in raw_key:
            section_name, _, rest = raw_key.partition(".")
            apply_mapping(config, {section_name: {rest: value}}, from_string, prefix)
            continue
        if isinstance(value, dict) and not prefix:
            section = getattr(config, raw_key) if raw_key in _fields(config) else None  # not __class__ & co.
            if section is None or not dataclasses.is_dataclass(section):
                raise DiffrlError(f"unknown config section {key!r}; sections: {', '.join(_fields(config))}")
            for name, item in value.items():
                fields = _fields(section)
                if not isinstance(name, str):
                    raise DiffrlError(f"config key {name!r} in section {raw_key!r} must be a string")
                if name not in fields:
                    raise DiffrlError(f"unknown config key '{raw_key}.{name}'; {raw_key} has: {', '.join(fields)}")
                hints = typing.get_type_hints(type(section))
                setattr(section, name, _coerce(item, hints[name], f"{raw_key}.{name}", from_string))
            continue
        if raw_key in _fields(config) and not prefix:
            raise DiffrlError(f"config section {key!r} must be a table of keys, got {value!r}")
        raise DiffrlError(f"config key {key!r} is not inside a section (write e.g. train.{raw_key})")
    return config


def preset_names() -> list[str]:
    """The presets `--config NAME` accepts (presets/NAME.toml), sorted; listed in the CLI help and errors so the
    list cannot go stale."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_config_file(path: str | Path) -> dict:
    """Parse a TOML or YAML file into a dict; one-line errors for missing or malformed files."""
    path = Path(path)
    if not path.is_file() and (PRESET_DIR / f"{path}.toml").is_file():
        path = PRESET_DIR / f"{path}.toml"
    if not path.is_file():
        raise DiffrlError(f"config file not found: {path} (presets: {', '.join(preset_names())})")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as err:
        raise DiffrlError(f"cannot parse config file {path}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # yaml.YAMLError and friends
        raise DiffrlError(f"cannot parse config file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DiffrlError(f"config file {path} must hold a table of sections")
    return data


def parse_overrides(items: list[str]) -> dict:
    """['train.algo=ppo', 'sample.k=2'] -> {'train.algo': 'ppo', 'sample.k': '2'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise DiffrlError(f"--set expects section.key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def validate(config: Config) -> Config:
    """Range and consistency checks; each failure names the key and the fix."""
    s, t, r = config.sample, config.train, config.run
    if t.algo not in ESTIMATORS:
        raise DiffrlError(f"unknown algorithm {t.algo!r}; choose one of: {', '.join(ESTIMATORS)}")
    estimator = ESTIMATORS[t.algo]
    checks = [
        (s.num_steps >= 1, "sample.num_steps must be >= 1"),
        (s.eta > 0, "sample.eta must be > 0 (eta = 0 is deterministic and has no log-probability)"),
        (s.guidance_scale >= 0, "sample.guidance_scale must be >= 0"),
        (s.flow_noise_level > 0, "sample.flow_noise_level must be > 0 (0 is the deterministic ODE step: no log-probability)"),
        (1 <= s.max_sequence_length <= 512, "sample.max_sequence_length must be in [1, 512] (StableDiffusion3Pipeline's "
                                            "limit)"),
        (s.k >= 1, "sample.k must be >= 1"),
        (s.prompts_per_batch >= 1, "sample.prompts_per_batch must be >= 1"),
        (s.chunk_size is None or s.chunk_size >= 1, "sample.chunk_size must be >= 1 (or none: the default)"),
        (s.batches_per_epoch >= 1, "sample.batches_per_epoch must be >= 1"),
        (0 <= s.skip_zero_advantage < 1, "sample.skip_zero_advantage must be in [0, 1) (1 would never draw a "
                                         "prompt again once its group was flat)"),
        (s.logprob_reduce in ("mean", "sum"), "sample.logprob_reduce must be 'mean' or 'sum'"),
        (not estimator.needs_group or s.k >= 2 or config.b2.enabled,  # B2: the siblings are the group
         f"--algo {t.algo} needs K >= 2 images per prompt for its baseline (got sample.k={s.k})"),
        (t.learning_rate > 0, "train.learning_rate must be > 0"),
        (t.lr_schedule in LR_SCHEDULES, f"train.lr_schedule must be {', '.join(LR_SCHEDULES)} (got {t.lr_schedule!r})"),
        (t.lr_warmup_updates >= 0, "train.lr_warmup_updates must be >= 0"),
        (t.text_encoder_lr is None or t.text_encoder_lr > 0,
         "train.text_encoder_lr must be > 0 (or none: train.learning_rate)"),
        (t.text_encoder_lr is None or trains_text_encoder(config),
         "train.text_encoder_lr needs model.train_text_encoder = true (this run trains no text encoder adapters)"),
        (t.inner_epochs is None or t.inner_epochs >= 1, "train.inner_epochs must be >= 1"),
        (t.minibatches is None or t.minibatches >= 1, "train.minibatches must be >= 1"),
        (t.chunk_size is None or t.chunk_size >= 1, "train.chunk_size must be >= 1 (or none: the default)"),
        (t.clip_range is None or t.clip_range > 0, "train.clip_range must be > 0 (or none: calibrated)"),
        (t.kl_coef >= 0, "train.kl_coef must be >= 0"),
        (t.kl_coef == 0 or config.model.lora, "train.kl_coef > 0 needs model.lora = true (the base model is the UNet "
                                              "with its adapters disabled; full fine-tuning keeps no reference copy)"),
        (t.ptx_coef >= 0, "train.ptx_coef must be >= 0"),
        (t.ptx_coef == 0 or t.ptx_data, "train.ptx_coef > 0 needs train.ptx_data (shapes:<category>_<split>, own_samples "
                                        "or a folder with metadata.jsonl)"),
        (t.ptx_batch >= 1, "train.ptx_batch must be >= 1"),
        (0 < t.ptx_max_noise <= 1, "train.ptx_max_noise must be in (0, 1]"),
        (0 <= t.ptx_min_noise < t.ptx_max_noise, "train.ptx_min_noise must be in [0, train.ptx_max_noise)"),
        (t.adv_clip_max > 0, "train.adv_clip_max must be > 0"),
        (t.loo_std in ("none", "group", "batch"), "train.loo_std must be none, group or batch"),
        (t.first_steps is None or t.first_steps >= 1, "train.first_steps must be >= 1 (or none: every step)"),
        (t.step_weight_power >= 0, "train.step_weight_power must be >= 0 (0: uniform)"),
        (0 < t.timestep_fraction <= 1, "train.timestep_fraction must be in (0, 1]"),
        (t.min_noise_std >= 0, "train.min_noise_std must be >= 0"),
        (t.max_grad_norm > 0, "train.max_grad_norm must be > 0"),
        (t.mixed_precision in ("no", "fp16", "bf16"), "train.mixed_precision must be no, fp16 or bf16"),
        (t.optimizer in OPTIMIZERS, f"train.optimizer must be {' or '.join(OPTIMIZERS)} (got {t.optimizer!r})"),
        (t.frozen_dtype in FROZEN_DTYPES, f"train.frozen_dtype must be {', '.join(FROZEN_DTYPES)} (got {t.frozen_dtype!r})"),
        (t.frozen_dtype not in ("fp16", "bf16") or t.mixed_precision == t.frozen_dtype,
         f"train.frozen_dtype={t.frozen_dtype} needs train.mixed_precision={t.frozen_dtype} (the forward runs under "
         f"autocast; got train.mixed_precision={t.mixed_precision})"),
        (t.stat_buffer_size >= 1 and t.stat_min_count >= 1, "train.stat_buffer_size and stat_min_count must be >= 1"),
        (config.model.lora_rank >= 1, "model.lora_rank must be >= 1"),
        (not config.model.train_text_encoder or config.model.lora,
         "model.train_text_encoder needs model.lora = true (the text encoder is trained through LoRA adapters)"),
        (r.epochs >= 0, "run.epochs must be >= 0"),
        (r.image_every >= 1 and r.save_every >= 1, "run.image_every and run.save_every must be >= 1"),
        (r.eval_every >= 0, "run.eval_every must be >= 0"),
        (r.eval_images_per_prompt >= 1, "run.eval_images_per_prompt must be >= 1"),
        (r.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
        (r.threads is None or r.threads >= 1, "run.threads must be >= 1"),
        (t.max_consecutive_skips >= 1, "train.max_consecutive_skips must be >= 1"),
        (r.early_stop_drop is None or r.early_stop_drop > 0, "run.early_stop_drop must be > 0 (or none: off)"),
        (r.early_stop_drop is None or (r.eval_prompts is not None and r.eval_every >= 1),
         "run.early_stop_drop needs held-out evaluation: set run.eval_prompts and run.eval_every >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise DiffrlError(message)
    if not estimator.clipped and ((t.inner_epochs or 1) != 1 or (t.minibatches or 1) != 1):
        raise DiffrlError(f"--algo {t.algo} is on-policy (no importance ratio): train.inner_epochs and "
                          "train.minibatches must be 1; use ppo or loop for several updates per batch")
    samples = images_per_epoch(config)
    if samples % minibatches(config):
        raise DiffrlError(f"train.minibatches={minibatches(config)} does not divide the {samples} samples per epoch")
    b = config.b2
    if b.enabled:
        b2_checks = [
            (1 <= b.start_steps <= s.num_steps, f"b2.start_steps must be in [1, sample.num_steps={s.num_steps}]"),
            (b.stages >= 1 and b.epochs_per_stage >= 1, "b2.stages and b2.epochs_per_stage must be >= 1"),
            (b.branches >= 1, "b2.branches must be >= 1"),
            (not estimator.needs_group or b.branches >= 2,
             f"--algo {t.algo} with --b2 uses the sibling branches as its group: b2.branches must be >= 2"),
            (b.selection in ("zscore", "all"), "b2.selection must be 'zscore' or 'all'"),
            (b.z_threshold >= 0 and b.history_stages >= 0, "b2.z_threshold and b2.history_stages must be >= 0"),
        ]
        for ok, message in b2_checks:
            if not ok:
                raise DiffrlError(message)
    return config


OPTIMIZERS = ("adamw", "adamw8bit")
# train.lr_schedule -> the name diffusers.optimization.get_scheduler knows it by (all three take a linear warmup).
LR_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
ANNEALED_SCHEDULES = ("linear", "cosine")  # their length is the run's: run.epochs enters the math

FROZEN_DTYPES = ("auto", "fp32", "fp16", "bf16")


def check_device(config: Config, cuda: bool) -> None:
    """Checks that depend on the machine (start-up, before anything is written): adamw8bit needs bitsandbytes and
    CUDA; fp16 frozen weights need a GPU; merged LoRA sampling needs fp32 frozen weights ('auto' is half precision
    on a GPU under mixed precision). Not part of `validate`, so a GPU run's config.yaml still loads on a CPU."""
    import importlib.util

    t = config.train
    if t.optimizer == "adamw8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise DiffrlError("train.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes); "
                              "it runs on CUDA GPUs")
        if not cuda:
            raise DiffrlError("train.optimizer=adamw8bit needs a CUDA GPU (bitsandbytes' 8-bit optimizers are "
                              "CUDA-only) and none is available; use train.optimizer=adamw")
    if t.frozen_dtype == "fp16" and not cuda:
        raise DiffrlError("train.frozen_dtype=fp16 needs a CUDA GPU (no GPU here); use bf16 or fp32 on CPU")
    dtype = str(frozen_torch_dtype(config, cuda)).removeprefix("torch.")
    if config.sample.merge_lora and config.model.lora and dtype != "float32":
        raise DiffrlError(f"sample.merge_lora needs fp32 frozen weights (train.frozen_dtype=fp32; these are {dtype}): "
                          "merged into half-precision weights, the adapters' small delta would be rounded away and "
                          "the images sampled from another policy than the one trained")


def frozen_torch_dtype(config: Config, cuda: bool):
    """The torch dtype of the frozen weights (train.frozen_dtype; 'auto': mixed_precision's dtype on a GPU, else fp32)."""
    import torch

    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    t = config.train
    if t.frozen_dtype == "auto":
        return names.get(t.mixed_precision, torch.float32) if cuda else torch.float32
    return names[t.frozen_dtype]


# Keys that may change when a run is resumed: they do not enter the math of the remaining updates.
# (train.chunk_size and sample.chunk_size only regroup the same sums and run.deterministic fixes their order, and
# sample.merge_lora computes the same layers from merged weights: floating-point rounding may differ in the last
# bits; train.gradient_checkpointing recomputes the same activations.)
RESUMABLE_KEYS = frozenset({
    "run.out", "run.epochs", "run.save_every", "run.image_every", "run.eval_every", "run.eval_prompts",
    "run.eval_images_per_prompt", "run.progress", "run.threads", "run.deterministic", "run.keep_checkpoints",
    "run.tensorboard", "run.wandb", "run.early_stop_drop", "train.max_consecutive_skips", "train.chunk_size",
    "train.gradient_checkpointing", "sample.chunk_size", "sample.merge_lora",
})


def resume_conflicts(saved: Config, new: Config) -> list[str]:
    """Keys outside RESUMABLE_KEYS whose values differ, as 'key (old -> new)'; empty when resuming is safe."""
    def flat(config: Config) -> dict:
        return {f"{section}.{key}": value for section, fields in config.to_dict().items() for key, value in fields.items()}

    saved, new = with_resolved_defaults(saved, like=new), with_resolved_defaults(new)
    old, now = flat(saved), flat(new)
    conflicts = [f"{key} ({old[key]!r} -> {now[key]!r})" for key in now
                 if key not in RESUMABLE_KEYS and old.get(key) != now[key] and not _both_nan(old.get(key), now[key])]
    # run.epochs may change, unless it sets the length of an annealing learning-rate schedule (train.lr_schedule).
    annealed = [c.train.lr_schedule for c in (saved, new) if c.train.lr_schedule in ANNEALED_SCHEDULES]
    if annealed and saved.run.epochs != new.run.epochs:
        conflicts.append(f"run.epochs ({saved.run.epochs!r} -> {new.run.epochs!r}: train.lr_schedule={annealed[0]} "
                         "anneals the learning rate to 0 at the last epoch, so this changes the remaining updates)")
    # run.eval_prompts may change, unless the change adds or removes the prompts 'auto' holds out of training.
    held_out = [holds_out_training_prompts(c.run.prompts, c.run.eval_prompts) for c in (saved, new)]
    if held_out[0] != held_out[1] and not any(c.startswith("run.prompts ") for c in conflicts):
        conflicts.append(f"run.eval_prompts ({saved.run.eval_prompts!r} -> {new.run.eval_prompts!r}: 'auto' holds "
                         "part of run.prompts out of training, so this changes the training prompts)")
    return conflicts


def _both_nan(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and a != a and b != b


def branches(config: Config) -> int:
    """Copies of each trajectory after the branch point: B with B2-DiffuRL, else 1."""
    return config.b2.branches if config.b2.enabled else 1


def images_per_epoch(config: Config) -> int:
    """Sampled images per epoch, per process: K x prompts_per_batch x batches_per_epoch (x B2 branches)."""
    s = config.sample
    return s.k * s.prompts_per_batch * s.batches_per_epoch * branches(config)


# Updates of the clipped estimators when train.minibatches is unset: one per ~16 fresh samples, one pass. On
# ShapesWorld this learned more per second than 4 passes x 4 updates over a quarter of the samples: the
# gradient is noise-bound, and reused samples repeat their noise (docs/tuning.md, section 7).
CLIPPED_MINIBATCH_SIZE = 16


def minibatches(config: Config) -> int:
    """Optimizer updates per inner epoch (the estimator's default when unset)."""
    if config.train.minibatches is not None:
        return config.train.minibatches
    if not ESTIMATORS[config.train.algo].clipped:
        return 1
    samples = images_per_epoch(config)
    count = max(1, samples // CLIPPED_MINIBATCH_SIZE)
    while samples % count:  # the largest count <= samples // 16 that splits the batch evenly
        count -= 1
    return count


# train.chunk_size's default on a GPU: SD 2.x at 512 px (LoRA, bf16) peaks at 19.6 GB (docs/performance.md).
GPU_CHUNK_SIZE = 8
# ...and its cap on CPU: up to a few hundred pairs one call is fastest; REINFORCE's one 2,048-pair minibatch per
# epoch (ShapesWorld, 256 samples x 8 steps) trained 3.5x slower in one call than in chunks of 64-256 (1 thread).
CPU_MAX_CHUNK_SIZE = 256


def chunk_size(config: Config, pairs: int, cuda: bool) -> int:
    """(sample, step) pairs per UNet call for a minibatch of `pairs`: train.chunk_size, or (None) all of them on
    CPU up to CPU_MAX_CHUNK_SIZE, where one larger call is faster and memory is rarely short, and GPU_CHUNK_SIZE on
    a GPU."""
    if config.train.chunk_size is not None:
        return config.train.chunk_size
    return GPU_CHUNK_SIZE if cuda else min(max(pairs, 1), CPU_MAX_CHUNK_SIZE)


# sample.chunk_size's default on CPU (images per call; twice the rows under guidance).
CPU_SAMPLING_CHUNK_SIZE = 64


def sampling_chunk_size(sample: SampleConfig, cuda: bool) -> int | None:
    """At most how many images one denoiser call samples (None: a whole batch): sample.chunk_size, or its default,
    CPU_SAMPLING_CHUNK_SIZE on CPU and the whole batch on a GPU."""
    if sample.chunk_size is not None:
        return sample.chunk_size
    return None if cuda else CPU_SAMPLING_CHUNK_SIZE


def with_resolved_defaults(config: Config, like: Config | None = None) -> Config:
    """The config as a run directory records it: model.train_text_encoder, whose default follows the model (and
    changed on 2026-12-02), written out, so that a later change of that default cannot change what a resumed run
    trains. `like`: for a config read back from a run directory written before runs recorded the value (None there),
    take the value `like` resolves to; the run's checkpoint weights then decide whether it can resume."""
    source = like if like is not None and config.model.train_text_encoder is None else config
    return dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                 train_text_encoder=trains_text_encoder(source)))


def trains_text_encoder(config: Config) -> bool:
    """model.train_text_encoder, or (None) on for the built-in ShapesWorld models with LoRA and off otherwise: measured
    there only (docs/tuning.md, sections 8 and 18), and SD3 pipelines have no adapters diffusers can restore."""
    m = config.model
    if m.train_text_encoder is not None:
        return m.train_text_encoder
    return m.lora and m.pretrained.startswith(BUILTIN_PREFIX)


def inner_epochs(config: Config) -> int:
    """Passes over each sampled batch (1 unless set: see CLIPPED_MINIBATCH_SIZE)."""
    return config.train.inner_epochs if config.train.inner_epochs is not None else 1


def total_updates(config: Config) -> int:
    """Optimizer updates of the whole run, per process (every rank takes each one): run.epochs x inner epochs x
    minibatches. train.lr_schedule's 'linear' and 'cosine' reach 0 after this many applied updates."""
    return config.run.epochs * inner_epochs(config) * minibatches(config)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Defaults <- file <- overrides (strings allowed), then validated."""
    config = Config()
    if path is not None:
        apply_mapping(config, read_config_file(path))
    if overrides:
        apply_mapping(config, overrides, from_string=True)
    return validate(config)


def describe_fields() -> list[tuple[str, Any, str]]:
    """(key, default, help) for every field: the source of the docs' config table."""
    out = []
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append((f"{section.name}.{f.name}", default, f.metadata.get("help", "")))
    return out
