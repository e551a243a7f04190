"""One RL epoch, timed: diffrl's LOOP loop against TRL 0.23.1's DDPOTrainer, same pipeline, settings, run.

    .venv/bin/python benchmarks/bench_epoch.py                       # both pipelines, diffrl + TRL, 3 rounds
    .venv/bin/python benchmarks/bench_epoch.py --impls diffrl --variants chunk_size=1 chunk_size=8 channels_last
    .venv/bin/python benchmarks/bench_epoch.py --flops-only          # FLOP profile + matmul roof, no epochs

One epoch = sample P prompts x K images in one batch (DDIM, eta, CFG), reward, advantages,
`inner_epochs` passes of `minibatches` optimizer updates over every (sample, timestep) pair.
Every measurement is a fresh subprocess (so peak RSS = that process's `ru_maxrss`; CUDA: max
allocated) that runs `--warmup` epochs, then `--epochs` timed ones. Rounds interleave the
implementations (A, B, A, B, ...) so a changing machine load hits both alike; medians are reported.

diffrl runs through `diffrl.trainer.train` and reads the per-epoch `sample_s`, `reward_s`,
`train_s`, `images_per_s` from metrics.jsonl. TRL runs from its own virtualenv
(benchmarks/.venv-trl, created on first use; never a dependency of diffrl), with
`DDPOTrainer.step` timed around `_generate_samples` and `compute_rewards`.
TRL has no K: its prompt function yields each drawn prompt K times in a row, so its sampling
batch holds exactly the same P x K (prompt, image) layout and the same images per epoch.
This file imports neither diffrl nor TRL at the top: the same file is the worker in both venvs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRL_VENV = HERE / ".venv-trl"
TRL_PINS = ["trl==0.23.1", "diffusers==0.42.1", "transformers==5.23.0", "peft==0.21.2", "accelerate==1.15.0"]
RESULT_TAG = "BENCH_RESULT "

# Per pipeline: reward and prompts shared by both implementations.
PIPELINES = {
    "shapes": {"reward": "shapes", "prompts": "shapes:color_binding_train"},
    "sd2": {"reward": "jpeg_compressibility", "prompts": "shapes:color_binding_train"},
    "sd2-512": {"reward": "jpeg_compressibility", "prompts": "shapes:color_binding_train"},
    "tiny": {"reward": "brightness", "prompts": "shapes:color_binding_train"},
}


# ----------------------------------------------------------------------------- pipelines

def shapes_pipeline(cache: Path) -> tuple[str, str]:
    """The built-in ShapesWorld model, or (while it is not shipped yet) a random pipeline of its exact shape."""
    from diffrl.shapes import BUILTIN_MODEL_DIR

    if (BUILTIN_MODEL_DIR / "model_index.json").is_file():
        return str(BUILTIN_MODEL_DIR), "builtin ShapesWorld model (trained weights)"
    from diffrl.models.tiny import build_tiny_pipeline
    from diffrl.shapes.pretrain import PretrainConfig, vocabulary

    cfg = PretrainConfig()
    out = cache / "shapes_shaped"
    if not (out / "model_index.json").is_file():
        build_tiny_pipeline(out, vocabulary(), sample_size=cfg.image_size, block_channels=cfg.block_channels,
                            cross_attention_dim=cfg.text_dim, vae_channels=cfg.vae_channels,
                            text_layers=cfg.text_layers, seed=0)
    return str(out), (f"random weights, ShapesWorld shape ({cfg.image_size}px, UNet {cfg.block_channels}, "
                      f"cross-attn {cfg.text_dim}, VAE {cfg.vae_channels}): builtin model not shipped yet")


def sd_pipeline(out: Path, image_size: int, unet_widths: tuple, heads: tuple, text_width: int, text_layers: int,
                text_heads: int, vae_widths: tuple) -> str:
    """A random pipeline with SD 2.x's layout, built from configs and saved with save_pretrained into `out`.

    SD 2.x: UNet 3 x CrossAttnDownBlock2D + DownBlock2D, 2 layers per block, linear projections,
    `attention_head_dim` = heads per level, 77-token CLIP text, 4-level VAE (8x downsampling).
    """
    if (out / "model_index.json").is_file():
        return str(out)
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffrl.models.tiny import write_word_tokenizer
    from diffrl.shapes.pretrain import vocabulary

    torch.manual_seed(0)
    tokenizer = write_word_tokenizer(vocabulary(), out / "tokenizer")
    tokenizer.model_max_length = 77
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=4 * text_width,
        num_hidden_layers=text_layers, num_attention_heads=text_heads, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=image_size // 8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=unet_widths,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_width, attention_head_dim=heads, use_linear_projection=True, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_widths,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, norm_num_groups=32, sample_size=image_size, scaling_factor=0.18215)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return str(out)


def sd2_pipeline(cache: Path, image_size: int = 64) -> tuple[str, str]:
    """SD 2.x's layout at smaller widths (a CPU-sized benchmark): UNet (32, 64, 128, 128) with heads (1, 2, 4, 4)
    (head dim 32), cross-attention / text width 128, 4 text layers, VAE (32, 64, 64, 64); 64x64 images -> 8x8x4 latents.
    """
    description = (f"random SD-2.x-shaped: {image_size}px, UNet (32, 64, 128, 128) x2 layers, heads (1, 2, 4, 4), "
                   "linear proj, cross-attn 128, CLIP text 4x128 (77 tokens), VAE (32, 64, 64, 64)")
    return sd_pipeline(cache / f"sd2_shaped_{image_size}", image_size, (32, 64, 128, 128), (1, 2, 4, 4), 128, 4, 4,
                       (32, 64, 64, 64)), description


def sd2_full_pipeline(cache: Path) -> tuple[str, str]:
    """SD 2.x's real sizes (a GPU benchmark): 512x512 images -> 64x64x4 latents, UNet (320, 640, 1280, 1280) with
    heads (5, 10, 20, 20) (head dim 64; 866M parameters), OpenCLIP-H-sized text encoder (23 layers x 1024),
    VAE (128, 256, 512, 512). Random weights: the timing does not depend on them."""
    description = ("random SD 2.x-sized: 512px (64x64x4 latents), UNet (320, 640, 1280, 1280) x2 layers, "
                   "heads (5, 10, 20, 20), linear proj, cross-attn 1024, CLIP text 23x1024 (77 tokens), "
                   "VAE (128, 256, 512, 512)")
    return sd_pipeline(cache / "sd2_full_512", 512, (320, 640, 1280, 1280), (5, 10, 20, 20), 1024, 23, 16,
                       (128, 256, 512, 512)), description


def tiny_pipeline(cache: Path) -> tuple[str, str]:
    """The test suite's tiny pipeline (16px, UNet (16, 32)): for the smoke run only."""
    from diffrl.models.tiny import build_tiny_pipeline
    from diffrl.shapes.pretrain import vocabulary

    out = cache / "tiny"
    if not (out / "model_index.json").is_file():
        build_tiny_pipeline(out, vocabulary(), sample_size=16, block_channels=(16, 32), cross_attention_dim=16,
                            vae_channels=(16, 32), seed=0)
    return str(out), "tiny random test pipeline (16px, UNet (16, 32))"


