"""Statistics, curves and the HTML report shared by `diffrl evaluate`, `diffrl compare` and `diffrl report`.

Two intervals, both from Student's t (no scipy: the t CDF has a closed form for integer degrees
of freedom, inverted by bisection):

- confidence interval of a mean over n prompts (evaluate):  m +- t_{0.975, n-1} * s / sqrt(n)
- 80% prediction interval over n seeds (compare/report):      m +- t_{0.9, n-1} * s * sqrt(1 + 1/n)

m is the sample mean, s the sample standard deviation (ddof = 1). With n = 1 neither exists (NaN).
"""
from __future__ import annotations

import html
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import yaml

from diffrl import checkpoint as ckpt
from diffrl.errors import DiffrlError
from diffrl.runlog import read_metrics

CONFIG_FILE = "config.yaml"  # trainer.CONFIG_FILE; not imported so `diffrl report` stays light
METRICS_FILE = "metrics.jsonl"
# A run's record: its config and metrics without weights or checkpoints (tens of kB), written by `diffrl report`
# under OUT/records/ so that a report can be rebuilt and extended after the run directories are gone.
RECORD_FILE = "record.json"


# --------------------------------------------------------------------------- statistics


def t_cdf_two_sided(x: float, df: int) -> float:
    """P(|T| <= x) for Student's t with integer `df` >= 1 (Abramowitz & Stegun 26.7.3/26.7.4)."""
    theta = math.atan(abs(x) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), df-3 in the last power
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for j in range(1, (df - 1) // 2):
            term *= c2 * (2 * j) / (2 * j + 1)
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df-2 in the last power
    for j in range(1, df // 2):
        term *= c2 * (2 * j - 1) / (2 * j)
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p in (0.5, 1)) of Student's t with `df` degrees of freedom, to ~1e-12."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    target, lo, hi = 2 * p - 1, 0.0, 1.0
    while t_cdf_two_sided(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf_two_sided(mid, df) < target else (lo, mid)
    return (lo + hi) / 2


def _clean(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean and its t confidence interval: m +- t_{(1+level)/2, n-1} * s / sqrt(n). NaNs are dropped."""
    x = _clean(values)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    half = t_quantile((1 + level) / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "half_width": half, "n": n}


def prediction_interval(values, level: float = 0.8, floor: float = -math.inf) -> dict:
    """Mean over replicates and the interval for one new replicate: m +- t_{(1+level)/2, n-1} * s * sqrt(1 + 1/n),
    its lower end raised to `floor` for a quantity that cannot go below it (a count of images or seconds)."""
    x = _clean(values)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    half = t_quantile((1 + level) / 2, n - 1) * float(x.std(ddof=1)) * math.sqrt(1 + 1 / n) if n > 1 else float("nan")
    return {"mean": mean, "pi_low": max(mean - half, floor), "pi_high": mean + half, "n": n,
            "values": [float(v) for v in x]}


def jsonable(obj):
    """NaN/inf -> None (null) recursively, so the JSON files are standard JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- runs


def last_epoch(run_dir: Path) -> int:
    """Epoch of the newest complete checkpoint (0 when there is none)."""
    found = ckpt.list_checkpoints(run_dir)
    return int(found[-1].name.split("_")[-1]) if found else 0


def stopped_early(run_dir: Path) -> str | None:
    """Why the run stopped early (`run.early_stop_drop`), from its newest checkpoint; None if it did not."""
    found = ckpt.list_checkpoints(run_dir)
    return json.loads((found[-1] / "state.json").read_text())["counters"].get("stopped_early") if found else None


def load_run(run_dir: Path) -> dict:
    """{'dir', 'config', 'metrics', 'last_epoch', 'finished', 'stopped_early'} of a run directory or of a run's
    record (write_record); DiffrlError if it is neither.

    A run is finished when it trained its planned epochs or stopped early by `run.early_stop_drop`."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / METRICS_FILE).is_file():
        raise DiffrlError(f"{run_dir} is not a diffrl run directory (needs {CONFIG_FILE} and {METRICS_FILE})")
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    if (run_dir / RECORD_FILE).is_file() and not ckpt.list_checkpoints(run_dir):
        record = json.loads((run_dir / RECORD_FILE).read_text())
        epoch, early = record["last_epoch"], record["stopped_early"]
    else:
        epoch, early = last_epoch(run_dir), stopped_early(run_dir)
    return {"dir": run_dir, "config": config, "metrics": read_metrics(run_dir), "last_epoch": epoch,
            "stopped_early": early, "finished": epoch == config["run"]["epochs"] or early is not None}


def write_record(run: dict, dest: Path) -> None:
    """Copy a loaded run's config and metrics to `dest` with what its checkpoints said (last epoch, early stop):
    enough for load_run, so that `diffrl report` can rebuild the curves and tables from it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, METRICS_FILE):
        shutil.copyfile(Path(run["dir"]) / name, dest / name)
    (dest / RECORD_FILE).write_text(json.dumps({"source": str(run["dir"]), "last_epoch": run["last_epoch"],
                                                "stopped_early": run["stopped_early"]}, indent=1) + "\n")


def record_dir(run_dir: Path, records: Path) -> Path:
    """Where a run's record goes under `records`: named by its last two path parts (compare's METHOD/seedN)."""
    return records / run_dir.parent.name / run_dir.name


def write_records(runs: list[dict], records: Path) -> None:
    """Records of `runs` under `records` (a run that is already a record there stays as it is); records there of
    runs not given are removed, so the folder holds exactly the report's runs."""
    kept = set()
    for run in runs:
        src = Path(run["dir"]).resolve()
        if src.parent.parent == records.resolve():
            kept.add(src)
            continue
        dest = record_dir(Path(run["dir"]), records)
        while dest.resolve() in kept:  # two inputs with the same METHOD/seedN (from different studies)
            dest = dest.with_name(dest.name + "+")
        write_record(run, dest)
        kept.add(dest.resolve())
    for stale in records.glob(f"*/*/{RECORD_FILE}"):
        if stale.parent.resolve() not in kept:
            shutil.rmtree(stale.parent)


def default_label(config: dict) -> str:
    """How `diffrl report` groups runs: algorithm and K (+ B2); seeds are replicates."""
    return f"{config['train']['algo']} K={config['sample']['k']}" + (" B2" if config["b2"]["enabled"] else "")


def run_curves(metrics: list[dict]) -> dict[str, list[tuple[int, float, float, float]]]:
    """metric -> [(epoch, images_seen, train_seconds, value)] for reward_mean and every eval/* metric.

    train_seconds is cumulative sample_s + reward_s + train_s: the wall-clock the method spent, without
    held-out evaluation, checkpointing or model loading (identical for every method).
    """
    curves: dict[str, list] = {}
    images, seconds = 0, 0.0
    for rec in sorted(metrics, key=lambda r: r["epoch"]):
        images = rec.get("images_seen", images)
        seconds += sum(rec.get(k, 0.0) for k in ("sample_s", "reward_s", "train_s"))
        for key, value in rec.items():
            if (key == "reward_mean" or key.startswith("eval/")) and isinstance(value, (int, float)):
                curves.setdefault(key, []).append((rec["epoch"], images, seconds, float(value)))
    return curves


def parse_target(spec: str) -> tuple[str, float]:
    """'eval/shapes_success=0.85' -> ('eval/shapes_success', 0.85); METRIC is reward_mean or eval/<reward>."""
    metric, _, value = (x.strip() for x in spec.partition("="))
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (metric == "reward_mean" or (metric.startswith("eval/") and len(metric) > 5)) or not math.isfinite(number):
        raise DiffrlError(f"--target expects METRIC=VALUE with METRIC reward_mean or eval/<reward>, "
                          f"e.g. eval/shapes_success=0.85; got {spec!r}")
    return metric, number


def time_to_target(metrics: list[dict], metric: str, value: float) -> tuple[float, float] | None:
    """(images, train seconds) at the first logged epoch where `metric` >= value; None when it never does."""
    return next(((images, seconds) for _, images, seconds, v in run_curves(metrics).get(metric, []) if v >= value), None)


def target_summary(runs: list[dict], metric: str, value: float) -> dict:
    """Time to `metric` >= value over seeds: mean and 80% PI of images and seconds over the seeds that reached it."""
    hits = [time_to_target(r["metrics"], metric, value) for r in runs]
    reached = [h for h in hits if h is not None]
    return {"metric": metric, "value": value, "reached": len(reached), "n": len(runs),
            "images": prediction_interval([h[0] for h in reached], floor=0),
            "seconds": prediction_interval([h[1] for h in reached], floor=0),
            "per_seed": [{"seed": r["config"]["run"]["seed"], **dict(zip(("images", "seconds"), h or (None, None)))}
                         for r, h in zip(runs, hits)]}


def summarize(groups: dict[str, list[dict]], targets: list[tuple[str, float]] = ()) -> dict:
    """Per group: curves (mean and 80% PI over seeds at the epochs all seeds logged), final values, time to targets."""
    out = {}
    for label, runs in groups.items():
        per_run = [run_curves(r["metrics"]) for r in runs]
        keys = sorted(set.intersection(*(set(c) for c in per_run)), key=lambda k: (k != "reward_mean", k))
        curves, final, change = {}, {}, {}
        for key in keys:
            by_epoch = [{e: (i, s, v) for e, i, s, v in c[key]} for c in per_run]
            epochs = sorted(set.intersection(*(set(b) for b in by_epoch)))
            points = []
            for e in epochs:
                rows = np.array([b[e] for b in by_epoch])  # (seeds, 3)
                pi = prediction_interval(rows[:, 2])
                points.append({"epoch": e, "images": float(rows[:, 0].mean()), "seconds": float(rows[:, 1].mean()),
                               **{k: pi[k] for k in ("mean", "pi_low", "pi_high", "n")}})
            curves[key] = points
            final[key] = prediction_interval([b[epochs[-1]][2] for b in by_epoch]) if epochs else {}
            # last minus first logged value of each run (held-out metrics start at the base model, epoch 0)
            change[key] = prediction_interval([b[epochs[-1]][2] - b[epochs[0]][2] for b in by_epoch]) \
                if len(epochs) > 1 else {}
        last = [r["metrics"][-1] for r in runs if r["metrics"]]
        out[label] = {
            "runs": [str(r["dir"]) for r in runs], "seeds": [r["config"]["run"]["seed"] for r in runs],
            "algo": runs[0]["config"]["train"]["algo"], "k": runs[0]["config"]["sample"]["k"],
            "images": [int(rec.get("images_seen", 0)) for rec in last],
            "train_seconds": [run_curves(r["metrics"]).get("reward_mean", [(0, 0, 0.0, 0)])[-1][2] for r in runs],
            "final": final, "change": change, "curves": curves,
            "time_to_target": [target_summary(runs, metric, value) for metric, value in targets],
        }
    return out


# --------------------------------------------------------------------------- figures and HTML


def plot(summary: dict, x: str, path: Path) -> None:
    """One panel per metric; mean over seeds with the 80% prediction band. x: 'images' or 'seconds'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for g in summary.values() for k in g["curves"]}, key=lambda k: (k != "reward_mean", k))
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.2 * max(len(keys), 1), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, group in summary.items():
            points = group["curves"].get(key, [])
            if not points:
                continue
            xs = [p[x] for p in points]
            line, = ax.plot(xs, [p["mean"] for p in points], marker="o" if len(points) < 25 else None, ms=3,
                            label=f"{label} (n={points[-1]['n']})")
            ax.fill_between(xs, [p["pi_low"] for p in points], [p["pi_high"] for p in points],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title("training reward" if key == "reward_mean" else f"held-out {key[5:]}")
        ax.set_xlabel("images sampled" if x == "images" else "wall-clock seconds (sample + reward + train)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("mean over seeds, shaded: 80% prediction interval", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(stat: dict, sign: bool = False, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None or not math.isfinite(stat["mean"]):
        return "-"
    number = f"{{:{'+' if sign else ''}.{digits}f}}"
    band = f" [{number.format(stat['pi_low'])}, {number.format(stat['pi_high'])}]" if math.isfinite(stat["pi_low"]) else ""
    return number.format(stat["mean"]) + band


def _target_cells(t: dict) -> list[str]:
    """'images' and 'seconds' cells of one time-to-target readout: mean [80% PI] (reached/seeds)."""
    if not t["reached"]:
        return [f"not reached (0/{t['n']})"] * 2
    return [f"{_fmt(t[key], digits=digits)} ({t['reached']}/{t['n']})" for key, digits in (("images", 0), ("seconds", 1))]


def _target_headers(summary: dict) -> list[str]:
    first = next(iter(summary.values()), {}).get("time_to_target", [])
    return [f"{what} to {t['metric']} >= {t['value']:g}" for t in first for what in ("images", "seconds")]


def _sweep_table(sweep: dict) -> list[list[str]]:
    """Rows (header first) of the learning-rate sweep: each method's final selection metric per rate, and its pick."""
    rows = [["method", "seed", *(f"lr {v!r}" for v in sweep["values"]), "chosen"]]
    for label, m in sweep["methods"].items():
        finals = [m["final"].get(repr(v)) for v in sweep["values"]]
        rows.append([label, str(m["seed"]), *("-" if f is None else f"{f:.3f}" for f in finals), repr(m["chosen"])])
    return rows


def write_report(groups: dict[str, list[dict]], out: Path, title: str = "diffrl report", extra: dict | None = None,
                 targets: list[tuple[str, float]] = ()) -> dict:
    """report.json, reward_vs_images.png, reward_vs_wallclock.png, report.html and report.md under `out`.

    `targets`: (metric, value) pairs for the time-to-target readout; extra["lr_sweep"] adds the sweep's table.
    Returns the summary.
    """
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(groups, targets)
    plot(summary, "images", out / "reward_vs_images.png")
    plot(summary, "seconds", out / "reward_vs_wallclock.png")
    (out / "report.json").write_text(json.dumps(jsonable({"schema": "diffrl.report/1", "groups": summary,
                                                         **(extra or {})}), indent=1))
    keys = sorted({k for g in summary.values() for k in g["final"]}, key=lambda k: (k != "reward_mean", k))
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(label)}</td><td>{len(g['runs'])}</td><td>{int(np.mean(g['images']))}</td>"
        f"<td>{np.mean(g['train_seconds']):.1f}</td>" + "".join(f"<td>{_fmt(g['final'].get(k, {}))}</td>" for k in keys)
        + "".join(f"<td>{c}</td>" for t in g["time_to_target"] for c in _target_cells(t))
        + "</tr>" for label, g in summary.items())
    head = "".join(f"<th>{esc(h)}</th>" for h in [*keys, *_target_headers(summary)])
    sweep = (extra or {}).get("lr_sweep")
    sweep_html = "" if not sweep else (
        f"<h2>Learning-rate sweep</h2><p>Final {esc(str(sweep['metric']))} of each method on one seed per rate; "
        "the comparison uses the chosen rate.</p><table>" + "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in _sweep_table(sweep)) + "</table>")
    grids = ""
    for label, runs in groups.items():
        for run in runs:
            image = Path(run["dir"]) / "before_after.png"
            if image.is_file():
                rel = os.path.relpath(image.resolve(), out.resolve())
                grids += (f"<figure><figcaption>{esc(label)}, seed {run['config']['run']['seed']}</figcaption>"
                          f"<img src='{esc(rel)}'></figure>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:3px 8px}}img{{max-width:100%}}figure{{display:inline-block;margin:8px;vertical-align:top}}</style></head><body>
<h1>{esc(title)}</h1>
<p>Final values: mean over seeds [80% prediction interval: mean &plusmn; t<sub>0.9,n-1</sub> s &radic;(1+1/n)].
Wall-clock is the summed sample + reward + train time of the epochs (no evaluation or checkpointing).
Time to a target: images and seconds until the metric first reached the value, over the seeds that reached it
(reached/seeds).</p>
<table><tr><th>method</th><th>seeds</th><th>images</th><th>train s</th>{head}</tr>
{rows}</table>{sweep_html}
<h2>Reward vs images sampled</h2><img src="reward_vs_images.png">
<h2>Reward vs wall-clock</h2><img src="reward_vs_wallclock.png">
<h2>Held-out images before / after (same seeds)</h2>{grids or '<p>none</p>'}
</body></html>"""
    (out / "report.html").write_text(page)
    (out / "report.md").write_text(markdown_table(summary, keys) + (
        f"\nLearning-rate sweep (final {sweep['metric']}, one seed per rate):\n\n{_markdown(_sweep_table(sweep))}"
        if sweep else ""))
    return summary


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]) + "\n"


def markdown_table(summary: dict, keys: list[str]) -> str:
    """Final values, time to each target and the change over the run (mean [80% PI] over seeds), one row per method."""
    held_out = [k for k in keys if k.startswith("eval/")]
    rows = [["method", "seeds", "images", "train s", *keys, *_target_headers(summary), *(f"{k} change" for k in held_out)]]
    for label, g in summary.items():
        rows.append([label, str(len(g["runs"])), str(int(np.mean(g["images"]))), f"{np.mean(g['train_seconds']):.0f}",
                     *(_fmt(g["final"].get(k, {})) for k in keys),
                     *(c for t in g["time_to_target"] for c in _target_cells(t)),
                     *(_fmt(g["change"].get(k, {}), sign=True) for k in held_out)])
    return _markdown(rows)
