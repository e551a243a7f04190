"""Pretrain the ShapesWorld base model: a real Stable Diffusion pipeline, from scratch, on a CPU.

Two phases on freshly rendered train-split images (a new random batch every step):

1. AutoencoderKL: 32x32 RGB <-> 8x8x4 latents, MSE reconstruction + a small KL term (as in
   SD, no LPIPS/GAN: flat shapes need none). Then `scaling_factor` is set so that scaled
   latents have unit std and written into the VAE config, as SD does (0.18215).
2. UNet2DConditionModel + CLIPTextModel trained jointly with SD's epsilon-prediction DDPM
   loss on scaled VAE latents. The text encoder starts random; training it jointly lets it
   learn which color word binds to which shape word. The prompt is replaced by "" with
   probability `cfg_drop` so classifier-free guidance works at sampling time. An EMA of the
   denoiser weights (UNet + text encoder) is what gets saved.

The result is saved with `save_pretrained` (safetensors, DDIMScheduler) so that plain
`StableDiffusionPipeline.from_pretrained(dir)` loads it. `evaluate_base` samples val/unseen
prompts through that plain pipeline and scores them with `diffrl.shapes.scorer.score`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffrl.core.ddim import noised_with_target
from diffrl.pretraining_data import to_tensor
from diffrl.shapes.world import CATEGORIES, PromptSpec, all_prompts, prompt_set, render

# Sampling settings recommended for the shipped model: DDIM, eta 0. With `evaluate_base`, guidance 3
# beat 5 on every compositional row and 7.5 was worse still; 50 steps gave nothing over 20
# (docs/shapesworld.md).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 3.0


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run; saved as pretrain_config.json beside the model."""

    seed: int = 0
    """Seeds torch and the numpy Generator that draws prompts and renders."""
    image_size: int = 32
    """Rendered image side (px). The VAE maps it to image_size/4 latents."""
    vae_channels: tuple[int, ...] = (16, 32, 32)
    """AutoencoderKL block widths; 3 levels -> 4x downsampling (32x32 -> 8x8x4)."""
    block_channels: tuple[int, ...] = (32, 64, 64)
    """UNet block widths at latent resolutions 8, 4, 2 (~1.5M params; see docs/shapesworld.md)."""
    text_dim: int = 64
    """CLIP text hidden size = UNet cross-attention dim."""
    text_layers: int = 2
    """CLIP text transformer layers."""
    vae_steps: int = 800
    """Optimizer steps for the autoencoder."""
    vae_batch: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-5
    """Weight of the per-sample KL (summed over latent elements); small, as in SD."""
    unet_steps: int = 5000
    """Optimizer steps for UNet + text encoder."""
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup: int = 200
    """Linear LR warmup steps for the denoiser; cosine decay to 10% afterwards."""
    ema_decay: float = 0.999
    cfg_drop: float = 0.1
    """Probability of training on the empty prompt, for classifier-free guidance."""
    category_weights: dict[str, float] = field(
        default_factory=lambda: {c: 0.0 if c == "color_binding" else 1.0 for c in CATEGORIES})
    """Draw a category with these weights, then a train prompt of it uniformly (spatial has
    520 prompts, single 14: uniform over prompts would starve single objects). Color-binding prompts
    are left out by default: the base model then draws single objects perfectly and pairs of objects
    (from spatial prompts) but binds colors in "A and B" prompts only about half the time, like SD's
    attribute leakage, which leaves RL a skill to teach (docs/tuning.md section 6; with every
    category at weight 1, held-out color binding started at 0.77 and RL could not move it)."""
    loss_weighting: str = "epsilon"
    """Per-sample weight of the epsilon-prediction MSE over timesteps: 'epsilon' (1, DDPM's simple loss) or 'v'
    (1 / alpha_bar_t = 1 + 1/SNR_t: the v-prediction loss of the same epsilon model). The simple loss weights the
    x0 content of the high-noise steps by SNR_t (~0.005 at the last step), and those are the steps that place
    objects: a model trained with it ignores relation words (docs/tuning.md section 9)."""
    zero_terminal_snr: bool = False
    """Rescale the betas so that alpha_bar at the last timestep is 0 (Lin et al. 2024, diffusers'
    `rescale_betas_zero_snr`), predict v instead of epsilon (epsilon is undefined there) and sample with 'trailing'
    timesteps, which start at t = 999. SD's schedule leaves sqrt(alpha_bar_999) = 0.07 of the image in the noise, so a
    model trained on it reads the layout out of its starting noise instead of deciding it from the prompt."""
    bidirectional_text: bool = False
    """A BERT text encoder (every token attends to the whole prompt) instead of CLIP's causal one, in which the
    subject of "a red circle above a green square" is encoded before the relation word."""
    high_noise_fraction: float = 0.0
    """Fraction of each batch whose timestep is drawn from the last tenth of the schedule (t >= 0.9 T, the band the
    first sampling step starts in) instead of uniformly. With zero terminal SNR those steps see no image, so they
    alone make the prompt decide the layout; at uniform draws (a tenth of the batch) relation words stayed unused
    (docs/tuning.md section 10)."""
    save_every: int = 1000
    """Save the pipeline every this many denoiser steps (so an interrupted run leaves a model)."""
    stop_after: int | None = None
    """End the denoiser phase after this many of its unet_steps (warmup, cosine decay and EMA as in the full run): the
    model the full run saves at that step. The spatial bases start from zsnr's 4,000-step save of a 5,000-step run."""
    init: str | None = None
    """Continue from this saved pipeline instead of a random one: its autoencoder, text encoder and noise schedule are
    kept (vae_steps and the architecture fields above are ignored) and only the denoiser phase runs, with this config's
    prompts, timesteps, steps and optimizer settings.
    For a curriculum: a phase on one category at the high-noise steps after the usual pretraining
    (docs/tuning.md section 11)."""

    def check(self) -> None:
        """ValueError for settings that contradict each other."""
        if not 0 <= self.high_noise_fraction <= 1:
            raise ValueError(f"high_noise_fraction must be in [0, 1], got {self.high_noise_fraction}")
        if self.zero_terminal_snr and self.loss_weighting != "epsilon":
            raise ValueError("zero_terminal_snr predicts v, whose plain MSE already weights the steps as "
                             "loss_weighting 'v' does; leave loss_weighting at 'epsilon' (1/alpha_bar is infinite at t=T)")
        if self.init is not None and (self.zero_terminal_snr or self.bidirectional_text):
            raise ValueError("init continues a saved pipeline with its own schedule and text encoder; "
                             "zero_terminal_snr and bidirectional_text only apply to a model built from scratch")
        if self.stop_after is not None and not 0 < self.stop_after <= self.unet_steps:
            raise ValueError(f"stop_after must be in [1, unet_steps={self.unet_steps}], got {self.stop_after}")
        if self.init is not None and not (Path(self.init) / "model_index.json").is_file():
            raise ValueError(f"init {self.init!r} is not a saved pipeline directory (no model_index.json)")


