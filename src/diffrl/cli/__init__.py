"""`diffrl` command line: `main`, the parser, exit codes. One module per command, all in one style.

    diffrl train          cli/train.py         RL fine-tuning (diffrl.trainer)
    diffrl evaluate       cli/evaluate.py      fixed-seed evaluation with confidence intervals (diffrl.evaluation)
    diffrl compare        cli/compare.py       methods x seeds on one image budget (diffrl.compare)
    diffrl report         cli/report.py        figures and HTML from finished runs (diffrl.report)
    diffrl soup           cli/soup.py          the average of runs' LoRA adapters, a model soup (diffrl.soup)
    diffrl rewards        cli/rewards.py       the registered reward names
    diffrl config         cli/config.py        every config key with its default and meaning
    diffrl shapes         cli/shapes.py        ShapesWorld: pretrain / report (diffrl.shapes.cli)
    diffrl serve-reward   cli/serve_reward.py  a reward over HTTP (diffrl.rewards.remote)

Each module has `add_parser(subparsers)`, which adds its subcommand and sets `func`, and `run(args) -> int`
(its exit code). Heavy imports happen inside `run`, so `diffrl --help` stays quick.

Exit codes (docs/reliability.md): 0 done; 2 bad input (one line on stderr, no traceback); 3 run halted by a
fault guard (the newest checkpoint resumes); 128 + signal after SIGINT / SIGTERM with a checkpoint written.
"""
from __future__ import annotations

import argparse
import os
import sys

from diffrl.cli import compare, config, evaluate, report, rewards, serve_reward, shapes, soup, train
from diffrl.errors import DiffrlError, RunHalted, RunInterrupted

EXIT_OK, EXIT_BAD_INPUT, EXIT_HALTED = 0, DiffrlError.exit_code, RunHalted.exit_code

COMMANDS = (train, evaluate, compare, report, soup, rewards, config, shapes, serve_reward)  # in `diffrl --help` order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffrl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="RL fine-tuning of text-to-image diffusion models (LOOP, PPO/DDPO, REINFORCE, GRPO, B2-DiffuRL).",
        epilog="algorithms:\n" + train.estimator_help())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def quiet_libraries() -> None:
    """Library progress bars and load-time warnings drown diffrl's own output; keep errors only."""
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
        parser.print_help()
        return EXIT_OK
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
