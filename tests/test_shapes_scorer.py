"""The exact ShapesWorld scorer and its rewards.

Validation: clean renders of every val/unseen prompt pass; renders of a deliberately wrong
spec (wrong shape or color, swapped binding, opposite relation, wrong count) fail; both hold
under Gaussian blur + color noise like a diffusion model's. Plus hand-drawn unit cases.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image, ImageFilter

from diffrl.errors import DiffrlError
from diffrl.rewards import get_reward
from diffrl.shapes import scorer
from diffrl.shapes.world import BACKGROUND, COLORS, SHAPES, PromptSpec, ShapeObject, all_prompts, render

SEEDS = 2  # clean renders per prompt; each wrong variant is rendered once
OPPOSITE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


# ----------------------------------------------------------------------------- data

def wrong_variants(spec: PromptSpec) -> list[tuple[str, PromptSpec]]:
    """Specs whose renders must fail `spec`: (kind, wrong spec)."""
    first, rest = spec.objects[0], spec.objects[1:]
    other_shape = SHAPES[(SHAPES.index(first.shape) + 1) % len(SHAPES)]
    unused_color = next(c for c in COLORS if c not in {o.color for o in spec.objects})
    variants = [("wrong shape", (ShapeObject(first.color, other_shape),) + rest),
                ("wrong color", (ShapeObject(unused_color, first.shape),) + rest)]
    variants = [(kind, dataclasses.replace(spec, objects=objects)) for kind, objects in variants]
    if len(spec.objects) == 2 and spec.objects[0].shape != spec.objects[1].shape:  # same shapes: a no-op
        a, b = spec.objects
        swapped = (ShapeObject(b.color, a.shape), ShapeObject(a.color, b.shape))
        variants.append(("swapped binding", dataclasses.replace(spec, objects=swapped)))
    if spec.category == "spatial":
        variants.append(("opposite relation", dataclasses.replace(spec, relation=OPPOSITE[spec.relation])))
    if spec.category == "counting":
        variants += [("wrong count", dataclasses.replace(spec, count=n)) for n in (1, 5 - spec.count)]
    return variants


@lru_cache(maxsize=None)
def clean_set() -> tuple[np.ndarray, list[PromptSpec]]:
    """SEEDS renders of every val and unseen prompt: ((N, 32, 32, 3) uint8, N specs)."""
    rng = np.random.default_rng(0)
    specs = [s for s in all_prompts("val") + all_prompts("unseen") for _ in range(SEEDS)]
    return np.stack([render(s, rng) for s in specs]), specs


@lru_cache(maxsize=None)
def wrong_set() -> tuple[np.ndarray, list[PromptSpec], list[str]]:
    """One render of every wrong variant of every val and unseen prompt, scored against the prompt."""
    rng = np.random.default_rng(1)
    rows = [(spec, kind, wrong) for spec in all_prompts("val") + all_prompts("unseen")
            for kind, wrong in wrong_variants(spec)]
    images = np.stack([render(wrong, rng) for _, _, wrong in rows])
    return images, [spec for spec, _, _ in rows], [kind for _, kind, _ in rows]


def perturb(images: np.ndarray, blur: float, noise: float, seed: int = 0) -> np.ndarray:
    """Gaussian blur (PIL radius) then additive Gaussian color noise (std in 0-255 units)."""
    rng = np.random.default_rng(seed)
    blurred = np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(blur))) for im in images])
    noisy = blurred + rng.normal(0.0, noise, blurred.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def canvas(size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), BACKGROUND, dtype=np.uint8)


def draw(image: np.ndarray, shape: str, color: str, top: int, left: int, side: int) -> np.ndarray:
    """Paint a hard-edged `shape` in the box (top, left, side) with numpy, independently of world.render."""
    y, x = np.mgrid[:side, :side] + 0.5  # pixel centers in the box
    if shape == "square":
        mask = np.ones((side, side), dtype=bool)
    elif shape == "circle":
        mask = (x - side / 2) ** 2 + (y - side / 2) ** 2 <= (side / 2) ** 2
    else:  # apex at the top middle, base on the bottom
        mask = np.abs(x - side / 2) <= y / 2 + 0.25
    image[top:top + side, left:left + side][mask] = COLORS[color]
    return image


def spec(text: str, category: str, *objects: tuple[str, str], relation: str | None = None,
         count: int | None = None) -> PromptSpec:
    return PromptSpec(text, category, tuple(ShapeObject(c, s) for c, s in objects), relation, count)


# ----------------------------------------------------------------------------- validation on renders

def test_clean_renders_succeed():
    images, specs = clean_set()
    dense, success = scorer.score_batch(images, specs)
    assert success.mean() >= 0.99, f"clean success {success.mean():.4f} over {len(specs)} renders"
    assert dense.min() >= 0.0 and dense.max() <= 1.0


def test_wrong_renders_fail():
    images, specs, kinds = wrong_set()
    dense, success = scorer.score_batch(images, specs)
    assert success.mean() <= 0.02, f"wrong success {success.mean():.4f} over {len(specs)} renders"
    for kind in set(kinds):  # each kind of mistake is caught, not just most of them overall
        assert success[np.asarray(kinds) == kind].mean() <= 0.02, kind
    assert dense.max() < 1.0 and dense.mean() > 0.5  # partly right: partial credit, never full


@pytest.mark.parametrize("blur, noise", [(0.6, 10.0), (0.8, 15.0)])
def test_robust_to_blur_and_color_noise(blur, noise):
    images, specs = clean_set()
    _, success = scorer.score_batch(perturb(images, blur, noise), specs)
    assert success.mean() >= 0.95, f"perturbed clean success {success.mean():.4f}"
    images, specs, _ = wrong_set()
    _, success = scorer.score_batch(perturb(images, blur, noise), specs)
    assert success.mean() <= 0.02, f"perturbed wrong success {success.mean():.4f}"


def test_noise_alone_is_no_object():
    empty = perturb(np.stack([canvas()] * 8), blur=0.8, noise=15.0)
    assert all(found == [] for found in scorer.find_objects(empty))


def test_degenerate_inputs():
    assert [a.shape for a in scorer.score_batch(np.zeros((0, 32, 32, 3), np.uint8), [])] == [(0,), (0,)]
    stroke = canvas()
    stroke[10, 3:20] = COLORS["red"]  # a one-pixel-thin line: finite features, one object
    assert len(scorer.find_objects(stroke[None])[0]) == 1


# ----------------------------------------------------------------------------- hand-built cases

@pytest.mark.parametrize("side", [8, 12])
@pytest.mark.parametrize("shape", SHAPES)
def test_drawn_shape_classified(shape, side):
    image = draw(canvas(), shape, "green", top=5, left=9, side=side)
    [found] = scorer.find_objects(image[None])[0]
    assert (found.color, found.shape) == ("green", shape)
    assert (found.top, found.left, found.bottom, found.right) == (5, 9, 4 + side, 8 + side)


def test_shape_features_by_hand():
    # A filled rectangle: x and y independent and symmetric -> skewness 0, corner moment exactly 1.
    mask = np.zeros((10, 14), dtype=bool)
    mask[2:8, 2:12] = True
    skew, corner = scorer.shape_features(mask, mask.astype(float), ~mask)
    assert skew == pytest.approx(0.0, abs=1e-9) and corner == pytest.approx(1.0)
    # An upward triangle's mass sits low: negative vertical skewness (-0.57 in the continuum).
    tri = draw(canvas(), "triangle", "red", top=4, left=4, side=20)
    skew, _ = scorer.shape_features(*_features_input(tri))
    assert -0.65 < skew < -0.45


def _features_input(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """shape_features' inputs for the single object of `image`, padded by 2 px."""
    labels, alpha = scorer.segment(image[None])
    color = labels.max()
    return (np.pad(labels[0] == color, 2), np.pad(alpha[0, ..., color], 2), np.pad(labels[0] < 0, 2))


