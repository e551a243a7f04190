"""`diffrl` command line. User mistakes print one line and exit 2; no tracebacks."""
from __future__ import annotations

import argparse
import os
import sys

from diffrl.core.estimators import ESTIMATORS
from diffrl.errors import DiffrlError, RunHalted, RunInterrupted

EXIT_BAD_INPUT = 2

# Flags that map onto config keys (None: not given, keep the config's value).
TRAIN_FLAGS = {
    "model": "model.pretrained", "reward": "run.reward", "algo": "train.algo", "k": "sample.k",
    "prompts": "run.prompts", "epochs": "run.epochs", "seed": "run.seed", "out": "run.out",
}


def _estimator_help() -> str:
    return "\n".join(f"  {name:14s} {e.summary}" for name, e in ESTIMATORS.items())


def add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="RL fine-tune a Stable Diffusion pipeline against a reward",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a diffusers Stable Diffusion pipeline with RL. With no arguments: LOOP (K=4) on the "
                    "built-in ShapesWorld model, color-binding prompts, exact ShapesWorld reward.",
        epilog="algorithms:\n" + _estimator_help() + "\n\nrewards: see `diffrl rewards`. Any other setting: "
               "--set section.key=value (see docs/configuration.md), e.g. --set train.learning_rate=1e-4")
    p.add_argument("--model", help="pipeline: local diffusers dir, hub id, or builtin:shapes (default)")
    p.add_argument("--reward", help="NAME[,NAME...] or module:function; NAME:WEIGHT to weight (default: shapes)")
    p.add_argument("--algo", choices=list(ESTIMATORS), help="estimator (default: loop)")
    p.add_argument("--k", type=int, help="images per prompt K (default: 4)")
    p.add_argument("--prompts", help="prompt file, shapes:<category>_<split>, builtin:animals, t2i-compbench:..., or module:function")
    p.add_argument("--epochs", type=int, help="training epochs (default: 60)")
    p.add_argument("--seed", type=int, help="seed (default: 0)")
    p.add_argument("--out", help="run directory (default: runs/<date>-<time>-<algo>)")
    p.add_argument("--config", help="TOML/YAML config file or preset name (e.g. loop_sd2)")
    p.add_argument("--b2", action="store_true", help="turn on B2-DiffuRL (progressive steps + branch sampling)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.clip_range=0.1 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from diffrl.config import load_config, parse_overrides
    from diffrl.trainer import CONFIG_FILE, train

    overrides = {key: str(getattr(args, flag)) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if args.b2:
        overrides["b2.enabled"] = "true"
    overrides.update(parse_overrides(args.overrides))
    if args.resume:
        from pathlib import Path

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


def cmd_rewards(args) -> int:
    from diffrl.rewards import reward_names

    print("\n".join(reward_names()))
    return 0


def cmd_config(args) -> int:
    from diffrl.config import describe_fields

    for key, default, help_text in describe_fields():
        print(f"{key} = {default!r}\n    {help_text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffrl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="RL fine-tuning of text-to-image diffusion models (LOOP, PPO/DDPO, REINFORCE, GRPO, B2-DiffuRL).",
        epilog="algorithms:\n" + _estimator_help())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train(sub)
    sub.add_parser("rewards", help="list the registered reward names").set_defaults(func=cmd_rewards)
    sub.add_parser("config", help="list every config key with its default and meaning").set_defaults(func=cmd_config)
    for module in ("diffrl.shapes.cli", "diffrl.rewards.remote", "diffrl.commands"):
        try:
            __import__(module, fromlist=["register"]).register(sub)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return parser


def quiet_libraries() -> None:
    """Library progress bars and load-time warnings drown diffrl's own output; keep errors only."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        if args.command is None:
            parser.print_help()
            return 0
    quiet_libraries()
    try:
        return args.func(args)
    except DiffrlError as err:
        stopped = isinstance(err, (RunHalted, RunInterrupted))
        if not stopped or os.environ.get("RANK", "0") == "0":  # one line per job, not per process
            print(f"diffrl: {'stopped' if isinstance(err, RunInterrupted) else 'error'}: {err}", file=sys.stderr)
        return err.exit_code  # 2 bad input, 3 halted by a fault, 128 + signal after SIGINT/SIGTERM
    except KeyboardInterrupt:
        print("diffrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
