"""Time to target, end to end: diffrl's defaults against TRL 0.23.1's DDPOTrainer with its own defaults.

    .venv/bin/python benchmarks/bench_ttt.py                          # the measurement (make bench-ttt): 2 seeds
    .venv/bin/python benchmarks/bench_ttt.py --smoke --out /tmp/t.json  # ~3 minutes: tiny budgets, 6 prompts

Task: the built-in ShapesWorld model, dense `shapes` reward, training prompts
shapes:color_binding_unseen-train; held-out metric: success (`shapes_success`) on
shapes:color_binding_unseen-val (27 prompts). Per seed:

1. TRL trains for --trl-minutes of DDPOTrainer.step time (its own per-epoch checkpoint writes are timed and
   left out, as diffrl's are). Every --trl-eval-every-s seconds of that time, and at 0 s and at the end, it
   saves the UNet's LoRA with TRL's own `save_checkpoint` (untimed).
2. diffrl trains with `diffrl train`'s defaults and run.eval_every=1, so the first epoch at which it reaches
   the target is known; its training seconds are metrics.jsonl's sample_s + reward_s + train_s, which leave
   the held-out evaluation out (diffrl.report.run_curves). It is stopped (SIGTERM: it checkpoints) once
   that time passes TRL's budget.
3. Every TRL snapshot, and diffrl's final lora/ as a cross-check, is scored by `diffrl evaluate` in diffrl's
   venv: the evaluator diffrl's trainer runs (generate_fixed_seed: noise seeded by (seed, prompt, image),
   8 images per prompt, diffrl's sampling defaults), same prompts, seed = the run seed. Not timed.

Readout: TRL's target = held-out success of its final snapshot; diffrl's time to target = its training
seconds until eval/shapes_success first reaches it (capped at TRL's budget); ratio = diffrl s / TRL s,
with the mean and 80% prediction interval over seeds. When TRL's final value is not above its base value
the ratio is undefined (diffrl would "reach" it at 0 s) and is reported as such, with a second readout:
the time diffrl needs to reach TRL's best snapshot value (base + TRL's largest gain).

The two sides of a seed run side by side (1 torch thread each by default) or, with --sequential, one
after the other. Like bench_epoch.py, this file imports neither diffrl nor TRL at the top: it is the
worker in both venvs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_epoch lies beside this file, also when this file is loaded by path (tests)
from bench_epoch import RESULT_TAG, TRL_PINS, _peak_memory_mb, ensure_trl_venv, trl_reward  # noqa: E402

REPO = HERE.parent
MODEL = "builtin:shapes"
REWARD = "shapes"
TRAIN_PROMPTS = "shapes:color_binding_unseen-train"
HELD_OUT = "shapes:color_binding_unseen-val"
HELD_OUT_SUBSET = "bench_ttt:held_out_prompts"  # the first --max-eval-prompts of HELD_OUT (smoke runs)
MAX_EVAL_ENV = "BENCH_TTT_MAX_EVAL_PROMPTS"
METRIC = "eval/shapes_success"
# The evaluator averages per-prompt means, the trainer all images: the same 0/1 flags summed in another order,
# so an equal success rate may differ in the last bits. Values closer than this count as equal.
TOLERANCE = 1e-9
# What --diffrl-set may not change: the task, the evaluation, and what this script sets itself.
RESERVED_DIFFRL_KEYS = ("model.pretrained", "run.reward", "run.prompts", "run.eval_prompts", "run.eval_every",
                        "run.eval_images_per_prompt", "run.seed", "run.out", "run.threads", "run.epochs",
                        "sample.num_steps", "sample.guidance_scale", "sample.eta")
FULL = {"seeds": "0,1", "trl_minutes": 20.0, "trl_eval_every_s": 120.0, "diffrl_epochs": None,
        "images_per_prompt": None, "max_eval_prompts": None, "progress_every_s": 60.0}
SMOKE = {"seeds": "0,1", "trl_minutes": 0.5, "trl_eval_every_s": 10.0, "diffrl_epochs": 2,
         "images_per_prompt": 2, "max_eval_prompts": 6, "progress_every_s": 15.0}


# ----------------------------------------------------------------------------- readout (pure)

def next_snapshot_due(train_s: float, every_s: float) -> float:
    """The next multiple of every_s after train_s: snapshots fall at the first step past each multiple."""
    return (math.floor(train_s / every_s) + 1) * every_s


def reach_seconds(metrics: list[dict], value: float, budget_s: float) -> float | None:
    """diffrl's training seconds until METRIC first reached `value` (within TOLERANCE); None if not within budget_s."""
    from diffrl.report import time_to_target

    hit = time_to_target(metrics, METRIC, value - TOLERANCE)
    return hit[1] if hit is not None and hit[1] <= budget_s else None