BUILDERS = {"shapes": shapes_pipeline, "sd2": sd2_pipeline, "sd2-512": sd2_full_pipeline, "tiny": tiny_pipeline}


# ----------------------------------------------------------------------------- workers (run in a subprocess)

def _peak_memory_mb() -> dict:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["device"] = torch.cuda.get_device_name()
    return out


def _draw_prompts(spec: dict, epochs: int) -> list[list[tuple[str, dict]]]:
    """The prompts diffrl's trainer draws on rank 0 (same source, same generator), one list per epoch."""
    import numpy as np

    from diffrl.prompts import load_prompts

    source = load_prompts(spec["prompts"])
    rng = np.random.default_rng([spec["seed"], 0])
    return [source.sample(rng, spec["prompts_per_batch"]) for _ in range(epochs)]


def worker_diffrl(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import diffrl.run_state as run_state
    import diffrl.trainer as trainer
    from diffrl import load_config

    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    variant = spec.get("variant", {})
    original_load, original_lora = run_state.load_pipeline, run_state.add_lora  # start_run builds the model

    def load_pipeline(*args, **kwargs):
        pipe = original_load(*args, **kwargs)
        if variant.get("channels_last"):
            pipe.unet.to(memory_format=torch.channels_last)
        processors.update(type(p).__name__ for p in pipe.unet.attn_processors.values())
        return pipe

    processors: set[str] = set()

    def add_lora(unet, *args, **kwargs):
        original_lora(unet, *args, **kwargs)
        if variant.get("compile"):
            unet.compile()  # in place: parameter names (and so checkpoints) unchanged

    # The run's closing work (checkpoint, LoRA export, matplotlib report) is not part of an epoch:
    # take the memory high-water mark when the final save starts, i.e. right after the last epoch.
    original_save, epoch_peak = trainer.save, {}

    def save(*args, **kwargs):
        epoch_peak.setdefault("mb", _peak_memory_mb())
        return original_save(*args, **kwargs)

    run_state.load_pipeline, run_state.add_lora, trainer.save = load_pipeline, add_lora, save
    chunk = variant.get("chunk_size")  # None: diffrl's default
    out = Path(tempfile.mkdtemp(prefix="bench_diffrl_"))
    epochs = spec["warmup"] + spec["epochs"]
    config = load_config(overrides={
        "train.mixed_precision": spec["mixed_precision"], **variant.get("config", {}),
        "model.pretrained": spec["pipeline"], "model.lora_rank": spec["lora_rank"], "model.lora_alpha": spec["lora_rank"],
        "model.train_text_encoder": False,  # TRL trains the UNet's adapters only: the same work on both sides
        "sample.num_steps": spec["steps"], "sample.eta": spec["eta"], "sample.guidance_scale": spec["guidance"],
        "sample.k": spec["k"], "sample.prompts_per_batch": spec["prompts_per_batch"],
        "train.algo": "loop", "train.inner_epochs": spec["inner_epochs"], "train.minibatches": spec["minibatches"],
        "train.chunk_size": 10**9 if chunk == "all" else chunk,
        "train.timestep_fraction": spec["timestep_fraction"], "train.learning_rate": 3e-4,
        "train.min_noise_std": 0.0,  # every step, as TRL trains: the same work on both sides
        "run.reward": spec["reward"], "run.prompts": spec["prompts"], "run.seed": spec["seed"],
        "run.epochs": epochs, "run.eval_prompts": "none", "run.tensorboard": False, "run.progress": False,
        "run.image_every": 10**6, "run.save_every": 10**6, "run.threads": spec["threads"], "run.out": str(out),
    })
    start = time.perf_counter()
    trainer.train(config)
    total = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "sample_s" in r]
    assert len(records) == epochs, records
    from diffusers.models.attention_processor import AttnProcessor2_0

    timed = records[spec["warmup"]:]
    return {
        "impl": "diffrl", "epochs": [{k: r[k] for k in ("sample_s", "reward_s", "train_s", "images_per_s")}
                                     for r in timed],
        "warmup_epoch_s": [r["sample_s"] + r["reward_s"] + r["train_s"] for r in records[:spec["warmup"]]],
        "images_per_epoch": round(records[-1]["images_per_s"] * (records[-1]["sample_s"] + records[-1]["reward_s"]
                                                                  + records[-1]["train_s"])),
        "updates_per_epoch": records[-1]["updates"], "process_total_s": total,
        "rss_after_import_mb": rss_after_import, "attn_processors": sorted(processors),
        "sdpa": processors == {AttnProcessor2_0.__name__}, **epoch_peak["mb"],
        "process_peak_rss_mb": _peak_memory_mb()["peak_rss_mb"],
    }


