"""`diffrl train`: RL fine-tuning from flags, a config file or preset, and `--set` overrides; `--resume`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from diffrl.config import Config, preset_names
from diffrl.core.estimators import ESTIMATORS
from diffrl.errors import DiffrlError

# Flags that map onto config keys (None: not given, keep the config's value).
FLAGS = {
    "model": "model.pretrained", "reward": "run.reward", "algo": "train.algo", "k": "sample.k",
    "prompts": "run.prompts", "epochs": "run.epochs", "seed": "run.seed", "out": "run.out",
}


def flag_default(flag: str) -> object:
    """The config default behind a flag (FLAGS), so `--help` cannot drift from the config."""
    section, key = FLAGS[flag].split(".")
    return getattr(getattr(Config(), section), key)


def estimator_help() -> str:
    return "\n".join(f"  {name:14s} {e.summary}" for name, e in ESTIMATORS.items())


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="RL fine-tune a Stable Diffusion pipeline against a reward",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a diffusers Stable Diffusion pipeline with RL. With no arguments: LOOP (K=4) on the "
                    "built-in ShapesWorld model, color-binding prompts, exact ShapesWorld reward.",
        epilog="algorithms:\n" + estimator_help() + "\n\nrewards: see `diffrl rewards`. Any other setting: "
               "--set section.key=value (see docs/configuration.md), e.g. --set train.learning_rate=1e-4")
    p.add_argument("--model", help="pipeline: local diffusers dir, hub id, or builtin:shapes (default)")
    p.add_argument("--reward", help="NAME[,NAME...] or module:function; NAME:WEIGHT to weight "
                                    f"(default: {flag_default('reward')})")
    p.add_argument("--algo", choices=list(ESTIMATORS), help=f"estimator (default: {flag_default('algo')})")
    p.add_argument("--k", type=int, help=f"images per prompt K (default: {flag_default('k')})")
    p.add_argument("--prompts", help="prompt file, shapes:<category>_<split>, builtin:animals, t2i-compbench:..., or "
                                     "module:function (held-out prompts: run.eval_prompts, see `diffrl config`)")
    p.add_argument("--epochs", type=int, help=f"training epochs (default: {flag_default('epochs')})")
    p.add_argument("--seed", type=int, help=f"seed (default: {flag_default('seed')})")
    p.add_argument("--out", help="run directory (default: runs/<date>-<time>-<algo>)")
    p.add_argument("--config", help=f"TOML/YAML config file or preset name ({', '.join(preset_names())})")
    p.add_argument("--b2", action="store_true", help="turn on B2-DiffuRL (progressive steps + branch sampling)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.clip_range=0.1 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.set_defaults(func=run)


def run(args) -> int:
    from diffrl.config import load_config, parse_overrides
    from diffrl.run_state import CONFIG_FILE
    from diffrl.trainer import train

    overrides = {key: str(getattr(args, flag)) for flag, key in FLAGS.items() if getattr(args, flag) is not None}
    if args.b2:
        overrides["b2.enabled"] = "true"
    overrides.update(parse_overrides(args.overrides))
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise DiffrlError(f"{run_dir} is not a diffrl run directory (no {CONFIG_FILE}); cannot resume")
        overrides.pop("run.out", None)
        config = load_config(run_dir / CONFIG_FILE, {**overrides, "run.out": str(run_dir)})
        out = train(config, resume=True)
    else:
        config = load_config(args.config, overrides)
        out = train(config)
    if os.environ.get("RANK", "0") == "0":  # one summary per job, not per process
        from diffrl.runlog import held_out_summary, read_metrics

        for line in held_out_summary(read_metrics(out)):
            print(f"diffrl: {line}")
        print(f"diffrl: done; run directory {out}")
    return 0