@pytest.mark.parametrize("expected_spec, drawn, dense", [
    # right red circle, blue triangle instead of a square: 4 of 5 constraints (shape of blue fails)
    (spec("a red circle and a blue square", "color_binding", ("red", "circle"), ("blue", "square")),
     [("circle", "red", 4, 4), ("triangle", "blue", 18, 18)], 4 / 5),
    # a green circle for "a red circle": only "exactly 1 object" holds
    (spec("a red circle", "single", ("red", "circle")), [("circle", "green", 4, 4)], 1 / 3),
    # two of "three green triangles": color and shape hold, both counts fail
    (spec("three green triangles", "counting", ("green", "triangle"), count=3),
     [("triangle", "green", 4, 4), ("triangle", "green", 18, 18)], 2 / 4),
    # right objects on the wrong side: all but the relation (5 of 6)
    (spec("a red circle above a blue square", "spatial", ("red", "circle"), ("blue", "square"), relation="above"),
     [("circle", "red", 18, 4), ("square", "blue", 2, 18)], 5 / 6),
    # an extra object: everything but "exactly 2 objects" (5 of 6)
    (spec("a red circle left of a blue square", "spatial", ("red", "circle"), ("blue", "square"), relation="left of"),
     [("circle", "red", 12, 2), ("square", "blue", 12, 20), ("triangle", "blue", 1, 12)], 5 / 6),
])
def test_dense_score_is_fraction_of_constraints(expected_spec, drawn, dense):
    image = canvas()
    for shape, color, top, left in drawn:
        draw(image, shape, color, top, left, side=10)
    assert scorer.score(image, expected_spec) == (pytest.approx(dense), False)


