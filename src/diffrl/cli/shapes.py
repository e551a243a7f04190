"""`diffrl shapes pretrain | report`: the ShapesWorld base model. Its parser and commands live with ShapesWorld,
in `diffrl.shapes.cli` (each subcommand sets `func`)."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from diffrl.shapes.cli import register

    register(subparsers)