def trl_reward(reward):
    """TRL's reward_fn around a diffrl reward: TRL hands float (N, 3, H, W) images in [0, 1], diffrl rewards take
    uint8 (N, H, W, 3)."""
    import numpy as np
    import torch

    def reward_fn(images, prompts, metadata):
        array = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return np.asarray(reward(array, list(prompts), list(metadata)), dtype=np.float32), {}

    return reward_fn


def worker_trl(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    from diffrl.rewards.base import parse_reward_spec

    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    epochs = spec["warmup"] + spec["epochs"]
    k, n = spec["k"], spec["k"] * spec["prompts_per_batch"]
    # TRL has no K: yield each prompt K times in a row -> the same P x K batch layout as diffrl.
    queue = [pair for batch in _draw_prompts(spec, epochs) for pair in batch for _ in range(k)]
    reward_fn = trl_reward(parse_reward_spec(spec["reward"]))

    def prompt_fn():
        return queue.pop(0)

    logdir = tempfile.mkdtemp(prefix="bench_trl_")
    config = DDPOConfig(
        num_epochs=epochs, seed=spec["seed"], log_with=None, save_freq=10**6, mixed_precision=spec["mixed_precision"],
        project_kwargs={"logging_dir": logdir, "automatic_checkpoint_naming": True, "total_limit": 1,
                        "project_dir": logdir},
        sample_num_steps=spec["steps"], sample_eta=spec["eta"], sample_guidance_scale=spec["guidance"],
        sample_batch_size=n, sample_num_batches_per_epoch=1,
        train_batch_size=n // spec["minibatches"], train_gradient_accumulation_steps=1,
        train_num_inner_epochs=spec["inner_epochs"], train_timestep_fraction=spec["timestep_fraction"],
        train_cfg=True, train_learning_rate=3e-4, train_clip_range=1e-4, train_adv_clip_max=5.0,
        train_max_grad_norm=1.0, per_prompt_stat_tracking=True, per_prompt_stat_tracking_buffer_size=16,
        per_prompt_stat_tracking_min_count=16, async_reward_computation=False,
    )
    from accelerate import PartialState

    PartialState()  # TRL's pipeline logs through accelerate before DDPOTrainer creates the Accelerator
    pipeline = DefaultDDPOStableDiffusionPipeline(spec["pipeline"], use_lora=True)
    trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipeline)
    assert spec["lora_rank"] == 4, "TRL 0.23.1 hard-codes LoRA r=4, alpha=4"

    marks = {}
    generate, rewards = trainer._generate_samples, trainer.compute_rewards

    def timed_generate(*args, **kwargs):
        result = generate(*args, **kwargs)
        marks["sampled"] = time.perf_counter()
        return result

    def timed_rewards(*args, **kwargs):
        result = rewards(*args, **kwargs)
        marks["rewarded"] = time.perf_counter()
        return result

    trainer._generate_samples, trainer.compute_rewards = timed_generate, timed_rewards
    records, global_step = [], 0
    start_all = time.perf_counter()
    for epoch in range(epochs):
        start = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        end = time.perf_counter()
        records.append({"sample_s": marks["sampled"] - start, "reward_s": marks["rewarded"] - marks["sampled"],
                        "train_s": end - marks["rewarded"], "images_per_s": n / (end - start)})
    import diffusers

    processors = {type(p).__name__ for p in pipeline.unet.attn_processors.values()}
    return {
        "impl": "trl", "epochs": records[spec["warmup"]:],
        "warmup_epoch_s": [r["sample_s"] + r["reward_s"] + r["train_s"] for r in records[:spec["warmup"]]],
        "images_per_epoch": n, "updates_per_epoch": global_step // epochs,
        "process_total_s": time.perf_counter() - start_all, "rss_after_import_mb": rss_after_import,
        "attn_processors": sorted(processors), "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
        **_peak_memory_mb(),
    }


