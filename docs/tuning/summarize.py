"""The tuning study's table and curves: each run's main settings and its held-out success at every evaluation.

    python docs/tuning/summarize.py runs/study/*/                      # table
    python docs/tuning/summarize.py RUN_DIR ... --plot curves.png       # + held-out success vs images and seconds
Runs stopped early (killed once their trend was clear) are shown up to their last evaluation.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

KEYS = ["train.learning_rate", "train.clip_range", "train.inner_epochs", "train.minibatches", "train.kl_coef",
        "train.ptx_coef", "train.first_steps", "sample.k", "sample.prompts_per_batch", "model.lora_target_modules",
        "run.reward", "run.prompts", "run.seed"]
METRIC = "eval/shapes_success"


def load(run: Path) -> tuple[dict, list[tuple[int, int, float, float]]]:
    """(settings, [(epoch, images seen, seconds of sampling + reward + training, held-out success)])."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    flat = {f"{section}.{key}": value for section, table in config.items() for key, value in table.items()}
    curve, seconds, images = [], 0.0, 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        seconds += record.get("sample_s", 0) + record.get("reward_s", 0) + record.get("train_s", 0)
        images = record.get("images_seen", images)
        if METRIC in record:
            curve.append((record["epoch"], images, seconds, record[METRIC]))
    return {key.split(".")[-1]: flat[key] for key in KEYS if key in flat}, curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--plot", type=Path, help="write held-out success against images and against seconds")
    args = parser.parse_args()
    runs = {run.name: load(run) for run in args.runs if (run / "metrics.jsonl").is_file()}
    for name, (settings, curve) in runs.items():
        print(name, settings)
        print("   held-out success:", " ".join(f"{e}:{v:.3f}" for e, _, _, v in curve))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for name, (_, curve) in runs.items():
            for ax, column in zip(axes, (1, 2)):
                ax.plot([c[column] for c in curve], [c[3] for c in curve], marker="o", label=name)
        axes[0].set_xlabel("images sampled")
        axes[1].set_xlabel("seconds (sampling + reward + training)")
        axes[0].set_ylabel("held-out success")
        axes[1].legend(fontsize=7)
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
