"""benchmarks/failure_modes.py's tally on rendered ShapesWorld images (no model) and scorer.constraint_names."""
import numpy as np
import pytest

from diffrl.shapes.scorer import constraint_names, constraints, find_objects
from diffrl.shapes.world import BACKGROUND, prompt_set, render
from tests.conftest import load_benchmark


@pytest.mark.parametrize("category, expected", [
    ("single", ["color 1", "shape 1", "object count"]),
    ("color_binding", ["color 1", "shape 1", "color 2", "shape 2", "object count"]),
    ("counting", ["color 1", "shape 1", "count of the object", "object count"]),
    ("spatial", ["color 1", "shape 1", "color 2", "shape 2", "relation", "object count"]),
])
def test_constraint_names_match_the_constraints(category, expected):
    spec = prompt_set(category, "train")[0]
    image = render(spec, np.random.default_rng(0))
    assert constraint_names(spec) == expected
    assert len(constraints(find_objects(image[None])[0], spec)) == len(expected)


def test_tally_on_true_renders_and_on_blank_images():
    tally = load_benchmark("failure_modes").tally
    specs = prompt_set("spatial", "train")[:3]
    rendered = np.stack([render(s, np.random.default_rng(i)) for i, s in enumerate(specs)])
    blank = np.broadcast_to(np.asarray(BACKGROUND, dtype=np.uint8), rendered.shape)
    texts, metas = [s.text for s in specs], [s.to_metadata() for s in specs]

    good = tally(rendered, texts, metas)
    assert good["kinds"]["success"] == 1.0 and set(good["fail_rate"].values()) == {0.0}

    bad = tally(np.concatenate([rendered, blank]), texts * 2, metas * 2)  # half right, half empty
    assert bad["kinds"] == {"success": 0.5, "color or shape": 0.5, "relation (objects right)": 0.0,
                           "object count only": 0.0}
    assert bad["fail_rate"]["color 1"] == 0.5 and bad["fail_rate"]["relation"] == 0.5


def test_failure_kind_blames_objects_first():
    kind = load_benchmark("failure_modes").failure_kind
    names = ["color 1", "shape 1", "color 2", "shape 2", "relation", "object count"]
    assert kind(names, [True] * 6) == "success"
    assert kind(names, [True, True, True, True, False, True]) == "relation (objects right)"
    assert kind(names, [True, False, True, True, False, True]) == "color or shape"
    assert kind(names, [True, True, True, True, True, False]) == "object count only"
    assert kind(names, [True, True, True, True, False, False]) == "relation (objects right)"


def test_per_prompt_counts_each_prompts_successes_and_failed_constraints():
    per_prompt = load_benchmark("failure_modes").per_prompt
    spec = prompt_set("spatial", "train")[0]
    rendered = render(spec, np.random.default_rng(0))[None]
    blank = np.broadcast_to(np.asarray(BACKGROUND, dtype=np.uint8), rendered.shape)
    rows = per_prompt(np.concatenate([rendered, blank, blank]), [spec.text] * 3, [spec.to_metadata()] * 3)
    assert list(rows) == [spec.text]
    row = rows[spec.text]
    assert (row["images"], row["success"]) == (3, 1)
    assert row["failed"] == {name: 2 for name in constraint_names(spec)}  # a blank image fails every constraint


def test_about_subject_keeps_the_first_named_object_only():
    about_subject = load_benchmark("failure_modes").about_subject
    prompts = [("a purple triangle above a red circle", {}), ("a red circle below a purple triangle", {}),
               ("an orange triangle above a purple triangle", {}), ("two purple triangles", {}),
               ("a purple circle", {})]
    assert about_subject(prompts, "purple triangle") == [prompts[0], prompts[3]]
    assert about_subject(prompts, "orange triangle") == prompts[2:3]
