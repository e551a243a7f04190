"""`diffrl evaluate`: score a model (optionally + LoRA / a run) on fixed seeds; per-category means with 95% CIs.

Formulas and the JSON schema of results.json: docs/evaluation.md. Image generation and scoring: diffrl.evaluation.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np

from diffrl.errors import DiffrlError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a model (optionally + LoRA / a run) on fixed seeds; per-category means with 95%% CIs",
        description="Generate images_per_prompt images per prompt with noise seeded by (seed, prompt, image) only, "
                    "so every method sees the same noise (T2I-CompBench's protocol); score them; print per-category "
                    "and overall means with 95% t confidence intervals over prompts.")
    p.add_argument("--model", help="pipeline (default: the run's model when --lora is a run, else builtin:shapes)")
    p.add_argument("--lora", metavar="RUN_OR_DIR", help="a run directory (its lora/, or the full fine-tune's unet/ "
                                                        "or SD3 transformer/), a LoRA directory, or a UNet / SD3 "
                                                        "transformer directory")
    p.add_argument("--prompts", help="prompt set (default: the run's held-out prompts, run.eval_prompts; without "
                                     "--lora RUN: shapes:color_binding_unseen-val)")
    p.add_argument("--reward", help="reward name(s), comma separated (default: the run's reward, else shapes); "
                                    "shapes_success is added on ShapesWorld prompts")
    p.add_argument("--images-per-prompt", type=int, default=None, help="images per prompt (default: the run's "
                                                                       "run.eval_images_per_prompt, else 4)")
    p.add_argument("--seed", type=int, default=0, help="noise seed shared by every method (default 0)")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the run's sample.num_steps, else the config default)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance (default: the run's, else the config's)")
    p.add_argument("--eta", type=float, help="DDIM eta >= 0 (default: the run's, else the config's); 0 is the "
                                             "deterministic sampler plain diffusers uses by default (DDIMScheduler, "
                                             "eta 0). DDIM models only (SD3: --flow-noise-level)")
    p.add_argument("--flow-noise-level", type=float, metavar="A",
                   help="flow models (SD3) only: the SDE sampler's noise level a >= 0 (default: the run's "
                        "sample.flow_noise_level, else the config's); 0 is the deterministic Euler ODE step plain "
                        "diffusers' StableDiffusion3Pipeline samples with")
    p.add_argument("--out", type=Path, help="output dir for results.json + grid.png (default: RUN/evaluate "
                                            "or runs/evaluate)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--baseline", type=Path, metavar="RESULTS_JSON",
                   help="results.json of an earlier evaluate on the same prompts, seed and sampling (e.g. the base "
                        "model): also print the paired per-prompt change with its 95%% CI")
    p.set_defaults(func=run)


def _run_config(lora: Path | None):
    """The run's Config when --lora is a run directory (or a `diffrl soup` of runs, or of soups: its first run's),
    else None."""
    from diffrl.cli.soup import SOUP_RECORD
    from diffrl.config import load_config
    from diffrl.report import CONFIG_FILE

    followed = set()
    while lora is not None and (lora / SOUP_RECORD).is_file() and lora not in followed:
        followed.add(lora)
        lora = Path(json.loads((lora / SOUP_RECORD).read_text())["runs"][0])
    if lora is not None and (lora / CONFIG_FILE).is_file():
        return load_config(lora / CONFIG_FILE)
    return None


def default_model(lora: Path | None) -> str:
    """--model's default: the run's pipeline when --lora is a run directory, else the default config's."""
    from diffrl.config import Config

    return (_run_config(lora) or Config()).model.pretrained