def worker_flops(spec: dict) -> dict:
    """FLOPs of one epoch from one counted UNet call of each shape, and the machine's fp32 matmul rate."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diffrl.models.pipeline import add_lora, load_pipeline

    torch.set_num_threads(spec["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the count is the same; a GPU only gets it sooner
    pipe = load_pipeline(spec["pipeline"]).to(device)
    add_lora(pipe.unet, spec["lora_rank"], spec["lora_rank"], ["to_k", "to_q", "to_v", "to_out.0"])
    unet = pipe.unet
    c, s = unet.config.in_channels, unet.config.sample_size
    text = pipe.text_encoder.config
    m = 2  # one CFG pair
    x = torch.randn(m, c, s, s, device=device)
    t = torch.full((m,), 500, device=device)
    emb = torch.randn(m, pipe.tokenizer.model_max_length, text.hidden_size, device=device)

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    with torch.no_grad():
        fwd = count(lambda: unet(x, t, encoder_hidden_states=emb).sample)
        vae = count(lambda: pipe.vae.decode(torch.randn(1, c, s, s, device=device)).sample)
    unet.train()
    fwd_bwd = count(lambda: unet(x, t, encoder_hidden_states=emb).sample.square().mean().backward())
    n = spec["k"] * spec["prompts_per_batch"]
    steps_trained = max(1, -(-int(spec["timestep_fraction"] * spec["steps"] * 1000) // 1000))
    sample_flops = n * spec["steps"] * fwd / m * 2 + n * vae  # CFG: 2 UNet rows per image per step
    train_flops = spec["inner_epochs"] * n * steps_trained * fwd_bwd / m * 2
    return {"unet_forward_per_image_cfg_pair": fwd, "unet_forward_backward_per_image_cfg_pair": fwd_bwd,
            "backward_over_forward": (fwd_bwd - fwd) / fwd, "vae_decode_per_image": vae,
            "epoch_sample_flops": sample_flops, "epoch_train_flops": train_flops,
            "epoch_flops": sample_flops + train_flops,
            "matmul": matmul_rate(spec["threads"], device, {"no": "fp32"}.get(spec["mixed_precision"],
                                                                              spec["mixed_precision"]))}


def matmul_rate(threads: int, device: str = "cpu", dtype: str = "fp32", repeats: int = 5) -> dict:
    """Best-of-N GFLOP/s of a square matmul (2048 on CPU, 8192 on a GPU) in the epoch's compute dtype:
    the roof for the achieved rate. fp32 is full fp32 (torch's default, no TF32): an epoch that uses TF32
    (train.allow_tf32, TRL's allow_tf32, cuDNN's convolutions) can run above it."""
    import torch

    torch.set_num_threads(threads)
    size = 8192 if device == "cuda" else 2048
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a, b = (torch.randn(size, size, device=device, dtype=kind) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return {"threads": threads, "device": device, "dtype": dtype, "size": size,
            "best_gflops": 2 * size**3 / min(times) / 1e9,
            "median_gflops": 2 * size**3 / statistics.median(times) / 1e9, "load_1min": os.getloadavg()[0]}


WORKERS = {"diffrl": worker_diffrl, "trl": worker_trl, "flops": worker_flops}


# ----------------------------------------------------------------------------- orchestration

def has_trl(python: str | Path) -> bool:
    return subprocess.run([str(python), "-c", "import trl; assert trl.__version__ == '0.23.1'"],
                          capture_output=True).returncode == 0


def ensure_trl_venv() -> Path:
    """This interpreter if it has TRL 0.23.1 (e.g. a GPU machine with its own torch), else benchmarks/.venv-trl
    with TRL 0.23.1 (the last release with DDPOTrainer), created with the CPU build of torch pinned first."""
    if has_trl(sys.executable):
        return Path(sys.executable)
    python = TRL_VENV / "bin" / "python"
    if python.is_file() and has_trl(python):
        return python
    print(f"bench: creating {TRL_VENV} (TRL 0.23.1)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_PINS], check=True)
    return python


def run_worker(python: str, kind: str, spec: dict, timeout: float) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore")
    load = os.getloadavg()[0]
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):]) | {"load_1min_before": load, "load_1min_after": os.getloadavg()[0]}
    raise RuntimeError(f"{kind} worker failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


def parse_variant(text: str) -> dict:
    """'chunk_size=8,channels_last' -> {'chunk_size': 8, 'channels_last': True}; 'base' -> {};
    'train.gradient_checkpointing=true' -> {'config': {'train.gradient_checkpointing': 'true'}} (any diffrl key)."""
    out: dict = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if key == "base":
            continue
        if "." in key and sep:
            out.setdefault("config", {})[key] = value
            continue
        if key not in ("chunk_size", "channels_last", "compile"):
            raise SystemExit(f"unknown variant key {key!r} (chunk_size=N|all, channels_last, compile, "
                             "or a diffrl config key such as train.gradient_checkpointing=true)")
        out[key] = (value if value == "all" else int(value)) if sep else True
    return out


def summarize(results: list[dict]) -> dict:
    """Median per (pipeline, label) of every per-epoch metric and of peak memory."""
    groups: dict = {}
    for r in results:
        groups.setdefault((r["pipeline_name"], r["label"]), []).append(r)
    table = {}
    for (pipe, label), runs in groups.items():
        epochs = [e for r in runs for e in r["epochs"]]
        row = {key: statistics.median(e[key] for e in epochs) for key in ("images_per_s", "sample_s", "reward_s", "train_s")}
        row["epoch_s"] = statistics.median(e["sample_s"] + e["reward_s"] + e["train_s"] for e in epochs)
        row["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in runs)
        if "cuda_max_allocated_mb" in runs[0]:
            row["cuda_max_allocated_mb"] = statistics.median(r["cuda_max_allocated_mb"] for r in runs)
            row["device"] = runs[0]["device"]
        row["rss_after_import_mb"] = statistics.median(r["rss_after_import_mb"] for r in runs)
        row["warmup_epoch_s"] = statistics.median(r["warmup_epoch_s"][0] for r in runs) if runs[0]["warmup_epoch_s"] else None
        row["load_1min"] = [round(r["load_1min_before"], 2) for r in runs]
        row["measurements"] = len(epochs)
        row["images_per_epoch"] = runs[0]["images_per_epoch"]
        row["updates_per_epoch"] = runs[0]["updates_per_epoch"]
        row["attn_processors"] = runs[0]["attn_processors"]
        table.setdefault(pipe, {})[label] = row
    for pipe, rows in table.items():
        if "trl" in rows:
            for label, row in rows.items():
                if label != "trl":
                    row["ratio_vs_trl"] = {k: row[k] / rows["trl"][k] for k in
                                           ("images_per_s", "epoch_s", "sample_s", "train_s", "reward_s", "peak_rss_mb",
                                            "cuda_max_allocated_mb") if rows["trl"].get(k)}
    return table


def markdown(table: dict, meta: dict) -> str:
    """One row per (pipeline, implementation); peak memory is the GPU's max allocated where there is one, else RSS."""
    gpu = any("cuda_max_allocated_mb" in r for rows in table.values() for r in rows.values())
    memory = "cuda_max_allocated_mb" if gpu else "peak_rss_mb"
    devices = sorted({r["device"] for rows in table.values() for r in rows.values() if "device" in r})
    lines = [f"threads={meta['threads']}, mixed precision {meta['settings']['mixed_precision']}, "
             f"device {', '.join(devices) or 'CPU'}, load(1 min) seen: {meta['load_seen']}", "",
             f"| pipeline | impl | images/s | epoch s | sample s | reward s | train s | {'GPU peak' if gpu else 'peak RSS'} MB | "
             "img/s vs TRL | memory vs TRL |", "|---|---|---|---|---|---|---|---|---|---|"]
    for pipe, rows in table.items():
        for label, r in rows.items():
            ratio = r.get("ratio_vs_trl", {})
            shown = {k: f"{ratio[k]:.2f}x" if k in ratio else "-" for k in ("images_per_s", memory)}
            lines.append(f"| {pipe} | {label} | {r['images_per_s']:.2f} | {r['epoch_s']:.2f} | {r['sample_s']:.2f} | "
                         f"{r['reward_s']:.2f} | {r['train_s']:.2f} | {r[memory]:.0f} | "
                         f"{shown['images_per_s']} | {shown[memory]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", default="shapes,sd2",
                        help="comma list of shapes, sd2, sd2-512 (SD 2.x's real sizes: a GPU benchmark), tiny, or a pipeline dir")
    parser.add_argument("--impls", default="diffrl,trl", help="comma list of diffrl, trl")
    parser.add_argument("--variants", nargs="*", default=["base"],
                        help="diffrl variants, each 'base' or comma-joined chunk_size=N|all, channels_last, compile "
                             "or diffrl config keys (train.gradient_checkpointing=true)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (fresh processes each)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first in each process")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs in each process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--prompts-per-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--inner-epochs", type=int, default=1)
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--timestep-fraction", type=float, default=1.0)
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
                        help="both implementations' accelerate mixed precision (diffrl: train.mixed_precision, its "
                             "frozen weights in that dtype; TRL: DDPOConfig.mixed_precision); 'no' = fp32")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a failed measurement and go on (default: stop at the first failure)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flops", action="store_true", help="also count FLOPs and time the matmul roof")
    parser.add_argument("--flops-only", action="store_true")
    parser.add_argument("--cache", default=None, help="where generated pipelines go (default: a temp dir)")
    parser.add_argument("--out", default=None, help="write results JSON here (and a .md table beside it)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = WORKERS[args.worker](json.loads(args.spec))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="bench_pipes_"))
    cache.mkdir(parents=True, exist_ok=True)
    impls = [i for i in args.impls.split(",") if i]
    trl_python = str(ensure_trl_venv()) if "trl" in impls and not args.flops_only else None
    base = {"k": args.k, "prompts_per_batch": args.prompts_per_batch, "steps": args.steps, "eta": args.eta,
            "guidance": args.guidance, "inner_epochs": args.inner_epochs, "minibatches": args.minibatches,
            "timestep_fraction": args.timestep_fraction, "lora_rank": args.lora_rank, "seed": args.seed,
            "threads": args.threads, "warmup": args.warmup, "epochs": args.epochs, "mixed_precision": args.mixed_precision}
    pipes = {}
    for name in filter(None, args.pipelines.split(",")):
        if name in BUILDERS:
            path, description = BUILDERS[name](cache)
            pipes[name] = dict(PIPELINES[name], pipeline=path, description=description)
        else:
            pipes[Path(name).name] = dict(PIPELINES["tiny"], pipeline=name, description=name)
    meta = {"settings": base, "pipelines": pipes, "threads": args.threads, "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(), "start_load_1min": os.getloadavg()[0]}
    results, flops, failures = [], {}, []

    def measure(python: str, kind: str, spec: dict) -> dict | None:
        try:
            return run_worker(python, kind, spec, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            if not args.keep_going:
                raise
            failures.append({"kind": kind, "spec": spec, "error": str(err)[-3000:]})
            print(f"bench: FAILED {kind} {spec.get('variant') or ''}: {str(err)[-1500:]}", flush=True)
            return None

    def report() -> dict:  # after every measurement: a run stopped early keeps what it measured
        meta["load_seen"] = sorted({round(r["load_1min_before"], 1) for r in results})
        table = summarize(results) if results else {}
        for name, f in flops.items():
            for row in table.get(name, {}).values():
                row["achieved_gflops"] = f["epoch_flops"] / row["epoch_s"] / 1e9
                row["sample_gflops"] = f["epoch_sample_flops"] / row["sample_s"] / 1e9
                row["train_gflops"] = f["epoch_train_flops"] / row["train_s"] / 1e9
                for phase in ("achieved", "sample", "train"):
                    row[f"{phase}_fraction_of_matmul_roof"] = row[f"{phase}_gflops"] / f["matmul"]["best_gflops"]
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"meta": meta, "table": table, "flops": flops, "runs": results,
                                                  "failures": failures}, indent=1))
            if table:
                Path(args.out).with_suffix(".md").write_text(markdown(table, meta) + "\n")
        return table

    if args.flops or args.flops_only:
        for name, p in pipes.items():
            if (counted := measure(sys.executable, "flops", dict(base, **p))) is not None:
                flops[name] = counted
                print(f"bench: flops {name}: {json.dumps(counted)}", flush=True)
    runs = [("trl", "trl", {})] if "trl" in impls else []
    if "diffrl" in impls:
        runs = [("diffrl", "diffrl" if v == "base" else f"diffrl[{v}]", parse_variant(v)) for v in args.variants] + runs
    for round_ in range([args.rounds, 0][args.flops_only]):
        for name, p in pipes.items():
            for kind, label, variant in runs:
                spec = dict(base, **p, variant=variant)
                python = trl_python if kind == "trl" else sys.executable
                result = measure(python, kind, spec)
                if result is None:
                    continue
                result.update(pipeline_name=name, label=label, round=round_)
                results.append(result)
                e = result["epochs"][-1]
                gpu = f"  GPU peak {result['cuda_max_allocated_mb']:.0f} MB" if "cuda_max_allocated_mb" in result else ""
                print(f"bench: round {round_} {name:7s} {label:28s} {e['images_per_s']:.2f} img/s  sample "
                      f"{e['sample_s']:.2f}s reward {e['reward_s']:.2f}s train {e['train_s']:.2f}s  "
                      f"peak {result['peak_rss_mb']:.0f} MB{gpu}  load {result['load_1min_before']:.2f}", flush=True)
                report()
    table = report()
    if table:
        print(markdown(table, meta))
    if failures:
        print(f"bench: {len(failures)} measurement(s) failed (see 'failures' in the JSON)", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
