"""`diffrl compare`: every method x seed on the same budget of sampled images, then the report.

--algos entries are ALGO[:KEY=VALUE[:KEY=VALUE...]], comma separated; KEY is `k` (sample.k) or any
config key (section.key), e.g. `ppo,loop:k=2,loop:k=4,loop:train.loo_std=group`. The entry, as
written, is the method's label; its runs live in OUT/runs/<label with : and = replaced by _>/seed<S>.

OUT/compare.json holds the whole spec (written before anything trains) and every finished run, so a
comparison larger than one sitting continues with the same command or `--resume OUT`: finished runs
(newest checkpoint epoch == planned epochs) are skipped, interrupted ones resume from their newest
checkpoint (`trainer.train(config, resume=True)`), and a later call with more methods or seeds trains
only what is missing. The report is rebuilt over every method in the file. Several calls may share one
OUT at once (say one per core, each with its own --seeds): every write of compare.json takes a file
lock, folds in what the others recorded meanwhile and replaces the file atomically.

--lr-sweep first trains each method on its first seed at every learning rate (OUT/sweep/<label>/lr<LR>),
picks per method the rate with the best final value of the selection metric (the first --target's
metric, else the first held-out eval/* metric; fixed in compare.json by the first call), then runs the
comparison with the chosen rate. The first seed's run at that rate is the sweep's own run (same seed, same
settings), so OUT/runs/<label>/seed<S> links to it instead of training it again.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock, so concurrent calls on one OUT are unsafe there
    fcntl = None

from diffrl import checkpoint as ckpt
from diffrl.config import images_per_epoch
from diffrl.core.estimators import ESTIMATORS
from diffrl.errors import DiffrlError, RunInterrupted
from diffrl.prompts import split_prompts
from diffrl.report import CONFIG_FILE, METRICS_FILE, jsonable, last_epoch, load_run, write_report

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


def parse_lr_sweep(spec: str) -> list[float]:
    """'3e-4,1e-3,3e-3' -> [0.0003, 0.001, 0.003]: at least 3 distinct positive values."""
    try:
        values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) < 3 or len(set(values)) != len(values) or not all(0 < v < math.inf for v in values):
        raise DiffrlError(f"--lr-sweep expects at least 3 distinct positive learning rates, e.g. 3e-4,1e-3,3e-3; "
                          f"got {spec!r}")
    return values


def plan_run(method: Method, seed: int, budget: int, run_dir: Path, config_file: str | None, base: dict[str, str],
             lr: float | None = None):
    """The Config of one run: epochs = ceil(budget / images per epoch); `lr` replaces train.learning_rate."""
    from diffrl.config import load_config

    lr_override = {} if lr is None else {"train.learning_rate": repr(lr)}
    config = load_config(config_file, {**base, "train.algo": method.algo, **method.overrides, "run.seed": str(seed),
                                       "run.out": str(run_dir), **lr_override})
    per_epoch = images_per_epoch(config)
    if budget < per_epoch:
        raise DiffrlError(f"--budget {budget} is smaller than one epoch of {method.label} ({per_epoch} images = "
                          "K x prompts_per_batch x batches_per_epoch); raise --budget")
    config.run.epochs = math.ceil(budget / per_epoch)
    return config


def _ignored(key: str) -> bool:
    return tuple(key.split(".", 1)) in IGNORED_KEYS


def _comparable(config: dict) -> dict:
    return {s: {k: v for k, v in section.items() if (s, k) not in IGNORED_KEYS} for s, section in config.items()}


def run_state(run_dir: Path, config) -> str:
    """'new', 'finished' or 'partial'; DiffrlError when the directory holds a different experiment or a record of
    an unfinished run (a record has no checkpoint to resume from)."""
    from diffrl.config import load_config, with_resolved_defaults

    if not (run_dir / CONFIG_FILE).is_file():
        return "new"
    # Keys added since the run was made take their defaults; defaults that follow the model compare as resolved.
    existing = with_resolved_defaults(load_config(run_dir / CONFIG_FILE), like=config).to_dict()
    if _comparable(existing) != _comparable(with_resolved_defaults(config).to_dict()):
        raise DiffrlError(f"{run_dir} holds a run with a different configuration; use the same settings or another --out")
    # A run's record (config and metrics only, `diffrl report`'s records/) counts as the run it records, so a
    # study whose run directories are gone continues from the records it kept.
    done = load_run(run_dir)["last_epoch"] if (run_dir / METRICS_FILE).is_file() else last_epoch(run_dir)
    if done == config.run.epochs:
        return "finished"
    if done and not ckpt.list_checkpoints(run_dir):
        raise DiffrlError(f"{run_dir} holds a record of an unfinished run (epoch {done} of {config.run.epochs}), "
                          "which cannot be resumed; remove it to train the run again")
    return "partial" if done else "new"


def execute(config, state: str, what: str, out: Path, runs: dict, key: str) -> bool:
    """Train, resume or reuse one planned run and record it as runs[key]. True when it trained."""
    from diffrl.trainer import train

    run_dir = Path(config.run.out)
    if state == "finished":
        print(f"diffrl: compare: {what} already finished in {run_dir}; reused")
        if key in runs:
            return False
        wall = None
    else:
        if state == "new" and (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()  # a run that died before its first checkpoint starts over
        how = f"resuming from epoch {last_epoch(run_dir)} of" if state == "partial" else "training"
        print(f"diffrl: compare: {what}: {how} {config.run.epochs} epochs x {images_per_epoch(config)} images "
              f"-> {run_dir}")
        start = time.perf_counter()
        try:
            train(config, resume=state == "partial")
        except RunInterrupted as err:
            raise RunInterrupted(f"{what} stopped after a checkpoint; continue the comparison with: "
                                 f"diffrl compare --resume {out}", err.exit_code - 128) from None
        wall = time.perf_counter() - start
        if last_epoch(run_dir) != config.run.epochs:  # only an early stop returns before the last epoch
            raise DiffrlError(f"{what} stopped before its last epoch ({run_dir}); compare needs whole runs")
    metrics = load_run(run_dir)["metrics"]
    runs[key] = {
        "run_dir": str(run_dir.relative_to(out)), "images": int(metrics[-1].get("images_seen", 0)), "wall_s": wall,
        "train_s": sum(r.get(k, 0.0) for r in metrics for k in ("sample_s", "reward_s", "train_s")),
        "final": {k: v for k, v in metrics[-1].items() if k == "reward_mean" or k.startswith("eval/")},
    }
    return state != "finished"


def sweep_dir(out: Path, method: Method, lr: float) -> Path:
    """The run directory of `method`'s sweep run at learning rate `lr`."""
    return out / "sweep" / method.dirname / f"lr{lr!r}"


