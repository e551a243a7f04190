"""`diffrl config`: every config key with its default and meaning (the source of docs/configuration.md)."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("config", help="list every config key with its default and meaning")
    p.set_defaults(func=run)


def run(args) -> int:
    from diffrl.config import describe_fields

    for key, default, help_text in describe_fields():
        print(f"{key} = {default!r}\n    {help_text}")
    return 0
