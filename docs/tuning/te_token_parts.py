"""Where a LoRA's text-encoder change acts, token by token (docs/tuning.md, section 52).

`change`: the mean size of the change of the text encoder's last hidden state, LoRA on against off, at each kind of
token of a prompt set (colors, shapes, the end/padding token, the start token, the other words), absolute and
relative to the base's.

`evaluate`: `diffrl evaluate` with the text encoder's output at the named words moved back toward the base's,
e = base + KEEP * (lora - base) there (KEEP 0: the base's output at those tokens, 1: the LoRA's), the rest untouched:
which tokens carry a gain or a loss. Every argument after `--` goes to `diffrl evaluate`.

    python docs/tuning/te_token_parts.py change runs/s51/ref_s01/soup --model builtin:shapes-spatial2
    python docs/tuning/te_token_parts.py evaluate 0 red,orange,yellow,green,blue,purple -- --lora runs/s51/ref_s01/soup \
        --model builtin:shapes-spatial2 --prompts shapes:spatial_unseen-val --images-per-prompt 32 --out OUT
"""
from __future__ import annotations

import argparse
import sys

import torch

from diffrl.shapes.world import COLORS, SHAPES

END = "<|endoftext|>"  # CLIP's end token, which also pads every prompt to the tokenizer's length


def token_words(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, list[list[str]]]:
    """(input ids (P, L), each position's word without CLIP's end-of-word mark) as the pipeline tokenizes them."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids, [[t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(row)] for row in ids]


def token_kind(word: str, start: str) -> str:
    if word in COLORS:
        return "color"
    if word in SHAPES:
        return "shape"
    return "end / padding" if word == END else "start" if word == start else "other words"


def mix_at_words(lora: torch.Tensor, base: torch.Tensor, words: list[list[str]], chosen: set[str],
                 keep: float) -> torch.Tensor:
    """lora's embeddings, with base + keep * (lora - base) at the positions whose word is in `chosen`."""
    mask = torch.tensor([[w in chosen for w in row] for row in words], dtype=lora.dtype, device=lora.device)[..., None]
    return lora + mask * (keep - 1) * (lora - base)


def change(args) -> None:
    from diffrl.models.pipeline import load_pipeline, resolve_model
    from diffrl.prompts import load_prompts

    pipe = load_pipeline(resolve_model(args.model))
    prompts = [p for p, _ in load_prompts(args.prompts).all()]
    ids, words = token_words(pipe.tokenizer, prompts)
    with torch.no_grad():
        base = pipe.text_encoder(ids)[0]
        pipe.load_lora_weights(args.lora)
        lora = pipe.text_encoder(ids)[0]
    size, ref = (lora - base).norm(dim=-1), base.norm(dim=-1)
    rows: dict[str, list[tuple[float, float]]] = {}
    for i, row in enumerate(words):
        for j, word in enumerate(row):
            rows.setdefault(token_kind(word, pipe.tokenizer.bos_token), []).append((float(size[i, j]), float(ref[i, j])))
    print(f"{'token':>14} {'count':>6} {'|change|':>9} {'|base|':>7} {'relative':>9}")
    for kind, values in rows.items():
        v = torch.tensor(values)
        print(f"{kind:>14} {len(v):>6} {v[:, 0].mean():>9.3f} {v[:, 1].mean():>7.3f} {(v[:, 0] / v[:, 1]).mean():>9.3f}")


def evaluate(args) -> int:
    import diffrl.evaluation as evaluation
    from diffrl.cli import main

    chosen = set(args.words.split(","))
    encode = evaluation.encode_prompts

    def encode_mixed(pipe, prompts, device, *rest):
        lora = encode(pipe, prompts, device, *rest)
        pipe.disable_lora()
        try:
            base = encode(pipe, prompts, device, *rest)
        finally:
            pipe.enable_lora()
        return mix_at_words(lora, base, token_words(pipe.tokenizer, prompts)[1], chosen, args.keep)

    evaluation.encode_prompts = encode_mixed  # evaluate's sampler encodes every prompt through it
    return main(["evaluate", *args.evaluate_args])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("change", help="the text encoder's change at each kind of token")
    c.add_argument("lora")
    c.add_argument("--model", default="builtin:shapes-spatial2")
    c.add_argument("--prompts", default="shapes:spatial_unseen-val")
    e = commands.add_parser("evaluate", help="diffrl evaluate with the change moved back at the named words")
    e.add_argument("keep", type=float)
    e.add_argument("words", help="comma-separated words (CLIP's end / padding token: '<|endoftext|>')")
    e.add_argument("evaluate_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "evaluate" and args.evaluate_args[:1] == ["--"]:
        args.evaluate_args = args.evaluate_args[1:]
    return args


if __name__ == "__main__":
    parsed = parse(sys.argv[1:])
    sys.exit(change(parsed) if parsed.command == "change" else evaluate(parsed))