def test_relation_uses_extents_with_tolerance():
    box = dict(color="red", shape="square", area=100, cy=0.0, cx=0.0)
    upper = scorer.Component(**box, top=2, bottom=11, left=0, right=9)
    touching = scorer.Component(**box, top=11, bottom=20, left=20, right=29)  # shares row 11: 1 px overlap
    overlapping = scorer.Component(**box, top=10, bottom=19, left=5, right=14)
    assert scorer.relation_holds(upper, touching, "above") and scorer.relation_holds(touching, upper, "below")
    assert not scorer.relation_holds(upper, overlapping, "above")
    assert scorer.relation_holds(upper, touching, "left of") and not scorer.relation_holds(upper, touching, "right of")


# ----------------------------------------------------------------------------- rewards

def test_rewards_contract():
    images, specs = clean_set()
    wrong_images, wrong_specs, _ = wrong_set()
    images = np.concatenate([images[::40], wrong_images[::40]])  # (N, 32, 32, 3)
    specs = specs[::40] + wrong_specs[::40]
    prompts, metadata = [s.text for s in specs], [s.to_metadata() for s in specs]
    dense = get_reward("shapes")(images, prompts, metadata)
    success = get_reward("shapes_success")(images, prompts, metadata)
    assert dense.shape == success.shape == (len(specs),)
    assert dense.min() >= 0.0 and dense.max() <= 1.0 and set(np.unique(success)) == {0.0, 1.0}
    np.testing.assert_array_equal(success, (dense == 1.0).astype(float))
    for category in ("single", "color_binding", "counting", "spatial"):
        values = get_reward(f"shapes_{category}")(images, prompts, metadata)
        mine = np.asarray([s.category == category for s in specs])
        assert values.shape == (len(specs),) and mine.any()
        np.testing.assert_array_equal(values[mine], dense[mine])
        assert np.isnan(values[~mine]).all()  # other categories: NaN, skipped by the trainer / nanmean