def held_out_prompts(config, run_dir: Path | None) -> tuple[str, list]:
    """--prompts' default: (what to record as the prompt set, the prompts) from a run's config, or the default config.

    The run's held-out prompts (run.eval_prompts, "auto" resolved as in training). A ShapesWorld run without
    held-out prompts falls back to ShapesWorld's held-out set; any other run without them needs --prompts.
    """
    from diffrl.prompts import AUTO, SHAPES_HELD_OUT, load_prompts, split_prompts

    prompts, spec = config.run.prompts, config.run.eval_prompts
    shapes_world = prompts.startswith("shapes:")
    if spec is None and shapes_world:
        spec = AUTO
    if spec is None:
        raise DiffrlError(f"--lora {run_dir}: the run has no held-out prompts (run.eval_prompts = none); give --prompts")
    if spec != AUTO:
        return spec, load_prompts(spec).all()
    split = split_prompts(prompts, AUTO)
    if split.held_out is None:
        raise DiffrlError(f"--lora {run_dir}: the run has no held-out prompts ({split.note}); give --prompts")
    return SHAPES_HELD_OUT if shapes_world else f"{AUTO} (held out of {prompts})", split.held_out


# A run's export: LoRA adapters, or a full fine-tune under the pipeline's component name (`unet`, SD3's `transformer`).
# Older SD3 runs wrote their transformer under unet/: load_denoiser goes by the saved class, so those load too.
RUN_EXPORTS = ("lora", "transformer", "unet")


def load_weights(pipe, path: Path) -> str:
    """Apply a run's lora/, transformer/ or unet/, a LoRA directory, or a full fine-tune's directory (a UNet, or SD3's
    transformer) to `pipe`; returns what was loaded, as 'lora:DIR', 'unet:DIR' or 'transformer:DIR'."""
    from diffrl.models.pipeline import denoiser_name, load_denoiser
    from diffrl.report import CONFIG_FILE

    if (path / CONFIG_FILE).is_file():
        for sub in RUN_EXPORTS:
            if (path / sub).is_dir():
                return load_weights(pipe, path / sub)
        raise DiffrlError(f"run {path} has none of {', '.join(f'{s}/' for s in RUN_EXPORTS)} "
                          "(has it saved a checkpoint?)")
    if (path / "pytorch_lora_weights.safetensors").is_file():
        pipe.load_lora_weights(str(path))
        return f"lora:{path}"
    if (path / "config.json").is_file():
        load_denoiser(pipe, path)
        return f"{denoiser_name(pipe)}:{path}"
    raise DiffrlError(f"--lora {path}: not a run directory, a LoRA directory (pytorch_lora_weights.safetensors) "
                      "or a UNet / SD3 transformer directory")


