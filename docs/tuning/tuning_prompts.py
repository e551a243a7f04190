"""Prompt sources for the tuning study (docs/tuning.md): `--prompts tuning_prompts:hard3` with PYTHONPATH=docs/tuning."""
from diffrl.shapes.world import UNSEEN_COMBOS, ShapeObject, pair_prompts, all_prompts, counting, prompt_set, single


def _pick(texts: list[str]) -> list[tuple[str, dict]]:
    table = {spec.text: spec for spec in all_prompts("unseen")}
    return _as_prompts(table[text] for text in texts)


def hard3() -> list[tuple[str, dict]]:
    """Three color_binding_unseen-train prompts the base model mostly fails (success 0.5, 0.125, 0.125)."""
    return _pick(["a red circle and a purple triangle", "an orange triangle and a red square",
                  "a blue circle and a purple square"])


def orange_triangle_train() -> list[tuple[str, dict]]:
    """The 10 color_binding_unseen-train prompts that name an orange triangle (section 19: the combination the demo
    does not learn)."""
    return _as_prompts(spec for spec in prompt_set("color_binding", "unseen-train") if "orange triangle" in spec.text)


def spatial_unseen_and_seen() -> list[tuple[str, dict]]:
    """Every phrasing of the 27 spatial_unseen-train pairs plus the 520 spatial_train prompts (the pretraining's
    seen pairs): the relation trained across many partners, not only on the unseen pairs (section 22)."""
    return _as_prompts([*prompt_set("spatial", "unseen-train-all"), *prompt_set("spatial", "train")])


def spatial_unseen_twice_and_seen() -> list[tuple[str, dict]]:
    """spatial_unseen_and_seen with every phrasing of the 27 unseen pairs listed twice: prompts are drawn with
    replacement, so the unseen pairs are 45% of the draws instead of 29% (section 32)."""
    return _as_prompts(prompt_set("spatial", "unseen-train-all")) + spatial_unseen_and_seen()


def spatial_unseen_color_complete() -> list[tuple[str, dict]]:
    """Every phrasing of the 27 spatial_unseen-train pairs plus the spatial_train prompts (seen pairs) of the color
    pairs those lack (orange+red, orange+yellow, red+yellow: 144 prompts), so that training shows every two-color
    contrast of the world; chosen from the training split alone (section 22)."""
    unseen = prompt_set("spatial", "unseen-train-all")
    covered = {_colors(spec) for spec in unseen}
    extra = [spec for spec in prompt_set("spatial", "train") if _colors(spec) not in covered]
    return _as_prompts([*unseen, *extra])


ORANGE_WARM = ({"orange", "red"}, {"orange", "yellow"})  # the held-out set's unshown contrast (section 22)


def spatial_seen_orange_warm() -> list[tuple[str, dict]]:
    """The 72 spatial_train prompts (seen pairs) that put orange beside red or yellow: how the base does on the
    contrast the held-out set asks for, on pairs pretraining drew (section 22)."""
    return _as_prompts(spec for spec in prompt_set("spatial", "train")
                       if _colors(spec) in ORANGE_WARM)


SIMILAR_HUES = (*ORANGE_WARM, {"red", "yellow"}, {"purple", "blue"})


def spatial_seen_similar_vertical() -> list[tuple[str, dict]]:
    """The 88 spatial_train prompts (seen pairs) that put two similar hues (orange, red and yellow among
    themselves; purple and blue) above or below each other: the training prompts the pair soups learn least, and the
    kind of held-out prompt they still miss, where the relation fails between similar hues (section 48)."""
    return _as_prompts(spec for spec in prompt_set("spatial", "train")
                       if _colors(spec) in SIMILAR_HUES and spec.relation in ("above", "below"))


def unseen_combos_alone() -> list[tuple[str, dict]]:
    """The four color-shape combinations pretraining never drew, alone: "an orange triangle", "two orange
    triangles", "three orange triangles", and the same for the blue circle, the green square and the purple triangle
    (12 prompts no split holds: single and counting prompts use seen combinations only). Whether the base can draw
    an unseen combination at all, without a partner (section 59)."""
    objects = [ShapeObject(color, shape) for color, shape in sorted(UNSEEN_COMBOS)]
    return _as_prompts([*(single(o) for o in objects), *(counting(o, n) for o in objects for n in (2, 3))])


def spatial_held_out_pairs_all() -> list[tuple[str, dict]]:
    """Every phrasing of the 27 spatial_unseen-val pairs (216 prompts): the held-out pairs themselves. A diagnostic
    only (section 59): what the spatial command reaches on its held-out prompts when it is shown them, to tell
    what training cannot learn from what it does not transfer. Never a held-out result."""
    return _as_prompts(_held_out_pair_phrasings())


def spatial_unshown_pairs_all() -> list[tuple[str, dict]]:
    """Every phrasing of the 6 spatial_unseen-val pairs that put the orange triangle beside a red or yellow object
    (48 prompts): the held-out pairs whose color contrast no allowed training prompt shows. A diagnostic only (section
    59): whether the command's updates can learn them at all when trained on nothing else. Never a held-out result."""
    return _as_prompts(spec for spec in _held_out_pair_phrasings() if _colors(spec) in ORANGE_WARM)


def _held_out_pair_phrasings():
    """Every phrasing of each spatial_unseen-val pair, pair by pair in the split's order."""
    return [p for spec in prompt_set("spatial", "unseen-val") for p in pair_prompts("spatial", *spec.objects)]


def _as_prompts(specs) -> list[tuple[str, dict]]:
    return [(spec.text, spec.to_metadata()) for spec in specs]


def _colors(spec) -> frozenset[str]:
    return frozenset(obj.color for obj in spec.objects)