def test_reward_without_metadata_is_a_clear_error():
    images, specs = clean_set()
    with pytest.raises(DiffrlError, match="needs ShapesWorld prompt metadata"):
        get_reward("shapes")(images[:2], [specs[0].text, "a cat"], [specs[0].to_metadata(), {}])


# ----------------------------------------------------------------------------- graded relation (shapes_graded)

def _box(top, bottom, left, right):
    return scorer.Component("red", "circle", 50, (top + bottom) / 2, (left + right) / 2, top, bottom, left, right)


def test_relation_margin_hand_computed():
    upper, lower = _box(2, 11, 5, 14), _box(15, 24, 8, 17)
    # above: other.top + tol - subject.bottom = 15 + 1 - 11
    assert scorer.relation_margin(upper, lower, "above") == 5.0
    assert scorer.relation_margin(lower, upper, "below") == 5.0  # 15 + 1 - 11
    assert scorer.relation_margin(lower, upper, "above") == -21.0  # 2 + 1 - 24
    assert scorer.relation_margin(upper, lower, "left of") == 8 + 1 - 14
    assert scorer.relation_holds(upper, lower, "above") and not scorer.relation_holds(upper, lower, "left of")


def test_graded_relation_is_a_sigmoid_of_the_margin():
    spec = PromptSpec("a red circle above a blue square", "spatial",
                      (ShapeObject("red", "circle"), ShapeObject("blue", "square")), relation="above")
    subject = dataclasses.replace(_box(2, 11, 5, 14), color="red", shape="circle")
    other = dataclasses.replace(_box(12, 21, 8, 17), color="blue", shape="square")  # margin 12 + 1 - 11 = 2
    graded = scorer.constraints([subject, other], spec, relation_softness=2.0)
    exact = scorer.constraints([subject, other], spec)
    assert graded[:4] == exact[:4] and graded[5] == exact[5] == 1  # the other constraints are unchanged
    assert exact[4] == 1 and graded[4] == pytest.approx(1 / (1 + np.exp(-1.0)))


def test_shapes_graded_reward_orders_spatial_samples_by_margin_and_equals_dense_elsewhere():
    images, specs = clean_set()
    graded = get_reward("shapes_graded")(images, [s.text for s in specs], [s.to_metadata() for s in specs])
    dense, _ = scorer.score_batch(images, specs)
    spatial = np.array([s.category == "spatial" for s in specs])
    np.testing.assert_allclose(graded[~spatial], dense[~spatial])
    # clean spatial renders satisfy the relation by >= 3 px: graded within a sixth of (1 - sigmoid(2)) of 1
    assert (graded[spatial] > 1 - (1 - 1 / (1 + np.exp(-2.0))) / 6 - 1e-9).all()
    assert (graded[spatial] < dense[spatial]).all()


# ----------------------------------------------------------------------------- graded color (shapes_hue)

def test_color_match_hand_computed():
    red_fill = dataclasses.replace(_box(2, 11, 5, 14), color="red", shape="triangle", fill=(215.0, 35.0, 35.0))
    assert scorer.color_match(red_fill, "red", 50.0) == 1.0  # segmented as the named color
    assert scorer.color_match(red_fill, "orange") == 0.0  # no softness: the exact, binary check
    # red -> orange: d^2 = 30^2 + 95^2 + 15^2 = 10150, exp(-10150 / 5000)
    assert scorer.color_match(red_fill, "orange", 50.0) == pytest.approx(np.exp(-2.03))
    assert scorer.color_match(dataclasses.replace(red_fill, fill=None), "orange", 50.0) == 0.0  # fill not measured