def per_prompt_means(scores: np.ndarray, images_per_prompt: int) -> np.ndarray:
    """(P * n,) image scores laid out prompt by prompt -> (P,) per-prompt nanmeans (NaN where all are NaN)."""
    grouped = scores.reshape(-1, images_per_prompt)
    counts = np.isfinite(grouped).sum(axis=1)
    sums = np.where(np.isfinite(grouped), grouped, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def summarize_scores(scores: dict[str, np.ndarray], categories: list[str], images_per_prompt: int) -> dict:
    """reward -> {'overall': CI, 'categories': {category: CI}}: per-prompt means first, then a 95% t CI over prompts."""
    from diffrl.report import mean_ci

    out = {}
    for name, values in scores.items():
        prompt_means = per_prompt_means(values, images_per_prompt)
        cats = {c: mean_ci(prompt_means[[i for i, x in enumerate(categories) if x == c]])
                for c in sorted(set(categories))}
        out[name] = {"overall": mean_ci(prompt_means), "categories": cats}
    return out


def _grid_rows(images: np.ndarray, texts: list[str], scores: np.ndarray, categories: list[str], n: int,
               rows: int = 16) -> tuple[np.ndarray, list[str]]:
    """Up to `rows` prompts, taken from the categories in turn, each with its first min(n, 8) images."""
    by_category: dict[str, list[int]] = {}
    for i, category in enumerate(categories):
        by_category.setdefault(category, []).append(i)
    order = [i for group in itertools.zip_longest(*by_category.values()) for i in group if i is not None][:rows]
    picked = [i * n + j for i in order for j in range(min(n, 8))]
    return images[picked], [f"{texts[i]} {scores[i]:.2f}" for i in picked]


def run(args) -> int:
    import torch

    from diffrl.config import Config
    from diffrl.evaluation import eval_reward_names, sample_evaluation_images, score_images
    from diffrl.models.pipeline import is_sd3_source, load_pipeline, resolve_model
    from diffrl.prompts import load_prompts
    from diffrl.report import jsonable
    from diffrl.rewards.base import get_reward
    from diffrl.runlog import image_grid

    lora = Path(args.lora) if args.lora else None
    if lora is not None and not lora.is_dir():
        raise DiffrlError(f"--lora {lora}: directory not found")
    run_config = _run_config(lora)
    defaults = run_config or Config()
    n = defaults.run.eval_images_per_prompt if args.images_per_prompt is None else args.images_per_prompt
    steps = defaults.sample.num_steps if args.steps is None else args.steps
    guidance = defaults.sample.guidance_scale if args.guidance is None else args.guidance
    eta = defaults.sample.eta if args.eta is None else args.eta
    flow_noise_level = defaults.sample.flow_noise_level if args.flow_noise_level is None else args.flow_noise_level
    if n < 1 or steps < 1 or min(eta, flow_noise_level, guidance) < 0:  # 0 noise is fine: no log-prob needed here
        raise DiffrlError("--images-per-prompt and --steps must be >= 1, --eta, --flow-noise-level and --guidance >= 0")
    if args.prompts:
        prompt_spec, prompts = args.prompts, load_prompts(args.prompts).all()
    else:
        prompt_spec, prompts = held_out_prompts(defaults, lora if run_config is not None else None)
    reward_config = Config()
    reward_config.run.reward = args.reward or defaults.run.reward
    names = eval_reward_names(reward_config, prompts)  # the reward's parts, + shapes_success on ShapesWorld prompts
    rewards = {name: get_reward(name) for name in names}
    model = args.model or defaults.model.pretrained
    revision = defaults.model.revision if run_config is not None else None
    flow = is_sd3_source(resolve_model(model), revision)
    sampling = {"num_steps": steps, "guidance_scale": guidance, **noise_setting(args, flow, eta, flow_noise_level)}
    baseline = load_baseline(args.baseline, [p for p, _ in prompts], n, args.seed, sampling) if args.baseline else None
    out = args.out or (lora / "evaluate" if run_config is not None else Path("runs/evaluate"))
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    pipe = load_pipeline(model, revision)
    if torch.cuda.is_available():
        pipe.to("cuda")
    loaded = load_weights(pipe, lora) if lora is not None else None
    sample = dataclasses.replace(defaults.sample, num_steps=steps, eta=eta, flow_noise_level=flow_noise_level,
                                 guidance_scale=guidance)
    images, texts, metas = sample_evaluation_images(pipe, sample, prompts, n, args.seed, defaults.model.resolution)
    scores = score_images(images, texts, metas, rewards)

    categories = [m.get("category", "all") for m in metas[::n]]
    summary = summarize_scores(scores, categories, n)
    result = {
        "schema": "diffrl.evaluate/1", "model": model, "weights": loaded, "prompts": prompt_spec,
        "num_prompts": len(prompts), "images_per_prompt": n, "seed": args.seed,
        "sampling": sampling,
        "ci": {"level": 0.95, "unit": "prompt", "formula": "mean +- t_{0.975, n-1} * s / sqrt(n) over per-prompt means"},
        "metrics": summary,
        "per_prompt": [{"prompt": texts[i * n], "category": categories[i],
                        "scores": {k: float(v) for k, v in
                                   ((name, per_prompt_means(s, n)[i]) for name, s in scores.items())}}
                       for i in range(len(prompts))],
        "wall_s": time.perf_counter() - start,
    }
    if baseline is not None:
        result["baseline"] = {"results": str(args.baseline), "paired_change": paired_change(result, baseline)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(jsonable(result), indent=1))
    first = names[0]
    image_grid(*_grid_rows(images, texts, scores[first], categories, n), columns=min(n, 8)).save(out / "grid.png")

    noise = f"flow noise level {flow_noise_level}" if flow else f"eta {eta}"
    print(f"diffrl: evaluate: {len(prompts)} prompts x {n} images, seed {args.seed}, {steps} steps, guidance "
          f"{guidance}, {noise}; mean [95% CI over prompts]")
    for name, stats in summary.items():
        rows = [("overall", stats["overall"])] + list(stats["categories"].items()) if len(stats["categories"]) > 1 \
            else [("overall", stats["overall"])]
        for label, s in rows:
            ci = f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]" if s["n"] > 1 else "[n/a]"
            print(f"  {name:16s} {label:14s} {s['mean']:.4f} {ci}  ({s['n']} prompts)")
    if baseline is not None:
        print(f"diffrl: evaluate: change from {args.baseline}, paired over prompts: mean [95% CI]")
        for name, c in result["baseline"]["paired_change"].items():
            ci = f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" if c["n"] > 1 else "[n/a]"
            print(f"  {name:16s} {c['mean']:+.4f} {ci}  prompts better {c['better']}, worse {c['worse']}, "
                  f"equal {c['equal']}")
    print(f"diffrl: evaluate: wrote {out / 'results.json'} and {out / 'grid.png'}")
    return 0


