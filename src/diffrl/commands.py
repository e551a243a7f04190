"""`diffrl evaluate | compare | report`: fixed-seed evaluation, method comparisons, reports from run dirs.

The main CLI calls `register(subparsers)`. Statistics and figures live in `diffrl.report`, the
comparison driver in `diffrl.compare`; this file holds the argument parsing and `evaluate`.
Formulas, JSON schemas and the LOOP-figure recipes: docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from diffrl.errors import DiffrlError


def register(subparsers) -> None:
    e = subparsers.add_parser(
        "evaluate", help="score a model (optionally + LoRA / a run) on fixed seeds; per-category means with 95%% CIs",
        description="Generate images_per_prompt images per prompt with noise seeded by (seed, prompt, image) only, "
                    "so every method sees the same noise (T2I-CompBench's protocol); score them; print per-category "
                    "and overall means with 95% t confidence intervals over prompts.")
    e.add_argument("--model", help="pipeline (default: the run's model when --lora is a run, else builtin:shapes)")
    e.add_argument("--lora", metavar="RUN_OR_DIR", help="a run directory (its lora/ or unet/), a LoRA directory, "
                                                        "or a UNet directory")
    e.add_argument("--prompts", help="prompt set (default: the run's run.eval_prompts, else shapes:color_binding_val)")
    e.add_argument("--reward", help="reward name(s), comma separated (default: the run's reward, else shapes); "
                                    "shapes_success is added on ShapesWorld prompts")
    e.add_argument("--images-per-prompt", type=int, default=None, help="images per prompt (default: the run's "
                                                                       "run.eval_images_per_prompt, else 4)")
    e.add_argument("--seed", type=int, default=0, help="noise seed shared by every method (default 0)")
    e.add_argument("--steps", type=int, help="DDIM steps (default: the run's sample.num_steps, else the config default)")
    e.add_argument("--guidance", type=float, help="classifier-free guidance (default: the run's, else the config's)")
    e.add_argument("--eta", type=float, help="DDIM eta (default: the run's, else the config's)")
    e.add_argument("--out", type=Path, help="output dir for results.json + grid.png (default: RUN/evaluate "
                                            "or runs/evaluate)")
    e.add_argument("--threads", type=int, help="torch CPU threads")
    e.add_argument("--baseline", type=Path, metavar="RESULTS_JSON",
                   help="results.json of an earlier evaluate on the same prompts, seed and sampling (e.g. the base "
                        "model): also print the paired per-prompt change with its 95%% CI")
    e.set_defaults(func=cmd_evaluate)

    c = subparsers.add_parser(
        "compare", help="train several methods x seeds on one image budget; curves with 80%% prediction intervals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Runs every method x seed with the same budget of sampled images (epochs = ceil(budget / "
                    "images per epoch)), then writes compare.json, reward_vs_images.png, reward_vs_wallclock.png "
                    "and report.html. Finished runs are skipped and interrupted ones resumed from their newest "
                    "checkpoint, so the same command (or --resume DIR) continues a comparison; more methods or "
                    "seeds later train only what is missing.",
        epilog="--algos syntax: ALGO[:k=N][:section.key=value...], comma separated, e.g.\n"
               "  --algos ppo,loop:k=2,loop:k=3,loop:k=4\n  --algos loop,loop:train.loo_std=group\n"
               "e.g. diffrl compare --algos loop,ppo --seeds 3 --budget 640 --lr-sweep 3e-4,1e-3,3e-3 \\\n"
               "       --target eval/shapes_success=0.85 --out runs/cmp    # later: diffrl compare --resume runs/cmp")
    c.add_argument("--algos", help="methods, e.g. loop,ppo,reinforce,reinforce-loo or loop:k=2,ppo")
    c.add_argument("--seeds", help="a count (3 -> seeds 0,1,2) or a list (16,27,42); default 3")
    c.add_argument("--budget", type=int, help="sampled images per run")
    c.add_argument("--k", type=int, help="K for methods without their own :k=")
    c.add_argument("--model", help="pipeline for every run (model.pretrained)")
    c.add_argument("--reward", help="training reward for every run (run.reward)")
    c.add_argument("--prompts", help="training prompts for every run (run.prompts)")
    c.add_argument("--config", help="TOML/YAML config file or preset applied to every run")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable)")
    c.add_argument("--lr-sweep", metavar="LR,LR,LR", help="first train each method on its first seed at each of "
                   "these (>= 3) learning rates and compare with the one of best final held-out metric (or --target's)")
    add_target_flag(c)
    c.add_argument("--out", type=Path, help="comparison directory (runs/, sweep/, compare.json, report)")
    c.add_argument("--resume", type=Path, metavar="DIR", help="continue the comparison in DIR with the methods, seeds, "
                   "budget and settings saved in DIR/compare.json (no other flags needed)")
    c.set_defaults(func=cmd_compare)

    r = subparsers.add_parser("report", help="rebuild figures + HTML from finished run directories",
                              description="Groups runs by their config's algorithm and K (seeds are replicates) and "
                                          "writes report.json, reward_vs_images.png, reward_vs_wallclock.png, "
                                          "report.html.")
    r.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    r.add_argument("--out", type=Path, default=Path("report"), help="output directory (default: ./report)")
    add_target_flag(r)
    r.set_defaults(func=cmd_report)


def add_target_flag(parser) -> None:
    parser.add_argument("--target", dest="targets", action="append", default=[], metavar="METRIC=VALUE",
                        help="also report the images and seconds until METRIC first reaches VALUE, e.g. "
                             "eval/shapes_success=0.85 (repeatable)")


# --------------------------------------------------------------------------- compare / report


def cmd_compare(args) -> int:
    from diffrl.compare import compare, parse_algos, parse_lr_sweep, parse_seeds, resume_spec
    from diffrl.config import parse_overrides
    from diffrl.report import parse_target

    targets = [parse_target(t) for t in args.targets]
    flags = {"--algos": args.algos, "--seeds": args.seeds, "--budget": args.budget, "--out": args.out,
             "--config": args.config, "--lr-sweep": args.lr_sweep, "--k": args.k, "--model": args.model,
             "--reward": args.reward, "--prompts": args.prompts}
    if args.resume is not None:
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise DiffrlError(f"--resume DIR takes its methods and settings from DIR/compare.json; drop {', '.join(given)} "
                              "(to add methods or seeds, rerun the full command with --out DIR)")
        spec = resume_spec(args.resume)
        spec["base"].update(parse_overrides(args.overrides))
        compare(**{**spec, "targets": targets or spec["targets"]})
        return 0
    if args.algos is None or args.budget is None or args.out is None:
        raise DiffrlError("compare needs --algos, --budget and --out (or --resume DIR)")
    if args.budget < 1:
        raise DiffrlError(f"--budget must be a positive number of images, got {args.budget}")
    base = parse_overrides(args.overrides)
    for flag, key in (("k", "sample.k"), ("model", "model.pretrained"), ("reward", "run.reward"),
                      ("prompts", "run.prompts")):
        if getattr(args, flag) is not None:
            base[key] = str(getattr(args, flag))
    compare(parse_algos(args.algos), parse_seeds(args.seeds or "3"), args.budget, args.out, args.config, base,
            targets, parse_lr_sweep(args.lr_sweep) if args.lr_sweep else None)
    return 0


def cmd_report(args) -> int:
    from diffrl.report import default_label, load_run, parse_target, write_report

    targets = [parse_target(t) for t in args.targets]
    groups: dict[str, list[dict]] = {}
    for run_dir in args.runs:
        run = load_run(run_dir)
        if not run["finished"]:
            print(f"diffrl: report: {run_dir} is not finished; skipped")
            continue
        groups.setdefault(default_label(run["config"]), []).append(run)
    if not groups:
        raise DiffrlError("no finished run among the given directories")
    for label, runs in groups.items():
        runs.sort(key=lambda r: r["config"]["run"]["seed"])
        settings = [{s: {k: v for k, v in sec.items() if k not in ("seed", "out", "progress", "threads")}
                     for s, sec in r["config"].items()} for r in runs]
        if any(x != settings[0] for x in settings[1:]):
            print(f"diffrl: report: note: the runs of {label} differ in more than their seed")
    write_report(groups, args.out, title="diffrl report", targets=targets)
    print(f"diffrl: report: {sum(map(len, groups.values()))} run(s) in {len(groups)} group(s); "
          f"wrote {args.out / 'report.html'}")
    return 0


# --------------------------------------------------------------------------- evaluate


def _run_config(lora: Path | None):
    """The run's Config when --lora is a run directory, else None."""
    from diffrl.config import load_config
    from diffrl.report import CONFIG_FILE

    if lora is not None and (lora / CONFIG_FILE).is_file():
        return load_config(lora / CONFIG_FILE)
    return None


