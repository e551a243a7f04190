"""`diffrl compare`: train several methods x seeds on one image budget (diffrl.compare), resumable."""
from __future__ import annotations

import argparse
from pathlib import Path

from diffrl.cli.report import add_target_flag
from diffrl.errors import DiffrlError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
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
    p.add_argument("--algos", help="methods, e.g. loop,ppo,reinforce,reinforce-loo or loop:k=2,ppo")
    p.add_argument("--seeds", help="a count (3 -> seeds 0,1,2) or a list (16,27,42); default 3")
    p.add_argument("--budget", type=int, help="sampled images per run")
    p.add_argument("--k", type=int, help="K for methods without their own :k=")
    p.add_argument("--model", help="pipeline for every run (model.pretrained)")
    p.add_argument("--reward", help="training reward for every run (run.reward)")
    p.add_argument("--prompts", help="training prompts for every run (run.prompts)")
    p.add_argument("--config", help="TOML/YAML config file or preset applied to every run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable)")
    p.add_argument("--lr-sweep", metavar="LR,LR,LR", help="first train each method on its first seed at each of "
                   "these (>= 3) learning rates and compare with the one of best final held-out metric (or --target's)")
    add_target_flag(p)
    p.add_argument("--out", type=Path, help="comparison directory (runs/, sweep/, compare.json, report)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the comparison in DIR with the methods, seeds, "
                   "budget and settings saved in DIR/compare.json (no other flags needed)")
    p.set_defaults(func=run)


def run(args) -> int:
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
