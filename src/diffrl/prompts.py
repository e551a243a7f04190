"""Prompt sources: a text file (one prompt a line), a built-in set, or a Python callable.

Spec forms:
  path/to/prompts.txt             one prompt per line (blank lines and #-comments skipped)
  shapes:<category>_<split>       ShapesWorld prompts with metadata, e.g. shapes:color_binding_unseen-train
  t2i-compbench:<name>            <name>.txt of a local T2I-CompBench(++) examples/dataset folder
                                  (DIFFRL_T2I_COMPBENCH_DIR), e.g. color_train, numeracy_val
  builtin:animals                 DDPO's simple animal list
  module:function                 returns a list of prompts / (prompt, metadata) pairs, or one
                                  (prompt, metadata) pair per call (DDPO's prompt_fn)
  SPEC+SPEC+...                   the fixed sets concatenated; training draws uniformly from the whole list,
                                  so a set named twice is drawn twice as often as once, e.g.
                                  shapes:spatial_unseen-train-all+shapes:spatial_unseen-train-all+shapes:spatial_train

Held-out prompts (`run.eval_prompts`) are resolved in one place, `split_prompts`: a spec, none, or
"auto" (the default), which follows the training prompts (see `split_prompts`).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffrl.errors import DiffrlError

Prompt = tuple[str, dict]

BUILTIN_SETS = {
    "animals": ["cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer", "cow", "goat",
                "lion", "tiger", "bear", "raccoon", "fox", "wolf", "lizard", "beetle", "ant", "butterfly", "fish",
                "shark", "whale", "dolphin", "squirrel", "mouse", "rat", "snake", "turtle", "frog", "chicken", "duck",
                "goose", "bee", "pig", "turkey", "fly", "llama", "camel", "bat", "gorilla", "hedgehog", "kangaroo"],
}


class PromptSource:
    """Either a fixed list of prompts (sampled uniformly) or a generator function called per prompt."""

    def __init__(self, prompts: list[Prompt] | None = None, generate: Callable[[], Prompt] | None = None, name: str = ""):
        if prompts is not None and not prompts:
            raise DiffrlError(f"prompt set {name!r} is empty")
        self.prompts, self.generate, self.name = prompts, generate, name

    def sample(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        if self.prompts is None:
            return [_check_pair(self.generate(), self.name) for _ in range(n)]
        return [self.prompts[i] for i in rng.integers(len(self.prompts), size=n)]

    def all(self) -> list[Prompt]:
        if self.prompts is None:
            raise DiffrlError(f"prompt source {self.name!r} is a generator; evaluation needs a fixed prompt set")
        return self.prompts


def _check_pair(item, name: str) -> Prompt:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
        return item
    raise DiffrlError(f"prompt source {name!r} produced {item!r}; expected a string or (prompt, metadata dict)")


def read_prompt_file(path: Path) -> list[Prompt]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DiffrlError(f"prompt file {path} is not UTF-8 text") from None
    except OSError as err:
        raise DiffrlError(f"cannot read prompt file {path}: {err.strerror}") from None
    lines = [line.strip() for line in text.splitlines()]
    prompts = [(line, {}) for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise DiffrlError(f"prompt file {path} has no prompts (one per line expected)")
    return prompts


def load_prompts(spec: str) -> PromptSource:
    if "+" in spec and not Path(spec).expanduser().exists():
        return _concatenated(spec)
    if spec.startswith("shapes:"):
        from diffrl.shapes import world

        name = spec.split(":", 1)[1]
        category, _, split = name.rpartition("_")
        if split not in world.SPLITS or category not in (*world.CATEGORIES, "all"):
            raise DiffrlError(f"unknown ShapesWorld prompt set {spec!r}; use shapes:<category>_<split> with category in "
                              f"{', '.join(world.CATEGORIES)} or all, split in {', '.join(world.SPLITS)}")
        specs = world.all_prompts(split) if category == "all" else world.prompt_set(category, split)
        return PromptSource([(p.text, p.to_metadata()) for p in specs], name=spec)
    if spec.startswith("t2i-compbench:"):
        from diffrl.prompts_t2i import load_t2i_compbench

        return PromptSource([(p, {}) for p in load_t2i_compbench(spec)], name=spec)
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTIN_SETS:
            raise DiffrlError(f"unknown built-in prompt set {spec!r}; available: {', '.join(BUILTIN_SETS)}")
        return PromptSource([(p, {}) for p in BUILTIN_SETS[name]], name=spec)
    path = Path(spec).expanduser()
    if path.exists() or ":" not in spec:
        if not path.is_file():
            raise DiffrlError(f"prompt file not found: {spec}")
        return PromptSource(read_prompt_file(path), name=spec)
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise DiffrlError(f"cannot load prompt function {spec!r}: {err}") from None
    first = fn()
    if isinstance(first, list):
        return PromptSource([_check_pair(p, spec) for p in first], name=spec)
    _check_pair(first, spec)
    return PromptSource(generate=fn, name=spec)


def _concatenated(spec: str) -> PromptSource:
    """`A+B+...`: the fixed prompt sets A, B, ... in one list (a set named twice counts twice)."""
    parts = spec.split("+")
    if not all(part.strip() for part in parts):
        raise DiffrlError(f"prompt spec {spec!r} has an empty part; join prompt sets as A+B")
    sources = [load_prompts(part.strip()) for part in parts]
    for part, source in zip(parts, sources):
        if source.prompts is None:
            raise DiffrlError(f"prompt spec {spec!r}: {part.strip()} is a prompt generator; only fixed sets join with +")
    return PromptSource([p for source in sources for p in source.prompts], name=spec)


# ---------------------------------------------------------------------------- held-out prompts

AUTO = "auto"  # run.eval_prompts' default: held-out prompts that follow run.prompts
SHAPES_HELD_OUT = "shapes:color_binding_unseen-val"  # ShapesWorld's: the other half of the unseen color-binding pairs
HOLD_OUT_FRACTION = 0.2
HOLD_OUT_MIN_PROMPTS = 5  # distinct prompts a set needs before "auto" takes some of them from training
HOLD_OUT_SEED = 0  # fixed: every run (method, seed) on the same prompt set holds out the same prompts


@dataclass
class PromptSplit:
    train: PromptSource  # what training samples from
    held_out: list[Prompt] | None  # evaluated before, during and after training; None: no held-out evaluation
    note: str | None = None  # why "auto" chose what it chose, to print once (None: nothing worth saying)


def holds_out_training_prompts(prompts: str, eval_prompts: str | None) -> bool:
    """Whether `eval_prompts` may take prompts away from training (then it changes the math of a run)."""
    return eval_prompts == AUTO and not prompts.startswith("shapes:")


def split_prompts(prompts: str, eval_prompts: str | None) -> PromptSplit:
    """Training prompts and held-out prompts from `run.prompts` and `run.eval_prompts`.

    eval_prompts None: no held-out evaluation. A prompt spec: those prompts. "auto": with ShapesWorld
    training prompts (shapes:...), SHAPES_HELD_OUT; with any other fixed set of at least
    HOLD_OUT_MIN_PROMPTS distinct prompts, a fixed-seed 20% of them (at least 1), removed from training (every
    copy of a held-out text); with fewer, or a prompt generator, no held-out evaluation (see `note`).
    """
    source = load_prompts(prompts)
    if eval_prompts is None:
        return PromptSplit(source, None)
    if eval_prompts != AUTO:
        return PromptSplit(source, load_prompts(eval_prompts).all())
    if prompts.startswith("shapes:"):
        return PromptSplit(source, load_prompts(SHAPES_HELD_OUT).all())
    if source.prompts is None:
        return PromptSplit(source, None, f"no held-out evaluation: run.prompts={prompts} is a prompt generator; "
                                         "set run.eval_prompts to a fixed prompt set to evaluate one")
    texts = list(dict.fromkeys(p for p, _ in source.prompts))
    if len(texts) < HOLD_OUT_MIN_PROMPTS:
        return PromptSplit(source, None, f"no held-out evaluation: run.prompts={prompts} has {len(texts)} distinct "
                                         f"prompt(s), run.eval_prompts=auto holds some out from {HOLD_OUT_MIN_PROMPTS} "
                                         "on; set run.eval_prompts to a prompt set to evaluate one")
    count = max(1, round(HOLD_OUT_FRACTION * len(texts)))
    chosen = {texts[i] for i in np.random.default_rng(HOLD_OUT_SEED).permutation(len(texts))[:count]}
    first = {}
    for text, meta in source.prompts:
        first.setdefault(text, (text, meta))
    held_out = [first[t] for t in texts if t in chosen]  # in file order
    train = PromptSource([p for p in source.prompts if p[0] not in chosen], name=source.name)
    return PromptSplit(train, held_out, f"held-out prompts: {count} of the {len(texts)} in {prompts} "
                                        "(run.eval_prompts=auto; never trained on)")
