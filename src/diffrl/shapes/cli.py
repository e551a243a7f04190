"""`diffrl shapes pretrain|report`: train the ShapesWorld base model, or measure one.

The main CLI calls `register(subparsers)`; each subcommand sets `func` (args -> exit code).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffrl.errors import DiffrlError
from diffrl.shapes import BUILTIN_MODEL_DIR
from diffrl.shapes.pretrain import DEFAULT_GUIDANCE, DEFAULT_STEPS, LOSS_WEIGHTINGS, PretrainConfig


def register(subparsers) -> None:
    """Add `shapes` with its `pretrain` and `report` subcommands to an argparse subparsers object."""
    shapes = subparsers.add_parser("shapes", help="ShapesWorld: pretrain the base model or report its accuracy")
    commands = shapes.add_subparsers(dest="shapes_command", required=True)

    defaults = PretrainConfig()
    p = commands.add_parser("pretrain", help="train the ShapesWorld SD pipeline from scratch (~30 min, 2 CPU cores)")
    p.add_argument("--out", type=Path, required=True, help="directory for the save_pretrained pipeline")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--vae-steps", type=int, default=defaults.vae_steps, help="autoencoder optimizer steps")
    p.add_argument("--unet-steps", type=int, default=defaults.unet_steps, help="UNet + text encoder optimizer steps")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="end after N of the --unet-steps (the model the full run saves at step N; its learning-rate "
                        "schedule still spans --unet-steps)")
    p.add_argument("--category-weights", type=_category_weights, default=None, metavar="CAT=W,...",
                   help="how often each category's train prompts are drawn, e.g. color_binding=1 (unnamed categories "
                        "keep their default: color_binding 0, the others 1)")
    p.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default=defaults.loss_weighting,
                   help="weight of the denoiser's MSE over timesteps: epsilon (DDPM's simple loss) or v (1/alpha_bar: "
                        "the high-noise steps that place objects count as in v-prediction)")
    p.add_argument("--zero-terminal-snr", action="store_true",
                   help="rescale the noise schedule to zero terminal SNR and predict v (the prompt, not the starting "
                        "noise, must place the objects)")
    p.add_argument("--bidirectional-text", action="store_true",
                   help="a BERT text encoder, whose subject tokens see the relation word (CLIP's is causal)")
    p.add_argument("--high-noise-fraction", type=float, default=defaults.high_noise_fraction, metavar="F",
                   help="fraction of each batch trained at the noisiest tenth of the timesteps, where the layout is "
                        "decided (default: %(default)s, uniform timesteps)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="continue from this saved pipeline (its autoencoder, text encoder and schedule are kept; only "
                        "the denoiser phase runs), e.g. a spatial-only high-noise phase after the usual pretraining")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    p.set_defaults(func=_pretrain)

    r = commands.add_parser("report", help="sample val/unseen prompts and print the per-category success table")
    r.add_argument("--model", default="builtin", help="pipeline directory, 'builtin' for the shipped model, or "
                                                      "builtin:NAME (builtin:shapes, builtin:shapes-spatial, builtin:shapes-spatial2)")
    r.add_argument("--images-per-prompt", type=int, default=8)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps")
    r.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale")
    r.add_argument("--max-prompts", type=int, default=None, help="evaluate at most this many prompts per row")
    r.add_argument("--out", type=Path, default=None, help="write table.json and grid.png here")
    r.add_argument("--threads", type=int, default=None)
    r.set_defaults(func=_report)


def _category_weights(text: str) -> dict[str, float]:
    """'color_binding=1,spatial=2' -> every category's weight (PretrainConfig's default unless named); argparse turns
    errors into usage."""
    weights = PretrainConfig().category_weights
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in weights:
            raise argparse.ArgumentTypeError(f"{item!r}: expected CATEGORY=WEIGHT with CATEGORY one of {tuple(weights)}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: the weight must be a number") from None
    if min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: weights must be >= 0 with a positive sum")
    return weights


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _pretrain(args: argparse.Namespace) -> int:
    from diffrl.shapes.pretrain import pretrain

    cfg = PretrainConfig(seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                         stop_after=args.stop_after, loss_weighting=args.loss_weighting,
                         zero_terminal_snr=args.zero_terminal_snr,
                         high_noise_fraction=args.high_noise_fraction, bidirectional_text=args.bidirectional_text,
                         init=args.init)
    if args.category_weights:
        cfg.category_weights = args.category_weights
    try:
        cfg.check()
    except ValueError as err:
        raise DiffrlError(str(err)) from None
    out = pretrain(args.out, cfg, progress=not args.no_progress, threads=args.threads)
    print(f"saved pipeline to {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from diffrl.models.pipeline import resolve_model
    from diffrl.shapes.pretrain import evaluate_base, format_table, save_grid

    _set_threads(args.threads)
    model = BUILTIN_MODEL_DIR if args.model == "builtin" else Path(resolve_model(args.model))
    table, images = evaluate_base(model, args.images_per_prompt, args.seed, args.steps, args.guidance,
                                  max_prompts=args.max_prompts)
    print(format_table(table))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {k: getattr(args, k) for k in ("images_per_prompt", "seed", "steps", "guidance", "max_prompts")}
        (args.out / "table.json").write_text(json.dumps({"model": str(model), **settings, "table": table}, indent=2))
        save_grid(images, args.out / "grid.png")
        print(f"wrote {args.out / 'table.json'} and {args.out / 'grid.png'}")
    return 0
