"""ShapesWorld grammar, splits and renderer."""
import json
from itertools import combinations

import numpy as np
import pytest

from diffrl.shapes.world import (
    BACKGROUND, CATEGORIES, COLORS, GAP, SPATIAL_GAP, SPLITS, UNSEEN_COMBOS, PromptSpec, _in_relation, _separated,
    all_prompts, first_named_object, named_objects, prompt_set, render, sample_layout,
)


def combos_of(spec: PromptSpec) -> set[tuple[str, str]]:
    return {(o.color, o.shape) for o in spec.objects}


def test_render_shape_dtype_and_determinism():
    spec = prompt_set("spatial", "train")[0]
    a = render(spec, np.random.default_rng(7))
    b = render(spec, np.random.default_rng(7))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert render(spec, np.random.default_rng(7), size=64).shape == (64, 64, 3)
    assert not np.array_equal(a, render(spec, np.random.default_rng(8)))


def test_render_uses_palette_and_background():
    spec = prompt_set("color_binding", "train")[0]
    image = render(spec, np.random.default_rng(0)).reshape(-1, 3)
    pixels = {tuple(int(v) for v in p) for p in image}
    assert BACKGROUND in pixels
    for obj in spec.objects:
        assert COLORS[obj.color] in pixels  # object interiors are exact palette colors


def test_prompt_sets_are_deterministic():
    for split in SPLITS:
        assert [p.text for p in all_prompts(split)] == [p.text for p in all_prompts(split)]


@pytest.mark.parametrize("category", ["color_binding", "spatial"])
def test_unseen_train_and_val_partition_unseen(category):
    rl, held_out = prompt_set(category, "unseen-train"), prompt_set(category, "unseen-val")
    assert len(rl) == len(held_out) == len(prompt_set(category, "unseen")) // 2
    assert {p.text for p in rl} | {p.text for p in held_out} == {p.text for p in prompt_set(category, "unseen")}
    assert not {p.text for p in rl} & {p.text for p in held_out}
    assert all(combos_of(s) & UNSEEN_COMBOS for s in held_out)


@pytest.mark.parametrize("category, phrasings", [("color_binding", 2), ("spatial", 8)])
def test_unseen_train_all_is_every_phrasing_of_the_rl_pairs(category, phrasings):
    def pair(spec):
        return frozenset(spec.objects)

    rl, every = prompt_set(category, "unseen-train"), prompt_set(category, "unseen-train-all")
    assert len(every) == len({p.text for p in every}) == phrasings * len(rl)
    assert {p.text for p in rl} <= {p.text for p in every}
    assert {pair(p) for p in every} == {pair(p) for p in rl}
    assert not {pair(p) for p in every} & {pair(p) for p in prompt_set(category, "unseen-val")}


def test_unseen_combos_absent_from_train_and_val():
    for split in ("train", "val"):
        for spec in all_prompts(split):
            assert not combos_of(spec) & UNSEEN_COMBOS, spec.text
    unseen = all_prompts("unseen")
    assert unseen and all(combos_of(s) & UNSEEN_COMBOS for s in unseen)
    assert {s.category for s in unseen} == {"color_binding", "spatial"}


@pytest.mark.parametrize("category", ["color_binding", "counting", "spatial"])
def test_train_val_disjoint(category):
    train = {p.text for p in prompt_set(category, "train")}
    val = {p.text for p in prompt_set(category, "val")}
    assert train and val and not train & val
    assert 0.1 < len(val) / (len(train) + len(val)) < 0.3


def test_pair_splits_keep_every_phrasing_together():
    """'A above B' and 'B below A' must not straddle train and val."""
    def pairs(split):
        return {frozenset(combos_of(p)) for p in prompt_set("spatial", split)}
    assert not pairs("train") & pairs("val")


def test_metadata_round_trip():
    for category in CATEGORIES:
        for spec in prompt_set(category, "val")[:5]:
            meta = json.loads(json.dumps(spec.to_metadata()))
            assert PromptSpec.from_metadata(spec.text, meta) == spec


def test_grammar_examples():
    texts = {p.text for s in ("train", "val", "unseen") for p in all_prompts(s)}
    assert "a red circle" in texts
    assert "an orange circle" in texts
    assert any(t.startswith("three ") and t.endswith("s") for t in texts)
    assert any(" to the left of " in t for t in texts)
    counting = prompt_set("counting", "train")[0]
    assert counting.count in (2, 3) and len(counting.objects) == 1


def test_layouts_do_not_overlap_and_respect_relations():
    rng = np.random.default_rng(0)
    for spec in all_prompts("val")[::3]:
        boxes = sample_layout(spec, rng)
        expected = spec.count if spec.category == "counting" else len(spec.objects)
        assert len(boxes) == expected
        assert all(_separated(a, b, GAP) for a, b in combinations(boxes, 2))
        assert all(1 <= b.x and b.x + b.side <= 31 and 1 <= b.y and b.y + b.side <= 31 for b in boxes)
        if spec.relation:
            assert _in_relation(boxes[0], boxes[1], spec.relation, SPATIAL_GAP)


def test_relation_direction_in_pixels():
    """'above' means the subject's color sits at smaller row indices (image y grows down)."""
    spec = next(p for p in prompt_set("spatial", "train") if p.relation == "above")
    image = render(spec, np.random.default_rng(3)).astype(int)
    rows = [np.nonzero((np.abs(image - COLORS[o.color]).sum(-1) == 0).any(1))[0] for o in spec.objects]
    assert rows[0].max() < rows[1].min()


def test_first_named_object_reads_the_grammar_of_every_category():
    assert first_named_object("a purple triangle to the left of an orange circle") == "purple triangle"
    assert first_named_object("an orange square and a red circle") == "orange square"
    assert first_named_object("three green circles") == "green circle"
    assert first_named_object("a cat") is None
    for spec in all_prompts("train"):  # the first object the text names is the spec's first object
        first = spec.objects[0]
        assert first_named_object(spec.text) == f"{first.color} {first.shape}"


def test_named_objects_lists_every_object_of_every_prompt_in_order():
    assert named_objects("a purple triangle to the left of an orange circle") == ["purple triangle", "orange circle"]
    assert named_objects("two green triangles") == ["green triangle"]
    assert named_objects("a cat") == []
    for spec in all_prompts("train") + all_prompts("unseen"):
        assert named_objects(spec.text) == [f"{o.color} {o.shape}" for o in spec.objects]