def seed_readout(trl_points: list[dict], diffrl_metrics: list[dict], budget_s: float) -> dict:
    """One seed's time-to-target readout.

    trl_points: TRL's evaluated snapshots, [{'seconds', 'value'}] by training time, the first at 0 s (its base);
    diffrl_metrics: diffrl's metrics.jsonl records; budget_s: the cap on diffrl's training seconds.
    """
    base, final = trl_points[0], trl_points[-1]
    best = max(trl_points, key=lambda p: p["value"])  # the earliest of equal maxima
    first_at_final = next(p for p in trl_points if p["value"] >= final["value"] - TOLERANCE)
    out = {"trl_base": base["value"], "trl_final": final["value"], "trl_final_s": final["seconds"],
           "trl_first_reached_final_s": first_at_final["seconds"], "trl_best": best["value"],
           "trl_best_s": best["seconds"], "target": final["value"], "diffrl_s": None, "ratio": None}
    if final["value"] <= base["value"] + TOLERANCE:
        out["status"] = "TRL did not improve; ratio undefined"
    else:
        out["diffrl_s"] = reach_seconds(diffrl_metrics, final["value"], budget_s)
        if out["diffrl_s"] is None:
            out["status"] = f"diffrl did not reach TRL's final value within {budget_s:g} s"
        else:
            out["status"] = "reached"
            out["ratio"] = out["diffrl_s"] / final["seconds"]
    gain = best["value"] - base["value"]
    second = {"trl_gain": gain, "target": best["value"], "trl_s": best["seconds"], "diffrl_s": None, "ratio": None}
    if gain <= TOLERANCE:
        second["status"] = "TRL never rose above its base at any snapshot"
    else:
        second["diffrl_s"] = reach_seconds(diffrl_metrics, best["value"], budget_s)
        second["status"] = "reached" if second["diffrl_s"] is not None else \
            f"diffrl did not reach TRL's best value within {budget_s:g} s"
        if second["diffrl_s"] is not None:
            second["ratio"] = second["diffrl_s"] / best["seconds"] if best["seconds"] > 0 else None
    out["best_gain"] = second
    return out


def summarize_seeds(readouts: dict[int, dict], bar: float = 1 / 3) -> dict:
    """Over seeds: the ratio's mean and 80% prediction interval, and a verdict that never counts an undefined ratio."""
    from diffrl.report import prediction_interval

    ratios = {s: r["ratio"] for s, r in readouts.items() if r["ratio"] is not None}
    flat = [s for s, r in readouts.items() if r["status"].startswith("TRL did not improve")]
    missed = [s for s, r in readouts.items() if r["status"].startswith("diffrl did not reach")]
    interval = prediction_interval(list(ratios.values()), floor=0.0)  # a ratio of seconds is never below 0
    if flat:
        verdict = f"undefined: TRL did not improve at seed(s) {', '.join(map(str, flat))}; no time-to-target claim"
    elif missed:
        verdict = f"not met: diffrl did not reach TRL's final value at seed(s) {', '.join(map(str, missed))}"
    elif len(ratios) < 2:
        verdict = "no interval: fewer than 2 seeds"
    elif interval["pi_high"] <= bar:
        verdict = f"met: the 80% interval of the ratio lies at or below {bar:.3g}"
    elif interval["mean"] <= bar:
        verdict = f"not shown: mean ratio at or below {bar:.3g}, but the 80% interval reaches above it"
    else:
        verdict = f"not met: mean ratio above {bar:.3g}"
    second = {s: r["best_gain"]["ratio"] for s, r in readouts.items() if r["best_gain"]["ratio"] is not None}
    return {"ratio": interval, "defined": len(ratios), "seeds": len(readouts), "verdict": verdict, "bar": bar,
            "best_gain_ratio": prediction_interval(list(second.values()), floor=0.0) | {"defined": len(second)}}