LOSS_WEIGHTINGS = ("epsilon", "v")


def zero_terminal_snr_scheduler(scheduler):
    """The same DDIM schedule rescaled to zero terminal SNR, v-prediction, trailing timesteps (see PretrainConfig)."""
    return type(scheduler).from_config(scheduler.config, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                       timestep_spacing="trailing")


def denoiser_mse(pipe, z0: torch.Tensor, texts: list[str], t: torch.Tensor) -> torch.Tensor:
    """(B,) MSE of the pipeline's denoiser against its target (eps or v) on z0 noised to timesteps t with fresh
    noise: the pretraining loss before its per-timestep weights."""
    a = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    zt, target = noised_with_target(z0, torch.randn_like(z0), a, pipe.scheduler.config.prediction_type)
    pred = pipe.unet(zt, t, encode_prompts(pipe.tokenizer, pipe.text_encoder, texts)).sample
    return F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))


def draw_timesteps(n: int, num_timesteps: int, high_noise_fraction: float) -> torch.Tensor:
    """(n,) training timesteps: uniform, except that each is drawn from [0.9 T, T) with prob. high_noise_fraction."""
    t = torch.randint(0, num_timesteps, (n,))
    if high_noise_fraction > 0:  # no extra draws otherwise: earlier models stay reproducible bit for bit
        high = torch.rand(n) < high_noise_fraction
        t[high] = torch.randint(int(0.9 * num_timesteps), num_timesteps, (int(high.sum()),))
    return t


def loss_weights(alpha_bar: torch.Tensor, weighting: str) -> torch.Tensor:
    """Weight of each sample's epsilon MSE given its alpha_bar_t (see PretrainConfig.loss_weighting)."""
    if weighting == "epsilon":
        return torch.ones_like(alpha_bar)
    if weighting == "v":  # ||v - v_hat||^2 = ||eps - eps_hat||^2 / alpha_bar for the same model
        return 1 / alpha_bar
    raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")