def link_sweep_run(run_dir: Path, sweep_run: Path) -> None:
    """Make `run_dir` a link to the sweep's run at the chosen rate, which is the same run (same seed and settings;
    bit-identical where `run.deterministic` holds). A directory already there (trained before compare reused
    sweep runs) is kept."""
    if run_dir.exists() or run_dir.is_symlink():
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir.symlink_to(os.path.relpath(sweep_run, run_dir.parent), target_is_directory=True)


def _seeds(entry: dict) -> list[int]:
    """A compare.json method's seeds (files written before "seeds" was recorded: those of its runs)."""
    return entry.get("seeds") or sorted(int(s) for s in entry.get("runs", {}))


def merge_saved(record: dict, saved: dict) -> None:
    """Fold into `record` what another `compare` call on the same OUT wrote to compare.json since this one read it:
    the methods, seeds, runs and sweep runs `record` lacks. What `record` holds wins."""
    if record.get("lr_sweep") and saved.get("lr_sweep") and not record["lr_sweep"].get("metric"):
        record["lr_sweep"]["metric"] = saved["lr_sweep"].get("metric")
    for label, theirs in saved.get("methods", {}).items():
        ours = record["methods"].setdefault(label, theirs)
        if ours is theirs:
            continue
        ours["seeds"] = list(dict.fromkeys(_seeds(ours) + _seeds(theirs)))
        for part in ("runs", "sweep"):
            for key, run in (theirs.get(part) or {}).items():
                ours.setdefault(part, {}).setdefault(key, run)
        if "learning_rate" in theirs:
            ours.setdefault("learning_rate", theirs["learning_rate"])