def parse_assignments(items: list[str], flag: str) -> dict:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'}: values read as JSON where they parse, else as strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def trl_settings(defaults: dict, seed: int, project_dir: str, cuda: bool, overrides: dict) -> tuple[dict, list[dict]]:
    """DDPOConfig keyword arguments (TRL's defaults, changed only where this benchmark cannot run otherwise) and
    each change with its reason."""
    changes = {
        "seed": (seed, "the comparison's seed, the same on both sides"),
        "num_epochs": (10**9, "the benchmark calls DDPOTrainer.step until --trl-minutes of training time (the issue "
                              "defines TRL's target as what it reaches after that time); step() does not read it"),
        "project_kwargs": ({"project_dir": project_dir, "logging_dir": str(Path(project_dir) / "logs"),
                            "automatic_checkpoint_naming": True, "total_limit": defaults.get("num_checkpoint_limit")},
                           "save_freq=1 (the default) makes step() call accelerator.save_state() after every "
                           "epoch but the first, which raises a TypeError without a project directory and "
                           "automatic checkpoint naming (TRL's examples/scripts/ddpo.py sets these keys); those "
                           "writes are timed and left out"),
    }
    if not cuda:
        changes["mixed_precision"] = ("no", "fp16 (the default) is a GPU setting: on CPU TRL casts the frozen UNet, "
                                            "VAE and text encoder to float16, which ran 1.3-1.5x slower per epoch "
                                            "than float32 here; float32, as diffrl runs on CPU, can only favor TRL")
    for key, value in overrides.items():
        changes[key] = (value, "--trl-set: not TRL's default (a sensitivity run, not the issue's measurement)")
    kwargs = {key: value for key, (value, _) in changes.items()}
    adaptations = [{"key": key, "default": defaults.get(key), "used": value, "reason": reason}
                   for key, (value, reason) in changes.items() if defaults.get(key) != value]
    return kwargs, adaptations


def held_out_prompts() -> list:
    """`bench_ttt:held_out_prompts`: the first $BENCH_TTT_MAX_EVAL_PROMPTS held-out prompts, with their metadata."""
    from diffrl.prompts import load_prompts

    prompts = load_prompts(HELD_OUT).all()
    limit = os.environ.get(MAX_EVAL_ENV)
    return prompts[:int(limit)] if limit else prompts


# ----------------------------------------------------------------------------- workers (run in a subprocess)

def ddpo_defaults() -> dict:
    import dataclasses

    from trl import DDPOConfig

    config = DDPOConfig()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(DDPOConfig)}


def worker_trl_defaults(spec: dict) -> dict:
    """TRL's DDPOConfig defaults and what this benchmark changes (run once at start: also proves the venv works)."""
    import torch
    import trl

    defaults = ddpo_defaults()
    _, adaptations = trl_settings(defaults, spec["seed"], spec["project_dir"], torch.cuda.is_available(),
                                  spec["trl_set"])
    return {"defaults": defaults, "adaptations": adaptations, "cuda": torch.cuda.is_available(),
            "versions": {"trl": trl.__version__, "torch": torch.__version__}}