class PromptSampler:
    """Draws (prompt, image) training pairs: category by weight, prompt uniform, fresh render."""

    def __init__(self, cfg: PretrainConfig, rng: np.random.Generator):
        self.rng, self.size = rng, cfg.image_size
        self.pools = [prompt_set(c, "train") for c in cfg.category_weights]
        weights = np.array(list(cfg.category_weights.values()), dtype=float)
        self.p = weights / weights.sum()

    def __call__(self, n: int) -> tuple[list[PromptSpec], torch.Tensor]:
        """n specs and their renders as a (n, 3, H, W) float tensor in [-1, 1]."""
        cats = self.rng.choice(len(self.pools), size=n, p=self.p)
        specs = [self.pools[c][self.rng.integers(len(self.pools[c]))] for c in cats]
        images = np.stack([render(s, self.rng, self.size) for s in specs])  # (n, H, W, 3) uint8
        return specs, to_tensor(images)


def lr_lambda(warmup: int, total: int):
    """Linear warmup then cosine decay to 10% of the peak."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.45 * (1 + np.cos(np.pi * min(1.0, progress)))
    return f


def train_vae(vae, cfg: PretrainConfig, sample: PromptSampler, progress: bool) -> float:
    """Fit the autoencoder; returns the final reconstruction MSE (in [-1, 1] units)."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(100, cfg.vae_steps))
    vae.train()
    bar = tqdm(range(cfg.vae_steps), desc="vae", disable=not progress)
    for _ in bar:
        _, x = sample(cfg.vae_batch)  # (B, 3, 32, 32)
        posterior = vae.encode(x).latent_dist  # mean/std (B, 4, 8, 8)
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, x)
        loss = mse + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{mse.item():.4f}")
    vae.eval()
    return mse.item()


@torch.no_grad()
def fit_scaling_factor(vae, sample: PromptSampler, n: int = 512) -> float:
    """1 / std of latents over `n` fresh renders, so scaled latents have unit std (SD's recipe)."""
    _, x = sample(n)
    z = vae.encode(x).latent_dist.sample()  # (n, 4, 8, 8)
    return float(1.0 / z.std())


def encode_prompts(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    """(B, L, D) text embeddings, tokenized exactly as StableDiffusionPipeline.encode_prompt does."""
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def train_denoiser(pipe, cfg: PretrainConfig, sample: PromptSampler, rng: np.random.Generator,
                   out_dir: Path, progress: bool) -> float:
    """Joint UNet + text-encoder training with the DDPM loss (eps or v target); EMA weights end in `pipe`."""
    unet, text_encoder, vae, sched = pipe.unet, pipe.text_encoder, pipe.vae, pipe.scheduler
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-4)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup, cfg.unet_steps))
    alphas_cumprod = sched.alphas_cumprod  # (T,)
    scale = vae.config.scaling_factor
    unet.train(), text_encoder.train()
    steps = cfg.stop_after or cfg.unet_steps
    bar = tqdm(range(steps), desc="unet", disable=not progress)
    running = None
    for step in bar:
        specs, x = sample(cfg.unet_batch)
        with torch.no_grad():
            z0 = vae.encode(x).latent_dist.sample() * scale  # (B, 4, 8, 8), ~unit std
        texts = ["" if rng.random() < cfg.cfg_drop else s.text for s in specs]
        t = draw_timesteps(len(specs), len(alphas_cumprod), cfg.high_noise_fraction)
        loss = (loss_weights(alphas_cumprod[t], cfg.loss_weighting) * denoiser_mse(pipe, z0, texts, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        with torch.no_grad():
            # Warm EMA: short runs are not dominated by the random init.
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < steps:
            save_with_ema(pipe, params, ema, out_dir)
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    unet.eval(), text_encoder.eval()
    return running


def save_with_ema(pipe, params: list[torch.Tensor], ema: list[torch.Tensor], out_dir: Path) -> None:
    """Save the pipeline with EMA weights swapped in, then swap the live weights back."""
    live = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
        pipe.save_pretrained(out_dir, safe_serialization=True)
        for p, v in zip(params, live):
            p.copy_(v)


def vocabulary() -> list[str]:
    """Words of every prompt in every split, so val and unseen prompts tokenize to known words."""
    from diffrl.models.tiny import words_of  # diffusers/transformers load lazily: `diffrl --help` stays fast

    return words_of([p.text for split in ("train", "val", "unseen") for p in all_prompts(split)])


def pretrain(out_dir: str | Path, cfg: PretrainConfig | None = None, progress: bool = True,
             threads: int | None = None) -> Path:
    """Train the ShapesWorld base pipeline into `out_dir` and return it. Deterministic for cfg.seed."""
    from diffrl.models.tiny import build_tiny_pipeline

    cfg = cfg or PretrainConfig()
    cfg.check()
    out_dir = Path(out_dir)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    start = time.time()
    sample = PromptSampler(cfg, rng)
    if cfg.init is not None:
        pipe = load_pipeline(cfg.init)
        vae_mse = None
    else:
        pipe = build_tiny_pipeline(
            out_dir, vocabulary(), sample_size=cfg.image_size, block_channels=cfg.block_channels,
            cross_attention_dim=cfg.text_dim, vae_channels=cfg.vae_channels, text_layers=cfg.text_layers,
            seed=cfg.seed, bidirectional_text=cfg.bidirectional_text,
        )
        if cfg.zero_terminal_snr:
            pipe.scheduler = zero_terminal_snr_scheduler(pipe.scheduler)
        vae_mse = train_vae(pipe.vae, cfg, sample, progress)
        pipe.vae.register_to_config(scaling_factor=fit_scaling_factor(pipe.vae, sample))
    pipe.vae.requires_grad_(False)
    vae_time = time.time() - start
    unet_loss = train_denoiser(pipe, cfg, sample, rng, out_dir, progress)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    record = {"config": asdict(cfg), "vae_mse": vae_mse, "unet_loss_ema": unet_loss,
              "scaling_factor": pipe.vae.config.scaling_factor, "vae_seconds": round(vae_time, 1),
              "total_seconds": round(time.time() - start, 1), "threads": torch.get_num_threads()}
    (out_dir / "pretrain_config.json").write_text(json.dumps(record, indent=2))
    return out_dir


# ----------------------------------------------------------------------------- evaluation

def load_pipeline(model_dir: str | Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def eval_prompts(splits: tuple[str, ...] = ("val", "unseen")) -> dict[str, list[PromptSpec]]:
    """Table rows -> prompts: each category's val prompts, plus 'unseen' (all unseen prompts)."""
    rows = {c: prompt_set(c, "val") for c in CATEGORIES if "val" in splits}
    if "unseen" in splits:
        rows["unseen"] = all_prompts("unseen")
    return rows


def sample_images(pipe, specs: list[PromptSpec], images_per_prompt: int, seed: int, steps: int,
                  guidance: float, batch: int = 64) -> np.ndarray:
    """(len(specs) * images_per_prompt, H, W, 3) uint8; image k of prompt i uses seed (seed, i, k)."""
    texts = [s.text for s in specs for _ in range(images_per_prompt)]
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(len(texts))]
    out = []
    for lo in range(0, len(texts), batch):
        images = pipe(texts[lo:lo + batch], generator=gens[lo:lo + batch], num_inference_steps=steps,
                      guidance_scale=guidance, eta=0.0, height=32, width=32, output_type="np").images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))  # (b, H, W, 3)
    return np.concatenate(out)


