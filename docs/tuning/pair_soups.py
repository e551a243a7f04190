"""Every pair of seeds souped and evaluated: what the pair-soup command gains, with an interval over seeds.

    python docs/tuning/pair_soups.py BASE_RESULTS.json RUN... --out DIR [--prompts SPEC] [--images-per-prompt 32]
        [--jobs 2] [--eval-arg=--eta --eval-arg=0]

RUN: run directories of one command at different seeds (docs/tuning/spatial_pair_soup.sh writes two). For each run
alone and each pair of runs, `diffrl soup` (pairs, into DIR/soups/A+B) and `diffrl evaluate --baseline
BASE_RESULTS.json` (into DIR/A, DIR/A+B); an evaluation whose results.json exists is not repeated, so a stopped
study continues and more seeds can be added later. Then prints every run's and every pair's paired change against
the base (its 95% CI over prompts), and two summaries of what one pair soup gains:
- the mean over all pairs, with an 80% interval from the jackknife over seeds (leave one seed out): the pairs share
  members, so they are not independent replicates and an interval over pairs would be too narrow;
- the disjoint pairs in the order given (1+2, 3+4, ...), independent replicates, with their 80% prediction
  interval (where one more pair would fall).
--select-by-reward FIRST-LAST adds a selection scheme measured without the held-out prompts: each run's training
reward over those epochs, its correlation with the runs' held-out changes, and what keeping the two of every three
seeds with the higher training reward and souping them would gain (the pairs' evaluations, no new runs).
BASE_RESULTS.json must be the base's evaluation with the same prompts, images per prompt and sampling.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from diffrl.report import mean_ci, prediction_interval, t_quantile
from diffrl.runlog import read_metrics


def pair_mean_jackknife(values: dict[tuple[int, int], float], n: int, level: float = 0.8) -> dict:
    """Mean over all pairs i < j of n seeds (a U-statistic) and its jackknife interval over seeds.

    Leaving seed k out leaves the mean U_k over the pairs without k; the jackknife variance of the all-pairs mean U is
    (n - 1) / n * sum_k (U_k - mean_k U_k)^2, and the interval U +- t_{(1+level)/2, n-1} * sqrt(variance). Needs
    every pair of the n seeds and n >= 3 (so that each leave-one-out mean has a pair)."""
    pairs = list(itertools.combinations(range(n), 2))
    if n < 3 or any(p not in values for p in pairs):
        raise ValueError(f"need every pair of n >= 3 seeds (n = {n}, {len(values)} pairs given)")
    mean = float(np.mean([values[p] for p in pairs]))
    left_out = np.array([np.mean([values[p] for p in pairs if k not in p]) for k in range(n)])
    se = math.sqrt((n - 1) / n * float(((left_out - left_out.mean()) ** 2).sum()))
    half = t_quantile((1 + level) / 2, n - 1) * se
    return {"mean": mean, "se": se, "low": mean - half, "high": mean + half, "n_seeds": n, "n_pairs": len(pairs)}


def best_two_of_three(values: dict[tuple[int, int], float], scores: list[float]) -> list[float]:
    """For every triple of seeds, the value of its pair with the two highest scores (a scheme that trains three seeds,
    keeps the two that score best on something measured during training, and soups them)."""
    chosen = []
    for triple in itertools.combinations(range(len(scores)), 3):
        i, j = sorted(sorted(triple, key=lambda k: -scores[k])[:2])
        chosen.append(values[(i, j)])
    return chosen


def training_reward(run: Path, first: int, last: int) -> float:
    """The run's mean training reward over epochs first..last (metrics.jsonl's reward_mean)."""
    rewards = [r["reward_mean"] for r in read_metrics(run) if "reward_mean" in r and first <= r["epoch"] <= last]
    return float(np.mean(rewards))


def paired_change(results: Path, metric: str) -> dict:
    """An evaluation's paired change of `metric` against its baseline: mean and 95% CI over prompts."""
    return json.loads(results.read_text())["baseline"]["paired_change"][metric]