def load_weights(pipe, path: Path) -> str:
    """Apply a run's lora/ or unet/, a LoRA directory, or a UNet directory to `pipe`; returns what was loaded."""
    from diffrl.report import CONFIG_FILE

    if (path / CONFIG_FILE).is_file():
        for sub in ("lora", "unet"):
            if (path / sub).is_dir():
                return load_weights(pipe, path / sub)
        raise DiffrlError(f"run {path} has neither lora/ nor unet/ (has it saved a checkpoint?)")
    if (path / "pytorch_lora_weights.safetensors").is_file():
        pipe.load_lora_weights(str(path))
        return f"lora:{path}"
    if (path / "config.json").is_file():
        from diffusers import UNet2DConditionModel

        pipe.unet = UNet2DConditionModel.from_pretrained(str(path)).to(pipe.unet.device).eval()
        return f"unet:{path}"
    raise DiffrlError(f"--lora {path}: not a run directory, a LoRA directory (pytorch_lora_weights.safetensors) "
                      "or a UNet directory")


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


def cmd_evaluate(args) -> int:
    import torch

    from diffrl.config import Config
    from diffrl.evaluation import generate_fixed_seed, score_images
    from diffrl.models.pipeline import image_size, load_pipeline, resolve_model
    from diffrl.prompts import load_prompts
    from diffrl.report import jsonable
    from diffrl.rewards.base import get_reward
    from diffrl.runlog import image_grid
    from diffrl.sampling import Policy
    from diffrl.trainer import eval_reward_names

    lora = Path(args.lora) if args.lora else None
    if lora is not None and not lora.is_dir():
        raise DiffrlError(f"--lora {lora}: directory not found")
    run = _run_config(lora)
    defaults = run or Config()
    n = defaults.run.eval_images_per_prompt if args.images_per_prompt is None else args.images_per_prompt
    steps = defaults.sample.num_steps if args.steps is None else args.steps
    guidance = defaults.sample.guidance_scale if args.guidance is None else args.guidance
    eta = defaults.sample.eta if args.eta is None else args.eta
    if n < 1 or steps < 1 or eta <= 0 or guidance < 0:
        raise DiffrlError("--images-per-prompt and --steps must be >= 1, --eta > 0, --guidance >= 0")
    prompt_spec = args.prompts or defaults.run.eval_prompts or Config().run.eval_prompts
    prompts = load_prompts(prompt_spec).all()
    reward_config = Config()
    reward_config.run.reward = args.reward or defaults.run.reward
    # The reward's parts, + shapes_success on ShapesWorld prompts (those carry "objects"; other prompt sets may
    # carry a "category" too, which alone would make eval_reward_names add shapes_success).
    shapes_world = all("objects" in meta for _, meta in prompts)
    names = eval_reward_names(reward_config, prompts if shapes_world else None)
    rewards = {name: get_reward(name) for name in names}
    sampling = {"num_steps": steps, "guidance_scale": guidance, "eta": eta}
    baseline = load_baseline(args.baseline, [p for p, _ in prompts], n, args.seed, sampling) if args.baseline else None
    model = args.model or defaults.model.pretrained
    resolve_model(model)
    out = args.out or (lora / "evaluate" if run is not None else Path("runs/evaluate"))
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    pipe = load_pipeline(model, defaults.model.revision if run is not None else None)
    if torch.cuda.is_available():
        pipe.to("cuda")
    loaded = load_weights(pipe, lora) if lora is not None else None
    scheduler = pipe.scheduler
    device = pipe.unet.device
    policy = Policy.from_scheduler(pipe.unet, scheduler, device, eta, guidance)
    size = image_size(pipe, defaults.model.resolution)
    latent_shape = (pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    images, texts, metas = generate_fixed_seed(pipe, policy, prompts, n, args.seed, steps, latent_shape)
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

    print(f"diffrl: evaluate: {len(prompts)} prompts x {n} images, seed {args.seed}, {steps} steps, guidance "
          f"{guidance}, eta {eta}; mean [95% CI over prompts]")
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
        raise DiffrlError(f"--baseline {path} differs in {', '.join(k for k, v in same.items() if not v)}: "
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