def evaluate_base(model_dir: str | Path, images_per_prompt: int = 8, seed: int = 0, steps: int = DEFAULT_STEPS,
                  guidance: float = DEFAULT_GUIDANCE, splits: tuple[str, ...] = ("val", "unseen"),
                  max_prompts: int | None = None, progress: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Success rate and mean score per table row; also the sampled images per row.

    Returns ({row: {"success": .., "score": .., "prompts": .., "images": ..}}, {row: images}).
    `max_prompts` evaluates an evenly spaced subset of each row (quick sweeps).
    """
    from diffrl.shapes.scorer import score

    pipe = load_pipeline(model_dir)
    table, images_by_row = {}, {}
    for row, specs in tqdm(eval_prompts(splits).items(), desc="evaluate", disable=not progress):
        if max_prompts and len(specs) > max_prompts:
            specs = specs[:: len(specs) // max_prompts][:max_prompts]
        images = sample_images(pipe, specs, images_per_prompt, seed, steps, guidance)
        results = [score(img, spec) for img, spec in zip(images, (s for s in specs for _ in range(images_per_prompt)))]
        table[row] = {"success": float(np.mean([ok for _, ok in results])),
                      "score": float(np.mean([v for v, _ in results])),
                      "prompts": len(specs), "images": len(results)}
        images_by_row[row] = images
    return table, images_by_row


def format_table(table: dict) -> str:
    lines = [f"{'category':<14} {'success':>8} {'score':>7} {'prompts':>8} {'images':>7}"]
    for row, r in table.items():
        lines.append(f"{row:<14} {r['success']:>8.3f} {r['score']:>7.3f} {r['prompts']:>8} {r['images']:>7}")
    return "\n".join(lines)


def save_grid(images_by_row: dict[str, np.ndarray], path: str | Path, per_row: int = 12, zoom: int = 3) -> None:
    """One row of `per_row` samples per table row, upscaled `zoom`x (nearest), as a PNG."""
    from PIL import Image

    rows = []
    for images in images_by_row.values():
        picks = images[np.linspace(0, len(images) - 1, per_row).round().astype(int)]  # (per_row, H, W, 3)
        rows.append(np.concatenate(list(picks), axis=1))
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.Resampling.NEAREST).save(path)
