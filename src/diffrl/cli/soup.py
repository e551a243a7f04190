"""`diffrl soup`: average the LoRA adapters of runs from one base model into one adapter (diffrl.soup)."""
from __future__ import annotations

import json
from pathlib import Path

from diffrl.errors import DiffrlError

SOUP_RECORD = "soup.json"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "soup", help="average the LoRA adapters of runs from one base (a model soup)",
        description="Writes OUT/pytorch_lora_weights.safetensors, the weighted mean of the runs' LoRA weight changes "
                    "(exact: a LoRA of the summed rank), which `diffrl evaluate --model BASE --lora OUT` and plain "
                    "diffusers' load_lora_weights load, and OUT/soup.json (the runs, weights and base). Seeds of one "
                    "command share what the reward taught and differ in their sampling noise, which averaging "
                    "shrinks: on ShapesWorld's spatial split the mean of three no-KL runs gains about twice what one "
                    "run gains held out (docs/tuning.md, section 33).")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="run directories (their lora/) or LoRA directories, all fine-tuned from the same base")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--weights", type=float, nargs="+", metavar="W",
                   help="one weight per run (default: equal, summing to 1); a single run with a weight below 1 "
                        "interpolates between the base and the run (WiSE-FT)")
    p.set_defaults(func=run)


def run_base(path: Path) -> str | None:
    """The base model a run directory fine-tuned (its config's model.pretrained), or the one a soup recorded (a soup
    of soups); None for a bare LoRA directory."""
    from diffrl.config import load_config
    from diffrl.report import CONFIG_FILE

    if (path / CONFIG_FILE).is_file():
        return load_config(path / CONFIG_FILE).model.pretrained
    if (path / SOUP_RECORD).is_file():
        return json.loads((path / SOUP_RECORD).read_text()).get("base")
    return None


def run(args) -> int:
    from safetensors.torch import save_file

    from diffrl.soup import LORA_FILE, soup_files

    known = {base for base in map(run_base, args.runs) if base is not None}
    if len(known) > 1:
        raise DiffrlError(f"soup: the runs fine-tune different base models ({', '.join(sorted(known))}); a soup "
                          "averages changes to one base")
    weights = args.weights or [1.0 / len(args.runs)] * len(args.runs)
    averaged = soup_files(args.runs, weights)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(averaged, str(args.out / LORA_FILE), metadata={"format": "pt"})
    base = known.pop() if known else None
    record = {"runs": [str(p.resolve()) for p in args.runs], "weights": weights, "base": base}
    (args.out / SOUP_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(f"diffrl: soup: {len(args.runs)} adapter(s), weights {', '.join(f'{w:g}' for w in weights)} -> "
          f"{args.out / LORA_FILE}")
    print(f"diffrl: soup: evaluate it with `diffrl evaluate --model {base or 'BASE'} --lora {args.out}`")
    return 0
