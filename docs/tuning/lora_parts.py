"""Where a run's held-out gain (and its drift) lives: each run's LoRA split into its UNet part and its text encoder
part, its components scaled by other factors, its change truncated to a lower rank, or a soup shrunk where its
members disagree, each evaluated alone (docs/tuning.md, sections 42, 50 and 51).

    python docs/tuning/lora_parts.py BASE_RESULTS.json RUN... --out DIR [--images-per-prompt 32] [--jobs 2]
        [--scales unet=1,text_encoder=0.5 ...] [--rank 4 ...] [--shrink] [--eval-arg=--eta --eval-arg=0]

For each RUN, `diffrl soup RUN --weights 1` (the run's adapter with its alpha / rank folded in, so each component
loads at scale 1) is written to DIR/adapters/NAME_whole. Each --scales set (default: the two parts, unet=1,text_encoder=0
and unet=0,text_encoder=1) multiplies each component's change by its factor (a factor of 0 drops the component; one
not named keeps 1) into DIR/adapters/NAME_SUFFIX, where SUFFIX is the component's name for a part (NAME_unet,
NAME_text_encoder) and e.g. unet1_text_encoder0.5 otherwise. Each --rank R keeps, in every module, the R largest
singular directions of the change B @ A (a soup of two rank-4 runs has rank up to 8) into DIR/adapters/NAME_rankR.
With --shrink (RUN a soup), each module's change is shrunk toward the base by how much the soup's members disagree
there (`shrunk`) into DIR/adapters/NAME_shrunk. Each is evaluated with `diffrl evaluate --baseline
BASE_RESULTS.json` into DIR/NAME_SUFFIX (existing results are kept). Prints each one's paired change beside the whole
run's, when DIR/NAME holds its evaluation (as pair_soups.py writes it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from lora_geometry import module_pairs  # this directory's scripts: the same (A, B) pairing, evaluation and reading
from pair_soups import evaluate, paired_change

COMPONENTS = ("unet", "text_encoder")
PARTS = tuple({c: float(c == part) for c in COMPONENTS} for part in COMPONENTS)


def parse_scales(text: str) -> dict[str, float]:
    """'unet=1,text_encoder=0.5' -> {component: factor}, every component named (1 where the text does not say)."""
    scales = dict.fromkeys(COMPONENTS, 1.0)
    for item in text.split(","):
        component, _, factor = item.partition("=")
        if component not in COMPONENTS or not factor:
            raise argparse.ArgumentTypeError(f"--scales: {item!r} is not COMPONENT=FACTOR with COMPONENT in "
                                             f"{', '.join(COMPONENTS)}")
        scales[component] = float(factor)
    return scales


def suffix(scales: dict[str, float]) -> str:
    """The adapter's name after the run's: the component for a part, every factor otherwise."""
    for component in COMPONENTS:
        if scales == {c: float(c == component) for c in COMPONENTS}:
            return component
    return "_".join(f"{c}{scales[c]:g}" for c in COMPONENTS)


def scaled(tensors: dict[str, torch.Tensor], scales: dict[str, float], run: Path) -> dict[str, torch.Tensor]:
    """The adapter with each component's LoRA B times its factor (B @ A is linear in B); factor 0 drops it."""
    present = {key.split(".", 1)[0] for key in tensors}
    adapter = {}
    for component, factor in scales.items():
        if factor == 0:
            continue
        if component not in present:
            raise SystemExit(f"lora_parts: {run} has no {component} adapter")
        adapter |= {key: value * factor if ".lora_B." in key else value
                    for key, value in tensors.items() if key.split(".", 1)[0] == component}
    return adapter