@contextlib.contextmanager
def _locked(lock_path: Path):
    with open(lock_path, "a") as handle:
        if fcntl:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def choose_lr(label: str, sweep: dict, metric: str) -> float:
    """The learning rate whose sweep run ended with the highest finite `metric` (the first listed on ties)."""
    scores = {lr: r["final"].get(metric) for lr, r in sweep.items()}
    finite = {lr: v for lr, v in scores.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if not finite:
        raise DiffrlError(f"--lr-sweep: no sweep run of {label} logged a finite {metric}; logged: "
                          f"{', '.join(next(iter(sweep.values()))['final'])}")
    return float(max(finite, key=finite.get))


def compare(methods: list[Method], seeds: list[int] | dict[str, list[int]], budget: int, out: Path,
            config_file: str | None = None, base: dict[str, str] | None = None,
            targets: list[tuple[str, float]] = (), lr_sweep: list[float] | None = None) -> dict:
    """Train what is missing, then write compare.json and the report under `out`. Returns compare.json's content.

    `seeds`: the same list for every method, or label -> seeds (what `--resume` reads back).
    """
    base = dict(base or {})
    seeds = seeds if isinstance(seeds, dict) else {m.label: list(seeds) for m in methods}
    path = out / "compare.json"
    shared = {k: v for k, v in base.items() if not _ignored(k)}
    record = json.loads(path.read_text()) if path.is_file() else {
        "schema": SCHEMA, "budget": budget, "config_file": config_file, "set": shared,
        "lr_sweep": {"values": lr_sweep, "metric": targets[0][0] if targets else None} if lr_sweep else None,
        "targets": [], "local": {}, "methods": {}}
    for name, value, flag in (("budget", budget, "--budget"), ("config_file", config_file, "--config"),
                              ("set", shared, "--set/--k/--model/--reward/--prompts"),
                              ("lr_sweep", lr_sweep, "--lr-sweep")):
        saved = (record.get(name) or {}).get("values") if name == "lr_sweep" else record.get(name)
        if saved != value:
            raise DiffrlError(f"{path} was made with other {flag} ({saved!r}); use the same settings "
                              "(only --algos, --seeds and --target may change) or another --out")
    sweep = record.get("lr_sweep")
    for m in methods:
        if sweep and "train.learning_rate" in m.overrides:
            raise DiffrlError(f"--algos entry {m.label!r} sets train.learning_rate, which --lr-sweep chooses; drop one")

    # ---- plan and check everything before anything trains or is written
    order = {m.label: list(dict.fromkeys(_seeds(record["methods"].get(m.label, {})) + seeds[m.label]))
             for m in methods}  # a method's seeds in first-requested order; the sweep runs on the first
    runs = [(m, s, plan_run(m, s, budget, out / "runs" / m.dirname / f"seed{s}", config_file, base))
            for m in methods for s in seeds[m.label]]
    sweeps = [(m, lr, plan_run(m, order[m.label][0], budget, sweep_dir(out, m, lr), config_file, base, lr))
              for m in methods for lr in (sweep or {}).get("values") or []]
    if sweeps and not sweep["metric"] and any(split_prompts(c.run.prompts, c.run.eval_prompts).held_out is None
                                              for _, _, c in sweeps):
        raise DiffrlError("--lr-sweep picks by a held-out metric, and these runs have no held-out prompts: set "
                          "run.eval_prompts or give --target METRIC=VALUE")
    if any(c.run.early_stop_drop is not None for _, _, c in runs):
        raise DiffrlError("compare gives every run the whole --budget; drop run.early_stop_drop")
    sweep_states = [run_state(Path(c.run.out), c) for _, _, c in sweeps]
    states = [run_state(Path(c.run.out), c) for _, _, c in runs] if not sweeps else []
    record["local"] = {k: v for k, v in base.items() if _ignored(k) and k != "run.out"}  # for --resume
    record["targets"] = [{"metric": metric, "value": value} for metric, value in targets]
    for m, _, config in runs:
        entry = record["methods"].setdefault(m.label, {"algo": m.algo, "overrides": m.overrides, "seeds": None,
                                                       "images_per_epoch": None, "epochs": None, "runs": {}})
        entry.update(seeds=order[m.label], images_per_epoch=images_per_epoch(config), epochs=config.run.epochs)
    out.mkdir(parents=True, exist_ok=True)

    def save():  # under the lock: another call on this OUT may have recorded runs since we read the file
        with _locked(out / ".compare.lock"):
            if path.is_file():
                merge_saved(record, json.loads(path.read_text()))
            temporary = path.with_name(f".compare.json.{os.getpid()}")
            temporary.write_text(json.dumps(jsonable(record), indent=1))
            os.replace(temporary, path)

    save()  # the spec first: an interrupted compare continues with --resume OUT

    trained = reused = 0
    for (m, lr, config), state in zip(sweeps, sweep_states):
        entry = record["methods"][m.label]
        did = execute(config, state, f"{m.label} lr {lr!r} (sweep, seed {config.run.seed})", out,
                      entry.setdefault("sweep", {}), repr(lr))
        trained, reused = trained + did, reused + (not did)
        if not sweep["metric"]:  # the first held-out metric logged: the trainer's eval/<first reward part>
            sweep["metric"] = next((k for k in entry["sweep"][repr(lr)]["final"] if k.startswith("eval/")), None)
        save()
    if sweeps:
        for m in methods:
            entry = record["methods"][m.label]
            entry["learning_rate"] = choose_lr(m.label, entry["sweep"], sweep["metric"])
            print(f"diffrl: compare: {m.label}: learning rate {entry['learning_rate']!r} (best final {sweep['metric']})")
        runs = [(m, s, plan_run(m, s, budget, Path(c.run.out), config_file, base,
                                record["methods"][m.label]["learning_rate"])) for m, s, c in runs]
        for m, s, c in runs:
            if s == order[m.label][0]:
                lr = record["methods"][m.label]["learning_rate"]
                link_sweep_run(Path(c.run.out), sweep_dir(out, m, lr))
        states = [run_state(Path(c.run.out), c) for _, _, c in runs]
        save()
    for (m, seed, config), state in zip(runs, states):
        did = execute(config, state, f"{m.label} seed {seed}", out, record["methods"][m.label]["runs"], str(seed))
        trained, reused = trained + did, reused + (not did)
        save()  # after every run: an interrupted compare loses nothing

    groups = {label: [load_run(out / r["run_dir"]) for _, r in sorted(entry["runs"].items(), key=lambda kv: int(kv[0]))]
              for label, entry in record["methods"].items() if entry["runs"]}
    for label in record["methods"].keys() - groups.keys():
        print(f"diffrl: compare: note: {label} has no finished run yet; continue with: diffrl compare --resume {out}")
    extra = {"budget": budget}
    if sweep:
        extra["lr_sweep"] = {"metric": sweep["metric"], "values": sweep["values"], "methods": {
            label: {"seed": e["seeds"][0], "chosen": e.get("learning_rate"),
                    "final": {lr: r["final"].get(sweep["metric"]) for lr, r in e.get("sweep", {}).items()}}
            for label, e in record["methods"].items()}}
    summary = write_report(groups, out, title=f"diffrl compare ({budget} images per run)", extra=extra, targets=targets)
    record["summary"] = {label: {k: g[k] for k in ("seeds", "images", "train_seconds", "final", "time_to_target")}
                         for label, g in summary.items()}
    save()
    print(f"diffrl: compare: {trained} run(s) trained, {reused} reused; wrote {path}, {out / 'report.html'}")
    return record


def resume_spec(out: Path) -> dict:
    """compare()'s arguments as saved in OUT/compare.json, for `diffrl compare --resume OUT`."""
    path = out / "compare.json"
    try:
        record = json.loads(path.read_text())
        methods = parse_algos(",".join(record["methods"]))
        return {"methods": methods, "budget": record["budget"], "out": out, "config_file": record["config_file"],
                "seeds": {m.label: _seeds(record["methods"][m.label]) for m in methods},
                "base": {**record["set"], **record.get("local", {})},
                "targets": [(t["metric"], t["value"]) for t in record.get("targets", [])],
                "lr_sweep": (record.get("lr_sweep") or {}).get("values")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DiffrlError(f"--resume {out}: no readable compare.json there ({type(err).__name__}); "
                          f"start it with: diffrl compare ... --out {out}") from None