def evaluate(job: tuple[str, list[Path]], args) -> Path:
    """Soup the job's runs (if more than one) and evaluate; returns the results.json (existing ones are kept)."""
    name, runs = job
    results = args.out / name / "results.json"
    if results.is_file():
        return results
    cli = [sys.executable, "-m", "diffrl.cli"]
    lora = runs[0]
    if len(runs) > 1:
        lora = args.out / "soups" / name
        subprocess.run(cli + ["soup", *map(str, runs), "--out", str(lora)], check=True, stdout=subprocess.DEVNULL)
    threads = ["--threads", "1"] if args.jobs > 1 else []
    subprocess.run(cli + ["evaluate", "--lora", str(lora), "--prompts", args.prompts, "--images-per-prompt",
                          str(args.images_per_prompt), "--baseline", str(args.base), "--out", str(args.out / name),
                          *threads, *args.eval_arg], check=True, stdout=subprocess.DEVNULL)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the base model's `diffrl evaluate` results.json")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, one per seed")
    parser.add_argument("--out", type=Path, required=True, help="where the soups and evaluations go")
    parser.add_argument("--prompts", default="shapes:spatial_unseen-val", help="held-out prompts (a prompt spec)")
    parser.add_argument("--images-per-prompt", type=int, default=32)
    parser.add_argument("--metric", default="shapes_success")
    parser.add_argument("--jobs", type=int, default=2, help="evaluations at once (each at one torch thread)")
    parser.add_argument("--eval-arg", action="append", default=[], help="one more `diffrl evaluate` argument")
    parser.add_argument("--select-by-reward", metavar="FIRST-LAST",
                        help="also: each run's training reward over these epochs against its held-out change, and the "
                             "mean over every triple of seeds of the pair with the two highest such rewards")
    args = parser.parse_args()
    names = [run.name for run in args.runs]
    if len(set(names)) < len(names):
        raise SystemExit("pair_soups: the runs' directory names must differ (they name the evaluations)")
    pairs = list(itertools.combinations(range(len(args.runs)), 2))
    jobs = [(names[i], [args.runs[i]]) for i in range(len(args.runs))]
    jobs += [(f"{names[i]}+{names[j]}", [args.runs[i], args.runs[j]]) for i, j in pairs]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: evaluate(job, args), jobs))
    changes = {name: paired_change(r, args.metric) for (name, _), r in zip(jobs, results)}
    for name, c in changes.items():
        print(f"{name:50s} {c['mean']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]")
    singles = prediction_interval([changes[n]["mean"] for n in names])
    print(f"single runs: mean {singles['mean']:+.3f}, 80% prediction interval [{singles['pi_low']:+.3f}, "
          f"{singles['pi_high']:+.3f}] over {singles['n']} seeds")
    by_pair = {(i, j): changes[f"{names[i]}+{names[j]}"]["mean"] for i, j in pairs}
    if len(names) >= 3:
        jk = pair_mean_jackknife(by_pair, len(names))
        print(f"all {jk['n_pairs']} pairs: mean {jk['mean']:+.3f}, 80% interval [{jk['low']:+.3f}, {jk['high']:+.3f}] "
              f"(jackknife over {jk['n_seeds']} seeds); range [{min(by_pair.values()):+.3f}, "
              f"{max(by_pair.values()):+.3f}]")
    disjoint = [by_pair[(i, i + 1)] for i in range(0, len(names) - 1, 2)]
    if len(disjoint) > 1:
        pi, ci = prediction_interval(disjoint), mean_ci(disjoint, 0.8)
        print(f"disjoint pairs ({', '.join(f'{v:+.3f}' for v in disjoint)}): mean {pi['mean']:+.3f}, 80% prediction "
              f"interval [{pi['pi_low']:+.3f}, {pi['pi_high']:+.3f}]; mean's 80% CI [{ci['ci_low']:+.3f}, "
              f"{ci['ci_high']:+.3f}]")
    if args.select_by_reward and len(names) >= 3:
        first, last = map(int, args.select_by_reward.split("-"))
        rewards = [training_reward(run, first, last) for run in args.runs]
        gains = [changes[n]["mean"] for n in names]
        chosen = best_two_of_three(by_pair, rewards)
        print(f"training reward over epochs {first}-{last}: {', '.join(f'{r:.3f}' for r in rewards)}; correlation with "
              f"the runs' held-out changes {np.corrcoef(rewards, gains)[0, 1]:+.2f}; the best two of every three seeds "
              f"by it, souped: mean {np.mean(chosen):+.3f} over {len(chosen)} triples")


if __name__ == "__main__":
    main()