def truncated(tensors: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The adapter whose change in every module is the best rank-`rank` approximation of its B @ A (the SVD's top
    directions, split as B' = U sqrt(S), A' = sqrt(S) V^T); modules of lower rank are kept as they are."""
    adapter = {}
    for key_a in (key for key in tensors if ".lora_A." in key):
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        a, b = tensors[key_a], tensors[key_b]
        if a.dim() != 2 or a.shape[0] <= rank:
            adapter[key_a], adapter[key_b] = a, b
            continue
        u, s, vh = torch.linalg.svd(b.double() @ a.double(), full_matrices=False)
        root = s[:rank].sqrt()
        adapter[key_a] = (root[:, None] * vh[:rank]).to(a.dtype).contiguous()
        adapter[key_b] = (u[:, :rank] * root).to(b.dtype).contiguous()
    return adapter


def shrunk(tensors: dict[str, torch.Tensor], members: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A soup with every module's change M (the members' mean) shrunk toward the base by where its members disagree:
    M * max(0, 1 - v / |M|^2), v = sum_i |D_i - M|^2 / (n (n - 1)) the squared standard error of the mean of the
    members' changes D_i (James-Stein's factor, module by module)."""
    adapter = dict(tensors)
    n, member_pairs = len(members), [module_pairs(m) for m in members]
    for key_a in module_pairs(tensors):
        changes = torch.stack([b @ a for a, b in (pairs[key_a] for pairs in member_pairs)])
        mean = changes.mean(0)
        variance = (changes - mean).square().sum() / (n * (n - 1))
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        adapter[key_b] = tensors[key_b] * float((1 - variance / mean.square().sum()).clamp(min=0))
    return adapter


def variants(run: Path, out: Path, scale_sets: list[dict[str, float]], ranks: list[int], shrink: bool
             ) -> dict[str, Path]:
    """DIR per variant of the run's adapter (alpha / rank folded in): each scale set, each rank, the shrunk soup."""
    from safetensors.torch import load_file, save_file

    from diffrl.soup import LORA_FILE, soup_files

    whole = out / f"{run.name}_whole"
    if not (whole / LORA_FILE).is_file():
        subprocess.run([sys.executable, "-m", "diffrl.cli", "soup", str(run), "--weights", "1", "--out", str(whole)],
                       check=True, stdout=subprocess.DEVNULL)
    tensors = load_file(str(whole / LORA_FILE))
    made = {suffix(scales): scaled(tensors, scales, run) for scales in scale_sets}
    made |= {f"rank{rank}": truncated(tensors, rank) for rank in ranks}
    if shrink:
        record = run / "soup.json"
        if not record.is_file():
            raise SystemExit(f"lora_parts: --shrink needs a soup ({run} has no soup.json)")
        members = [soup_files([Path(member)], [1.0]) for member in json.loads(record.read_text())["runs"]]
        made["shrunk"] = shrunk(tensors, members)
    adapters = {}
    for name, adapter in made.items():
        path = out / f"{run.name}_{name}"
        path.mkdir(parents=True, exist_ok=True)
        save_file(adapter, str(path / LORA_FILE), metadata={"format": "pt"})
        (path / "soup.json").write_text((whole / "soup.json").read_text())  # the base model, for `evaluate`
        adapters[name] = path
    return adapters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the base model's `diffrl evaluate` results.json")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scales", type=parse_scales, action="append",
                        help="COMPONENT=FACTOR,... (repeatable; default: the UNet part and the text encoder part)")
    parser.add_argument("--rank", type=int, action="append", default=[],
                        help="truncate every module's change to this rank (repeatable)")
    parser.add_argument("--shrink", action="store_true",
                        help="RUN is a soup: shrink each module's change by where its members disagree")
    parser.add_argument("--prompts", default="shapes:spatial_unseen-val")
    parser.add_argument("--images-per-prompt", type=int, default=32)
    parser.add_argument("--metric", default="shapes_success")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--eval-arg", action="append", default=[], help="one more `diffrl evaluate` argument")
    args = parser.parse_args()
    scale_sets = args.scales or ([] if args.rank or args.shrink else list(PARTS))
    jobs = []
    for run in args.runs:
        made = variants(run, args.out / "adapters", scale_sets, args.rank, args.shrink)
        jobs += [(f"{run.name}_{name}", [adapter]) for name, adapter in made.items()]  # pair_soups.evaluate: no soup
    names = list(made)  # every run has the same variants

    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip((name for name, _ in jobs), pool.map(lambda job: evaluate(job, args), jobs)))

    def change(results: Path) -> str:
        if not results.is_file():
            return "      -"
        c = paired_change(results, args.metric)
        return f"{c['mean']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"

    print(f"{'run':30s} {'whole run':24s} " + " ".join(f"{name:24s}" for name in names))
    for run in args.runs:
        print(f"{run.name:30s} {change(args.out / run.name / 'results.json'):24s} "
              + " ".join(f"{change(done[f'{run.name}_{name}']):24s}" for name in names))


if __name__ == "__main__":
    main()