def test_graded_color_credits_a_triangle_drawn_near_the_named_color():
    spec = PromptSpec("an orange triangle and a red square", "color_binding",
                      (ShapeObject("orange", "triangle"), ShapeObject("red", "square")))
    reddish = dataclasses.replace(_box(2, 11, 2, 11), color="red", shape="triangle", fill=(240.0, 80.0, 25.0))
    square = dataclasses.replace(_box(2, 11, 20, 29), color="red", shape="square", fill=(215.0, 35.0, 35.0))
    exact = scorer.constraints([reddish, square], spec)
    graded = scorer.constraints([reddish, square], spec, color_softness=50.0)
    near = np.exp(-(5**2 + 50**2 + 5**2) / 5000)  # the triangle's fill is 50.5 from orange; the square's 100.7
    assert exact == [0, 0, 1, 1, 1]
    assert graded == pytest.approx([near, near, 1, 1, 1])
    # only a triangle earns the color-shape term: the square alone gives the color term its (smaller) credit
    far = np.exp(-10150 / 5000)
    assert scorer.constraints([square], spec, color_softness=50.0)[:2] == pytest.approx([far, 0.0])


def test_find_objects_measures_the_fill():
    image = draw(draw(canvas(), "triangle", "orange", 2, 2, side=12), "square", "blue", 18, 18, side=10)
    found = scorer.find_objects(image[None])[0]
    assert sorted((c.color, c.fill) for c in found) == [("blue", tuple(map(float, COLORS["blue"]))),
                                                         ("orange", tuple(map(float, COLORS["orange"])))]


def test_shapes_hue_reward_is_at_least_dense_and_equal_where_every_color_is_drawn():
    images, specs = clean_set()
    wrong_images, wrong_specs, kinds = wrong_set()
    images, specs = np.concatenate([images, wrong_images]), specs + wrong_specs
    prompts, metadata = [s.text for s in specs], [s.to_metadata() for s in specs]
    hue = get_reward("shapes_hue")(images, prompts, metadata)
    dense = get_reward("shapes")(images, prompts, metadata)
    assert hue.shape == dense.shape and (hue <= 1.0).all()
    assert (hue >= dense - 1e-12).all()  # grades only replace zeros of the binary terms
    n_clean = len(clean_set()[1])
    np.testing.assert_allclose(hue[:n_clean], dense[:n_clean])  # clean renders: every color right, nothing to grade
    wrong_color = np.flatnonzero(np.asarray(kinds) == "wrong color") + n_clean
    assert (hue[wrong_color] > dense[wrong_color]).any()  # a wrong color drawn near the named one earns credit


# ----------------------------------------------------------------------------- hue-graded success (shapes_success_hue)

def test_hue_fidelity_hand_computed():
    prompt = spec("a red circle above a blue square", "spatial", ("red", "circle"), ("blue", "square"),
                  relation="above")
    off_red = dataclasses.replace(_box(2, 11, 2, 11), fill=(215.0, 65.0, 75.0))  # 30 and 40 off red: d^2 = 2500
    red_square = dataclasses.replace(_box(2, 11, 20, 29), shape="square", fill=(215.0, 35.0, 35.0))
    blue = dataclasses.replace(_box(20, 29, 2, 11), color="blue", shape="square", fill=(40.0, 80.0, 230.0))
    assert scorer.hue_fidelity([off_red, blue], prompt) == pytest.approx((np.exp(-0.5) + 1.0) / 2)
    assert scorer.hue_fidelity([off_red, blue], prompt, softness=25.0) == pytest.approx((np.exp(-2.0) + 1.0) / 2)
    # the red circle stands for "a red circle", not the exact-red square beside it; a missing object grades 0
    assert scorer.hue_fidelity([red_square, off_red, blue], prompt) == pytest.approx((np.exp(-0.5) + 1.0) / 2)
    assert scorer.hue_fidelity([off_red], prompt) == pytest.approx(np.exp(-0.5) / 2)


