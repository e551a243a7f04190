"""Write settings into a run's config.yaml before it first resumes: a branch of a run (branch_pair.sh) that changes
what its last phase trains. `diffrl train --resume` refuses changed settings, rightly, for a run continued; a
branch is a new run, and its config.yaml then records what it trains.

    python docs/tuning/with_settings.py RUN/config.yaml train.step_weight_power=0.5 [KEY=VALUE ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from diffrl.config import load_config, parse_overrides


def with_settings(path: Path, settings: list[str]) -> None:
    """Set each section.key=value in the YAML config at `path`, checked by diffrl's own loader first (an unknown
    key or a bad value stops here, the file untouched); every other line keeps its value."""
    overrides = parse_overrides(settings)
    load_config(path, overrides)
    config = yaml.safe_load(path.read_text())
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        config.setdefault(section, {})[name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


if __name__ == "__main__":
    with_settings(Path(sys.argv[1]), sys.argv[2:])
