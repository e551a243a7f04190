"""Write settings into a run's config.yaml before it first resumes: a branch of a run (branch_pair.sh) that changes
what its last phase trains. `diffrl train --resume` refuses changed settings, rightly, for a run continued; a
branch is a new run, and its config.yaml then records what it trains.

    python docs/tuning/with_settings.py RUN/config.yaml train.step_weight_power=0.5 [KEY=VALUE ...]
    python docs/tuning/with_settings.py --check shapes_spatial KEY=VALUE ...   # only check them against a preset
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from diffrl.config import load_config, parse_overrides


def checked(config: str | Path, settings: list[str]) -> dict[str, str]:
    """The settings as overrides, once diffrl's own loader has applied them to `config` (a config file or preset):
    an unknown key or a bad value stops here."""
    overrides = parse_overrides(settings)
    load_config(config, overrides)
    return overrides


def with_settings(path: Path, settings: list[str]) -> None:
    """Set each section.key=value in the YAML config at `path`, checked first (`checked`: the file untouched on a
    bad one); every other line keeps its value."""
    overrides = checked(path, settings)
    config = yaml.safe_load(path.read_text())
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        config.setdefault(section, {})[name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


if __name__ == "__main__":
    if sys.argv[1] == "--check":
        checked(sys.argv[2], sys.argv[3:])
    else:
        with_settings(Path(sys.argv[1]), sys.argv[2:])