def red_circle_above_blue_square() -> tuple[PromptSpec, np.ndarray]:
    """The prompt and three drawings of it: exact colors; the circle's red 25 toward orange (still read as red, so
    still a success); the relation reversed (a failure)."""
    prompt = spec("a red circle above a blue square", "spatial", ("red", "circle"), ("blue", "square"),
                  relation="above")
    exact = draw(draw(canvas(), "circle", "red", 2, 10, side=10), "square", "blue", 18, 10, side=10)
    shifted = exact.copy()
    shifted[(exact == COLORS["red"]).all(axis=-1)] = (215, 60, 35)
    swapped = draw(draw(canvas(), "circle", "red", 18, 10, side=10), "square", "blue", 2, 10, side=10)
    return prompt, np.stack([exact, shifted, swapped])


def test_shapes_success_hue_grades_successes_by_hue_and_keeps_failures_at_zero():
    prompt, images = red_circle_above_blue_square()
    reward = get_reward("shapes_success_hue")(images, [prompt.text] * 3, [prompt.to_metadata()] * 3)
    success = get_reward("shapes_success")(images, [prompt.text] * 3, [prompt.to_metadata()] * 3)
    np.testing.assert_array_equal(success, [1.0, 1.0, 0.0])  # the shift does not change the binary score
    np.testing.assert_allclose(reward, [1.0, (np.exp(-625 / 5000) + 1.0) / 2, 0.0])


# ----------------------------------------------------------------------------- success with a color margin (shapes_success_strict)

def test_color_radius_hand_computed():
    # red's nearest other palette color is orange, (245, 130, 20) - (215, 35, 35) = (30, 95, -15): |.|^2 = 10150
    assert scorer.color_radius("red") == pytest.approx(0.3 * np.sqrt(10150))
    # orange's is yellow, (-5, 85, 10): 7350; green's is blue, (0, -85, 180): 39625
    assert scorer.color_radius("orange", margin=0.5) == pytest.approx(0.5 * np.sqrt(7350))
    assert scorer.color_radius("green") == pytest.approx(0.3 * np.sqrt(39625))


def test_shapes_success_strict_fails_a_success_whose_hue_drifted_past_the_margin():
    prompt, images = red_circle_above_blue_square()  # exact; red 25 toward orange; relation reversed
    drifted = images[1].copy()
    drifted[(images[0] == COLORS["red"]).all(axis=-1)] = (215, 70, 35)  # 35 toward orange: past red's 30.2
    images = np.concatenate([images, drifted[None]])
    prompts, metadata = [prompt.text] * 4, [prompt.to_metadata()] * 4
    np.testing.assert_array_equal(get_reward("shapes_success")(images, prompts, metadata), [1.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(get_reward("shapes_success_strict")(images, prompts, metadata),
                                  [1.0, 1.0, 0.0, 0.0])


def test_colors_within_margin_needs_every_named_object():
    prompt = spec("a red circle above a blue square", "spatial", ("red", "circle"), ("blue", "square"),
                  relation="above")
    red = dataclasses.replace(_box(2, 11, 2, 11), fill=(215.0, 60.0, 35.0))  # 25 off red
    blue = dataclasses.replace(_box(20, 29, 2, 11), color="blue", shape="square", fill=(40.0, 80.0, 230.0))
    assert scorer.colors_within_margin([red, blue], prompt)
    assert not scorer.colors_within_margin([red, blue], prompt, margin=0.2)  # red's radius 20.2 < 25
    assert not scorer.colors_within_margin([red], prompt)  # no blue square drawn
    assert not scorer.colors_within_margin([dataclasses.replace(red, fill=None), blue], prompt)


def test_shapes_success_hue_is_zero_exactly_where_success_is():
    images, specs = clean_set()
    wrong_images, wrong_specs, _ = wrong_set()
    images, specs = np.concatenate([images[::20], wrong_images[::20]]), specs[::20] + wrong_specs[::20]
    prompts, metadata = [s.text for s in specs], [s.to_metadata() for s in specs]
    graded = get_reward("shapes_success_hue")(images, prompts, metadata)
    success = get_reward("shapes_success")(images, prompts, metadata)
    assert 0 < success.sum() < len(success)
    np.testing.assert_array_equal(graded > 0, success > 0)
    assert (graded <= success).all()