def worker_trl(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import diffusers
    import numpy as np
    import trl
    from accelerate import PartialState
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    from diffrl.prompts import load_prompts
    from diffrl.rewards.base import parse_reward_spec

    defaults = ddpo_defaults()
    kwargs, adaptations = trl_settings(defaults, spec["seed"], spec["project_dir"], torch.cuda.is_available(),
                                       spec["trl_set"])
    config = DDPOConfig(**kwargs)
    source, rng = load_prompts(spec["prompts"]), np.random.default_rng([spec["seed"], 0])  # diffrl's prompt stream

    def prompt_fn():  # TRL asks for one (prompt, metadata) per image
        return source.sample(rng, 1)[0]

    PartialState()  # TRL's pipeline logs through accelerate before DDPOTrainer creates the Accelerator
    pipeline = DefaultDDPOStableDiffusionPipeline(spec["pipeline"])  # use_lora=True by default
    trainer = DDPOTrainer(config, trl_reward(parse_reward_spec(spec["reward"])), prompt_fn, pipeline)

    checkpoint_s, epoch_reward = [0.0], [math.nan]
    save_state, compute_rewards = trainer.accelerator.save_state, trainer.compute_rewards

    def timed_save_state(*args, **kwargs):  # TRL's per-epoch checkpoint: not training, as diffrl's is not
        start = time.perf_counter()
        try:
            return save_state(*args, **kwargs)
        finally:
            checkpoint_s[0] += time.perf_counter() - start

    def recorded_rewards(*args, **kwargs):
        rewards, info = compute_rewards(*args, **kwargs)
        epoch_reward[0] = float(torch.cat(rewards).float().mean())
        return rewards, info

    trainer.accelerator.save_state, trainer.compute_rewards = timed_save_state, recorded_rewards
    snapshots, progress = Path(spec["snapshot_dir"]), Path(spec["progress"])
    images_per_epoch = config.sample_batch_size * config.sample_num_batches_per_epoch

    def snapshot(epoch: int, train_s: float) -> dict:
        info = {"epoch": epoch, "seconds": train_s, "images": epoch * images_per_epoch}
        directory = snapshots / f"{len(list(snapshots.glob('*'))):04d}"
        directory.mkdir(parents=True)
        pipeline.save_checkpoint([pipeline.unet], [], str(directory))  # TRL's LoRA export: what save_state writes
        (directory / "snapshot.json").write_text(json.dumps(info))
        return info | {"dir": str(directory)}

    saved = [snapshot(0, 0.0)]
    budget, every = spec["budget_s"], spec["eval_every_s"]
    train_s, epoch, global_step, due, rewards = 0.0, 0, 0, every, []
    wall = time.perf_counter()
    while train_s < budget:
        checkpoint_before, start = checkpoint_s[0], time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        train_s += time.perf_counter() - start - (checkpoint_s[0] - checkpoint_before)
        epoch += 1
        rewards.append([round(train_s, 3), epoch_reward[0]])
        with progress.open("a") as f:
            f.write(json.dumps({"epoch": epoch, "train_s": train_s, "reward_mean": epoch_reward[0]}) + "\n")
        if train_s >= due or train_s >= budget:
            saved.append(snapshot(epoch, train_s))
            due = next_snapshot_due(train_s, every)
    config_used = {f: getattr(config, f) for f in defaults}
    return {"impl": "trl", "config": config_used, "adaptations": adaptations, "epochs": epoch,
            "images": epoch * images_per_epoch, "updates": global_step, "train_s": train_s,
            "checkpoint_s": checkpoint_s[0], "loop_wall_s": time.perf_counter() - wall, "snapshots": saved,
            "reward_curve": rewards, **_peak_memory_mb(),
            "versions": {"trl": trl.__version__, "diffusers": diffusers.__version__, "torch": torch.__version__}}


def worker_evaluate(spec: dict) -> dict:
    """`diffrl evaluate` on each job's weights (None: the base model), in this one process; held-out means."""
    from diffrl.cli import main as diffrl_main

    results = []
    for job in spec["jobs"]:
        argv = ["evaluate", "--model", spec["model"], "--prompts", spec["prompts"], "--reward", REWARD,
                "--images-per-prompt", str(spec["images_per_prompt"]), "--seed", str(spec["seed"]),
                "--steps", str(spec["steps"]), "--guidance", str(spec["guidance"]), "--eta", str(spec["eta"]),
                "--threads", str(spec["threads"]), "--out", job["out"]]
        start = time.perf_counter()
        code = diffrl_main(argv + (["--lora", job["lora"]] if job["lora"] else []))
        if code:
            results.append({"error": f"diffrl evaluate exited {code}"})
            continue
        data = json.loads((Path(job["out"]) / "results.json").read_text())
        results.append({name: data["metrics"][name]["overall"]["mean"] for name in ("shapes_success", REWARD)}
                       | {"weights": data["weights"], "num_prompts": data["num_prompts"],
                          "eval_s": time.perf_counter() - start})
    return {"results": results}


WORKERS = {"trl": worker_trl, "trl-defaults": worker_trl_defaults, "evaluate": worker_evaluate}


# ----------------------------------------------------------------------------- orchestration

def worker_env(threads: int, subset: int | None, extra_path: Path | None = None) -> dict:
    paths = [str(REPO / "src")] + ([str(extra_path)] if extra_path else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop(MAX_EVAL_ENV, None)
    if subset:
        env[MAX_EVAL_ENV] = str(subset)
    return env


def worker_argv(python: str, kind: str, spec: dict) -> list[str]:
    return [python, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]


def read_result(log: Path, what: str, code: int | None) -> dict:
    """The worker's RESULT_TAG line from its log; RuntimeError with the log's tail when there is none."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    for line in text.splitlines():
        if RESULT_TAG in line:  # TRL's progress bars end without a newline: the tag may follow one on its line
            return json.loads(line.split(RESULT_TAG, 1)[1])
    raise RuntimeError(f"{what} failed (exit {code}); last lines of {log}:\n{text[-3000:]}")


def run_blocking(argv: list[str], env: dict, log: Path, what: str) -> dict:
    with log.open("w") as handle:
        code = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    return read_result(log, what, code)


def read_jsonl(path: Path) -> list[dict]:
    """Lines of a JSONL file another process is appending to: a half-written last line is skipped."""
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def diffrl_train_seconds(records: list[dict]) -> float:
    return sum(r.get(k, 0.0) for r in records for k in ("sample_s", "reward_s", "train_s"))


def status_line(seed: int, start: float, trl_progress: Path, diffrl_dir: Path, budget_s: float) -> str:
    trl = read_jsonl(trl_progress)
    records = read_jsonl(diffrl_dir / "metrics.jsonl")
    evals = [r[METRIC] for r in records if METRIC in r]
    trl_part = (f"TRL epoch {trl[-1]['epoch']}, {trl[-1]['train_s']:.0f}/{budget_s:.0f} s trained, reward "
                f"{trl[-1]['reward_mean']:.3f}") if trl else "TRL starting"
    diffrl_part = (f"diffrl epoch {records[-1]['epoch']}, {diffrl_train_seconds(records):.0f} s trained, held-out "
                   f"success {evals[-1]:.3f}") if evals else "diffrl starting"
    return f"bench-ttt: seed {seed} [{time.perf_counter() - start:6.0f} s] {trl_part} | {diffrl_part}"


def watch(procs: dict, seed: int, paths: dict, budget_s: float, progress_every_s: float, epochs: int) -> dict:
    """Wait for the processes, printing progress; SIGTERM diffrl (it checkpoints) once it has trained budget_s.

    Only while it has epochs left (`epochs` planned): after its last epoch it no longer handles the signal."""
    start, last, stopped = time.perf_counter(), -math.inf, False
    while any(p.poll() is None for p in procs.values()):
        time.sleep(1)
        diffrl = procs.get("diffrl")
        records = read_jsonl(paths["diffrl"] / "metrics.jsonl") if diffrl is not None and not stopped else []
        if records and diffrl.poll() is None and records[-1].get("epoch", 0) < epochs and \
                diffrl_train_seconds(records) >= budget_s:
            print(f"bench-ttt: seed {seed}: diffrl has trained TRL's budget ({budget_s:.0f} s): stopping it",
                  flush=True)
            diffrl.send_signal(signal.SIGTERM)
            stopped = True
        if time.perf_counter() - last >= progress_every_s:
            last = time.perf_counter()
            print(status_line(seed, start, paths["trl_progress"], paths["diffrl"], budget_s), flush=True)
    return {"stopped_at_budget": stopped}


def diffrl_train_argv(args, seed: int, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "diffrl.cli", "train", "--out", str(out), "--seed", str(seed),
            "--set", "run.eval_every=1", "--set", f"run.threads={args.threads}"]
    if args.diffrl_epochs:
        argv += ["--epochs", str(args.diffrl_epochs)]
    if args.images_per_prompt:
        argv += ["--set", f"run.eval_images_per_prompt={args.images_per_prompt}"]
    if args.max_eval_prompts:
        argv += ["--set", f"run.eval_prompts={HELD_OUT_SUBSET}"]
    for item in args.diffrl_set:
        argv += ["--set", item]
    return argv


def run_seed(seed: int, args, trl_python: str, work: Path, evaluation: dict) -> dict:
    """Train both sides for one seed, evaluate TRL's snapshots and diffrl's final LoRA, and read out."""
    from diffrl.config import Config
    from diffrl.report import run_curves
    from diffrl.runlog import read_metrics
    from diffrl.shapes import BUILTIN_MODEL_DIR

    root = work / f"seed{seed}"
    paths = {"trl": root / "trl", "diffrl": root / "diffrl", "trl_progress": root / "trl" / "progress.jsonl"}
    paths["trl"].mkdir(parents=True)
    budget_s = args.trl_minutes * 60
    epochs = args.diffrl_epochs or Config().run.epochs  # --diffrl-set may not change run.epochs
    trl_spec = {"threads": args.threads, "seed": seed, "pipeline": str(BUILTIN_MODEL_DIR), "reward": REWARD,
                "prompts": TRAIN_PROMPTS, "budget_s": budget_s, "eval_every_s": args.trl_eval_every_s,
                "snapshot_dir": str(paths["trl"] / "snapshots"), "progress": str(paths["trl_progress"]),
                "project_dir": str(paths["trl"] / "project"), "trl_set": args.trl_set}
    launches = {"trl": (worker_argv(trl_python, "trl", trl_spec), worker_env(args.threads, None),
                        paths["trl"] / "worker.log"),
                "diffrl": (diffrl_train_argv(args, seed, paths["diffrl"]),
                           worker_env(args.threads, args.max_eval_prompts, HERE if args.max_eval_prompts else None),
                           root / "diffrl_train.log")}
    order = [["trl"], ["diffrl"]] if args.sequential else [["trl", "diffrl"]]
    procs, handles, info = {}, [], {"load_1min_start": os.getloadavg()[0]}
    started = time.perf_counter()
    try:
        for group in order:
            running = {}
            for name in group:
                argv, env, log = launches[name]
                handles.append(log.open("w"))
                running[name] = procs[name] = subprocess.Popen(argv, stdout=handles[-1], stderr=subprocess.STDOUT,
                                                                env=env, cwd=REPO)
            info |= watch(running, seed, paths, budget_s, args.progress_every_s, epochs)
    finally:
        for proc in procs.values():  # only on an exception (Ctrl-C): these are the processes started above
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        for handle in handles:
            handle.close()
    info |= {"train_wall_s": time.perf_counter() - started, "load_1min_end": os.getloadavg()[0],
             "trl_exit": procs["trl"].returncode, "diffrl_exit": procs["diffrl"].returncode}
    trl = read_result(launches["trl"][2], f"TRL worker, seed {seed}", info["trl_exit"])
    stopped_ok = (128 + signal.SIGTERM, -signal.SIGTERM) if info["stopped_at_budget"] else ()
    if info["diffrl_exit"] not in (0, *stopped_ok):  # 143: stopped at the budget, after a checkpoint
        raise RuntimeError(f"diffrl train, seed {seed}, exited {info['diffrl_exit']}: see {launches['diffrl'][2]}")
    print(f"bench-ttt: seed {seed}: TRL trained {trl['epochs']} epochs ({trl['images']} images, {trl['updates']} "
          f"updates) in {trl['train_s']:.0f} s (+{trl['checkpoint_s']:.1f} s of its checkpoints, left out); "
          f"evaluating {len(trl['snapshots'])} snapshots", flush=True)

    jobs = [{"lora": s["dir"], "out": str(Path(s["dir"]) / "evaluate")} for s in trl["snapshots"]]
    diffrl_lora = paths["diffrl"] / "lora"
    if diffrl_lora.is_dir():
        jobs.append({"lora": str(diffrl_lora), "out": str(root / "diffrl_final_evaluate")})
    start = time.perf_counter()
    scored = run_blocking(worker_argv(sys.executable, "evaluate", dict(evaluation, seed=seed, threads=args.threads,
                                                                       jobs=jobs)),
                          worker_env(args.threads, args.max_eval_prompts), root / "evaluate.log",
                          f"evaluation, seed {seed}")["results"]
    info["evaluate_wall_s"] = time.perf_counter() - start
    errors = [r["error"] for r in scored if "error" in r]
    if errors:
        raise RuntimeError(f"seed {seed}: {errors[0]}; see {root / 'evaluate.log'}")
    trl_points = [s | {"value": r["shapes_success"], "shapes": r[REWARD]} for s, r in zip(trl["snapshots"], scored)]
    metrics = read_metrics(paths["diffrl"])
    curve = [{"epoch": e, "images": i, "seconds": s, "value": v} for e, i, s, v in run_curves(metrics).get(METRIC, [])]
    if not curve:
        raise RuntimeError(f"seed {seed}: diffrl logged no {METRIC}; see {paths['diffrl'] / 'metrics.jsonl'}")
    readout = seed_readout(trl_points, metrics, budget_s)
    checks = {"base_trl_snapshot0": trl_points[0]["value"], "base_diffrl_epoch0": curve[0]["value"],
              "diffrl_last_in_training": curve[-1]["value"],
              "diffrl_final_lora_evaluated": scored[-1]["shapes_success"] if diffrl_lora.is_dir() else None}
    checks["bases_agree"] = abs(checks["base_trl_snapshot0"] - checks["base_diffrl_epoch0"]) <= TOLERANCE
    if not checks["bases_agree"]:
        print(f"bench-ttt: WARNING seed {seed}: the base model scores {checks['base_trl_snapshot0']:.4f} through "
              f"diffrl evaluate but {checks['base_diffrl_epoch0']:.4f} in diffrl's training run", flush=True)
    return {"seed": seed, "readout": readout, "checks": checks, "info": info,
            "trl": {k: v for k, v in trl.items() if k not in ("config", "adaptations", "snapshots")} | {
                "snapshots": trl_points, "dir": str(paths["trl"])},
            "diffrl": {"run_dir": str(paths["diffrl"]), "curve": curve, "epochs": curve[-1]["epoch"],
                       "train_s": diffrl_train_seconds(metrics), "command": launches["diffrl"][0][1:]},
            "trl_config": trl["config"], "trl_adaptations": trl["adaptations"]}


def fmt(value, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def table(seeds: list[dict], summary: dict) -> str:
    lines = ["| seed | TRL base | TRL final (at s) | TRL best (at s) | diffrl s to TRL final | ratio | status | "
             "diffrl s to TRL best | ratio (best) |", "|---|---|---|---|---|---|---|---|---|"]
    for s in seeds:
        if "error" in s:
            lines.append(f"| {s['seed']} | error: {s['error'].splitlines()[0]} |")
            continue
        r, b = s["readout"], s["readout"]["best_gain"]
        lines.append(f"| {s['seed']} | {r['trl_base']:.3f} | {r['trl_final']:.3f} ({r['trl_final_s']:.0f}) | "
                     f"{r['trl_best']:.3f} ({r['trl_best_s']:.0f}) | {fmt(r['diffrl_s'], '.0f')} | "
                     f"{fmt(r['ratio'])} | {r['status']} | {fmt(b['diffrl_s'], '.0f')} | {fmt(b['ratio'])} |")
    ratio, best = summary["ratio"], summary["best_gain_ratio"]
    lines += ["", f"ratio diffrl s / TRL s over {summary['defined']}/{summary['seeds']} seeds with a defined ratio: "
                  f"mean {fmt(ratio['mean'])}, 80% prediction interval [{fmt(ratio['pi_low'])}, "
              f"{fmt(ratio['pi_high'])}]",
              f"verdict (bar {summary['bar']:.3g}): {summary['verdict']}",
              f"second readout, to TRL's best snapshot value ({best['defined']} seeds): mean {fmt(best['mean'])}, "
              f"80% PI [{fmt(best['pi_low'])}, {fmt(best['pi_high'])}] (not the issue's target)"]
    return "\n".join(lines)


def write_report(path: Path | None, report: dict) -> None:
    from diffrl.report import jsonable

    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(report), indent=1))
    if "table" in report:
        path.with_suffix(".md").write_text(report["table"] + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny budgets for development: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in SMOKE.items()) + " (each still overridable)")
    parser.add_argument("--seeds", help=f"comma list (default {FULL['seeds']})")
    parser.add_argument("--trl-minutes", type=float, help="TRL's budget of DDPOTrainer.step time, and diffrl's cap "
                                                          f"(default {FULL['trl_minutes']:g})")
    parser.add_argument("--trl-eval-every-s", type=float, help="seconds of TRL training between LoRA snapshots "
                                                               f"(default {FULL['trl_eval_every_s']:g})")
    parser.add_argument("--diffrl-epochs", type=int, help="diffrl's run.epochs (default: diffrl's own default)")
    parser.add_argument("--images-per-prompt", type=int, help="held-out images per prompt, both sides (default: "
                                                              "diffrl's run.eval_images_per_prompt, 8)")
    parser.add_argument("--max-eval-prompts", type=int, help="score only the first N held-out prompts (smoke runs; "
                                                             "default: all 27)")
    parser.add_argument("--progress-every-s", type=float, help="seconds between progress lines")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--sequential", action="store_true", help="train TRL, then diffrl (default: side by side)")
    parser.add_argument("--trl-set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a DDPOConfig field (recorded as an adaptation; not the issue's measurement)")
    parser.add_argument("--diffrl-set", action="append", default=[], metavar="KEY=VALUE",
                        help="pass --set KEY=VALUE to diffrl train (not the task, evaluation or budget keys)")
    parser.add_argument("--work-dir", type=Path, help="run directories and snapshots (default: "
                                                      "benchmarks/.cache/ttt/<UTC time>)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (and a .md table beside it)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected distinct integers, e.g. 0,1")
    try:
        args.trl_set = parse_assignments(args.trl_set, "--trl-set")
        reserved = [k for k in parse_assignments(args.diffrl_set, "--diffrl-set") if k in RESERVED_DIFFRL_KEYS]
    except ValueError as err:
        parser.error(str(err))
    if reserved:
        parser.error(f"--diffrl-set {reserved[0]}: set by this benchmark (the task, the evaluation or the budget)")
    if not args.seed_list or len(set(args.seed_list)) != len(args.seed_list):
        parser.error(f"--seeds {args.seeds!r}: expected distinct integers, e.g. 0,1")
    positive = {"--trl-minutes": args.trl_minutes, "--trl-eval-every-s": args.trl_eval_every_s,
                "--threads": args.threads, "--progress-every-s": args.progress_every_s,
                "--diffrl-epochs": args.diffrl_epochs, "--images-per-prompt": args.images_per_prompt,
                "--max-eval-prompts": args.max_eval_prompts}
    bad = [flag for flag, value in positive.items() if value is not None and not value > 0]
    if bad:
        parser.error(f"{bad[0]} must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](json.loads(args.spec))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    from diffrl.config import Config

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    work = args.work_dir or HERE / ".cache" / "ttt" / stamp
    taken = [s for s in args.seed_list if (work / f"seed{s}").exists()]
    if taken:
        print(f"bench_ttt.py: error: {work / f'seed{taken[0]}'} exists: give a fresh --work-dir", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    trl_python = str(ensure_trl_venv())
    probe = run_blocking(worker_argv(trl_python, "trl-defaults", {"seed": args.seed_list[0], "trl_set": args.trl_set,
                                                                 "project_dir": "<work-dir>/seedS/trl/project"}),
                         worker_env(args.threads, None), work / "trl_defaults.log", "TRL defaults probe")
    unknown = [k for k in args.trl_set if k not in probe["defaults"]]
    if unknown:
        print(f"bench_ttt.py: error: --trl-set {unknown[0]}: not a DDPOConfig field", file=sys.stderr)
        return 2
    print("bench-ttt: TRL DDPOConfig defaults: " + json.dumps(probe["defaults"]), flush=True)
    for a in probe["adaptations"]:
        print(f"bench-ttt: TRL adaptation {a['key']}: {a['default']!r} -> {a['used']!r} ({a['reason']})", flush=True)

    defaults = Config()
    subset = args.max_eval_prompts
    evaluation = {"model": MODEL, "prompts": HELD_OUT_SUBSET if subset else HELD_OUT,
                  "images_per_prompt": args.images_per_prompt or defaults.run.eval_images_per_prompt,
                  "steps": defaults.sample.num_steps, "guidance": defaults.sample.guidance_scale,
                  "eta": defaults.sample.eta}
    report = {"schema": "diffrl.bench_ttt/1", "command": [sys.executable, *sys.argv], "started_utc": stamp,
              "work_dir": str(work), "smoke": args.smoke,
              "task": {"model": MODEL, "reward": REWARD, "train_prompts": TRAIN_PROMPTS, "metric": METRIC,
                       "held_out": HELD_OUT + (f" (first {subset} prompts)" if subset else "")},
              "settings": {k: getattr(args, k) for k in ("seed_list", "trl_minutes", "trl_eval_every_s",
                                                         "diffrl_epochs", "threads", "sequential", "diffrl_set")},
              "evaluation": evaluation | {"seed": "the run seed", "timed": False,
                                          "by": "diffrl evaluate (diffrl.evaluation.generate_fixed_seed)"},
              "trl": {"pins": TRL_PINS, "versions": probe["versions"], "defaults": probe["defaults"],
                      "adaptations": probe["adaptations"], "user_overrides": args.trl_set,
                      "timed": "DDPOTrainer.step minus its accelerator.save_state calls"},
              "diffrl": {"timed": "metrics.jsonl sample_s + reward_s + train_s (no evaluation, no checkpoints)"},
              "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}, "seeds": []}
    print(f"bench-ttt: work dir {work}; {len(args.seed_list)} seeds; TRL budget {args.trl_minutes:g} min of training, "
          f"snapshots every {args.trl_eval_every_s:g} s; {'sequential' if args.sequential else 'side by side'}, "
          f"{args.threads} thread(s) each", flush=True)
    for seed in args.seed_list:
        try:
            result = run_seed(seed, args, trl_python, work, evaluation)
        except RuntimeError as err:  # one seed's failure is reported; the other seeds still run
            print(f"bench-ttt: seed {seed} FAILED: {err}", flush=True)
            result = {"seed": seed, "error": str(err)}
        report["seeds"].append(result)
        done = {s["seed"]: s["readout"] for s in report["seeds"] if "readout" in s}
        report["summary"] = summarize_seeds(done) if done else {}
        failed = [s["seed"] for s in report["seeds"] if "error" in s]
        if failed and report["summary"]:
            report["summary"]["verdict"] += f" (seed(s) {', '.join(map(str, failed))} failed: not counted)"
        if "readout" in result:
            report["trl"]["config"] = result.pop("trl_config")
            report["trl"]["adaptations"] = result.pop("trl_adaptations")
            r = result["readout"]
            print(f"bench-ttt: seed {seed}: TRL {r['trl_base']:.3f} -> {r['trl_final']:.3f} in "
                  f"{r['trl_final_s']:.0f} s; diffrl to {r['target']:.3f}: {fmt(r['diffrl_s'], '.0f')} s; "
                  f"ratio {fmt(r['ratio'])} ({r['status']})", flush=True)
        if report["summary"]:
            report["table"] = table(report["seeds"], report["summary"])
        write_report(args.out, report)  # after every seed: a later failure keeps what was measured
    report["finished_utc"] = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    write_report(args.out, report)
    if "table" in report:
        print(report["table"])
    return 1 if any("error" in s for s in report["seeds"]) else 0


if __name__ == "__main__":
    sys.exit(main())
