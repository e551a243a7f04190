"""`diffrl compare`: every method x seed on the same budget of sampled images, then the report.

--algos entries are ALGO[:KEY=VALUE[:KEY=VALUE...]], comma separated; KEY is `k` (sample.k) or any
config key (section.key), e.g. `ppo,loop:k=2,loop:k=4,loop:train.loo_std=group`. The entry, as
written, is the method's label; its runs live in OUT/runs/<label with : and = replaced by _>/seed<S>.

OUT/compare.json accumulates: a later call with more methods or seeds trains only the runs that are
not finished (finished = newest checkpoint epoch == planned epochs), resumes interrupted ones, and
rebuilds the report over every method in the file.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from diffrl.config import images_per_epoch
from diffrl.core.estimators import ESTIMATORS
from diffrl.errors import DiffrlError
from diffrl.report import CONFIG_FILE, jsonable, last_epoch, load_run, write_report

SCHEMA = "diffrl.compare/1"
# Settings that may differ between calls without making a run a different experiment.
IGNORED_KEYS = {("run", "progress"), ("run", "threads"), ("run", "tensorboard"), ("run", "wandb"), ("run", "out")}


@dataclass
class Method:
    label: str  # the --algos entry as written, e.g. "loop:k=2"
    algo: str
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9.-]+", "_", self.label)


def parse_algos(spec: str) -> list[Method]:
    """'loop:k=2,ppo' -> [Method('loop:k=2', 'loop', {'sample.k': '2'}), Method('ppo', 'ppo')]."""
    methods = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        algo, *settings = entry.split(":")
        if algo not in ESTIMATORS:
            raise DiffrlError(f"unknown algorithm {algo!r} in --algos; choose from {', '.join(ESTIMATORS)}")
        overrides = {}
        for item in settings:
            key, sep, value = item.partition("=")
            key = "sample.k" if key.strip() == "k" else key.strip()
            if not sep or "." not in key or not value.strip():
                raise DiffrlError(f"--algos entry {entry!r}: expected ALGO:k=N or ALGO:section.key=value, got {item!r}")
            overrides[key] = value.strip()
        methods.append(Method(entry, algo, overrides))
    if not methods:
        raise DiffrlError("--algos is empty; e.g. --algos loop,ppo")
    if len({m.dirname for m in methods}) != len(methods):
        raise DiffrlError(f"--algos lists a method twice: {spec!r}")
    return methods


def parse_seeds(spec: str) -> list[int]:
    """'3' -> [0, 1, 2]; '16,27,42' -> [16, 27, 42]."""
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()] if "," in spec else list(range(int(spec)))
    except ValueError:
        raise DiffrlError(f"--seeds expects a count (3) or a list (16,27,42), got {spec!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise DiffrlError(f"--seeds must name at least one distinct seed, got {spec!r}")
    return seeds


def plan(methods: list[Method], seeds: list[int], budget: int, out: Path, config_file: str | None,
         base: dict[str, str]) -> list[tuple[Method, int, object]]:
    """(method, seed, config) for every run, epochs = ceil(budget / images per epoch). Validates everything first."""
    from diffrl.config import load_config

    runs = []
    for method in methods:
        for seed in seeds:
            run_dir = out / "runs" / method.dirname / f"seed{seed}"
            config = load_config(config_file, {**base, "train.algo": method.algo, **method.overrides,
                                               "run.seed": str(seed), "run.out": str(run_dir)})
            per_epoch = images_per_epoch(config)
            if budget < per_epoch:
                raise DiffrlError(f"--budget {budget} is smaller than one epoch of {method.label} ({per_epoch} images = "
                                  "K x prompts_per_batch x batches_per_epoch); raise --budget")
            config.run.epochs = math.ceil(budget / per_epoch)
            runs.append((method, seed, config))
    return runs


def _comparable(config: dict) -> dict:
    return {s: {k: v for k, v in section.items() if (s, k) not in IGNORED_KEYS} for s, section in config.items()}


def run_state(run_dir: Path, config) -> str:
    """'new', 'finished' or 'partial'; DiffrlError when the directory holds a different experiment."""
    if not (run_dir / CONFIG_FILE).is_file():
        return "new"
    existing = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    if _comparable(existing) != _comparable(config.to_dict()):
        raise DiffrlError(f"{run_dir} holds a run with a different configuration; use the same settings or another --out")
    done = last_epoch(run_dir)
    if done == config.run.epochs:
        return "finished"
    return "partial" if done else "new"


def compare(methods: list[Method], seeds: list[int], budget: int, out: Path, config_file: str | None = None,
            base: dict[str, str] | None = None) -> dict:
    """Train what is missing, then write compare.json and the report under `out`. Returns compare.json's content."""
    from diffrl.trainer import train

    base = dict(base or {})
    path = out / "compare.json"
    shared = {k: v for k, v in base.items() if tuple(k.split(".", 1)) not in IGNORED_KEYS}
    record = json.loads(path.read_text()) if path.is_file() else {
        "schema": SCHEMA, "budget": budget, "config_file": config_file, "set": shared, "methods": {}}
    for name, value, flag in (("budget", budget, "--budget"), ("config_file", config_file, "--config"),
                              ("set", shared, "--set/--k/--model/--reward/--prompts")):
        if record.get(name) != value:
            raise DiffrlError(f"{path} was made with other {flag} ({record.get(name)!r}); use the same settings "
                              "(only --algos and --seeds may change) or another --out")
    runs = plan(methods, seeds, budget, out, config_file, base)
    states = [run_state(Path(c.run.out), c) for _, _, c in runs]  # all checked before anything trains
    trained = reused = 0
    for (method, seed, config), state in zip(runs, states):
        run_dir = Path(config.run.out)
        entry = record["methods"].setdefault(method.label, {
            "algo": method.algo, "overrides": method.overrides,
            "images_per_epoch": images_per_epoch(config), "epochs": config.run.epochs, "runs": {}})
        if state == "finished":
            reused += 1
            print(f"diffrl: compare: {method.label} seed {seed} already finished in {run_dir}; reused")
            if str(seed) in entry["runs"]:
                continue
            wall = None
        else:
            if state == "new" and (run_dir / "metrics.jsonl").exists():
                (run_dir / "metrics.jsonl").unlink()  # a run that died before its first checkpoint starts over
            print(f"diffrl: compare: {method.label} seed {seed}: {config.run.epochs} epochs x "
                  f"{images_per_epoch(config)} images -> {run_dir}")
            start = time.perf_counter()
            train(config, resume=state == "partial")
            wall = time.perf_counter() - start
            if last_epoch(run_dir) != config.run.epochs:  # the trainer stopped on SIGINT/SIGTERM after a checkpoint
                print(f"diffrl: compare: stopped during {method.label} seed {seed}; the same command resumes it")
                raise KeyboardInterrupt
            trained += 1
        metrics = load_run(run_dir)["metrics"]
        entry["runs"][str(seed)] = {
            "run_dir": str(run_dir.relative_to(out)), "images": int(metrics[-1].get("images_seen", 0)),
            "wall_s": wall, "train_s": sum(r.get(k, 0.0) for r in metrics for k in ("sample_s", "reward_s", "train_s")),
            "final": {k: v for k, v in metrics[-1].items() if k == "reward_mean" or k.startswith("eval/")},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(jsonable(record), indent=1))  # after every run: an interrupted compare loses nothing
    groups = {label: [load_run(out / r["run_dir"]) for _, r in sorted(entry["runs"].items(), key=lambda kv: int(kv[0]))]
              for label, entry in record["methods"].items()}
    record["summary"] = {label: {k: g[k] for k in ("seeds", "images", "train_seconds", "final")}
                         for label, g in write_report(groups, out, title=f"diffrl compare ({budget} images per run)",
                                                      extra={"budget": budget}).items()}
    path.write_text(json.dumps(jsonable(record), indent=1))
    print(f"diffrl: compare: {trained} run(s) trained, {reused} reused; wrote {path}, {out / 'report.html'}")
    return record
