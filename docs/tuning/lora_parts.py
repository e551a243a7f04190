"""Where a run's held-out gain (and its drift) lives: each run's LoRA split into its UNet part and its text encoder
part, each part evaluated alone (docs/tuning.md, section 42).

    python docs/tuning/lora_parts.py BASE_RESULTS.json RUN... --out DIR [--images-per-prompt 32] [--jobs 2]
        [--eval-arg=--eta --eval-arg=0]

For each RUN, `diffrl soup RUN --weights 1` (the run's adapter with its alpha / rank folded in, so the parts load at
scale 1) is written to DIR/adapters/NAME_unet and NAME_text_encoder with only that component's keys, and each is
evaluated with `diffrl evaluate --baseline BASE_RESULTS.json` into DIR/NAME_unet, DIR/NAME_text_encoder (existing
results are kept). Prints each part's paired change beside the whole run's, when DIR/NAME holds its evaluation (as
pair_soups.py writes it).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pair_soups import evaluate, paired_change  # this directory's script: the same evaluation and reading

COMPONENTS = ("unet", "text_encoder")


def split_adapter(run: Path, out: Path) -> dict[str, Path]:
    """DIR per component: the run's adapter (scale folded in) restricted to that component's keys."""
    from safetensors.torch import load_file, save_file

    from diffrl.soup import LORA_FILE

    whole = out / f"{run.name}_whole"
    if not (whole / LORA_FILE).is_file():
        subprocess.run([sys.executable, "-m", "diffrl.cli", "soup", str(run), "--weights", "1", "--out", str(whole)],
                       check=True, stdout=subprocess.DEVNULL)
    tensors = load_file(str(whole / LORA_FILE))
    parts = {}
    for component in COMPONENTS:
        part = out / f"{run.name}_{component}"
        part.mkdir(parents=True, exist_ok=True)
        mine = {key: value for key, value in tensors.items() if key.split(".", 1)[0] == component}
        if not mine:
            raise SystemExit(f"lora_parts: {run} has no {component} adapter")
        save_file(mine, str(part / LORA_FILE), metadata={"format": "pt"})
        (part / "soup.json").write_text((whole / "soup.json").read_text())  # the base model, for `diffrl evaluate`
        parts[component] = part
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the base model's `diffrl evaluate` results.json")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", default="shapes:spatial_unseen-val")
    parser.add_argument("--images-per-prompt", type=int, default=32)
    parser.add_argument("--metric", default="shapes_success")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--eval-arg", action="append", default=[], help="one more `diffrl evaluate` argument")
    args = parser.parse_args()
    jobs = []
    for run in args.runs:
        for component, part in split_adapter(run, args.out / "adapters").items():
            jobs.append((f"{run.name}_{component}", [part]))  # pair_soups.evaluate: one adapter, no soup

    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip((name for name, _ in jobs), pool.map(lambda job: evaluate(job, args), jobs)))

    def change(results: Path) -> str:
        if not results.is_file():
            return "      -"
        c = paired_change(results, args.metric)
        return f"{c['mean']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"

    print(f"{'run':30s} {'whole run':24s} {'UNet part':24s} text encoder part")
    for run in args.runs:
        print(f"{run.name:30s} {change(args.out / run.name / 'results.json'):24s} "
              f"{change(done[f'{run.name}_unet']):24s} {change(done[f'{run.name}_text_encoder'])}")


if __name__ == "__main__":
    main()