def noise_setting(args, flow: bool, eta: float, flow_noise_level: float) -> dict:
    """The sampler's noise as results.json records it: {'eta': E} for DDIM models, {'flow_noise_level': A} for flow
    models (SD3); the other model family's flag is refused rather than silently ignored."""
    if flow and args.eta is not None:
        raise DiffrlError("--eta is for DDIM models; this is a flow model (SD3): use --flow-noise-level (0: the "
                          "deterministic sampler of plain diffusers)")
    if not flow and args.flow_noise_level is not None:
        raise DiffrlError("--flow-noise-level is for flow models (SD3); this pipeline samples with DDIM: use --eta")
    return {"flow_noise_level": flow_noise_level} if flow else {"eta": eta}


def load_baseline(path: Path, prompts: list[str], images_per_prompt: int, seed: int, sampling: dict) -> dict:
    """An earlier results.json, refused unless it scored the same prompts with the same seeds and sampling."""
    try:
        baseline = json.loads(Path(path).read_text())
        same = {"prompts": [p["prompt"] for p in baseline["per_prompt"]] == prompts,
                "--images-per-prompt": baseline["images_per_prompt"] == images_per_prompt,
                "--seed": baseline["seed"] == seed, "sampling": baseline["sampling"] == sampling}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DiffrlError(f"--baseline {path}: not a diffrl evaluate results.json ({type(err).__name__})") from None
    if not all(same.values()):
        theirs = baseline["sampling"]  # a sampling mismatch names the setting and both values
        detail = ", ".join(f"{k} {sampling.get(k)} here, {theirs.get(k)} there"
                           for k in sorted(set(sampling) | set(theirs)) if sampling.get(k) != theirs.get(k))
        differs = [f"sampling ({detail})" if key == "sampling" else key for key, ok in same.items() if not ok]
        raise DiffrlError(f"--baseline {path} differs in {', '.join(differs)}: "
                          "a paired change needs the same prompts, images per prompt, seed and sampling")
    return baseline


def paired_change(result: dict, baseline: dict) -> dict:
    """Per metric: mean and 95% t CI over prompts of (this - baseline) per-prompt means, and the prompt counts."""
    from diffrl.report import mean_ci

    out = {}
    for name in result["per_prompt"][0]["scores"]:
        if name not in baseline["per_prompt"][0]["scores"]:
            continue
        diff = np.array([a["scores"][name] - b["scores"][name]
                         for a, b in zip(result["per_prompt"], baseline["per_prompt"])])
        out[name] = {**mean_ci(diff), "better": int((diff > 0).sum()), "worse": int((diff < 0).sum()),
                     "equal": int((diff == 0).sum())}
    return out
