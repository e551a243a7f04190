"""`diffrl rewards`: the registered reward names (any `module:function` works too)."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("rewards", help="list the registered reward names")
    p.set_defaults(func=run)


def run(args) -> int:
    from diffrl.rewards import reward_names

    print("\n".join(reward_names()))
    return 0
