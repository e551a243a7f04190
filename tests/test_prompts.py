import numpy as np
import pytest

from diffrl.errors import DiffrlError
from diffrl.prompts import load_prompts


def test_prompt_file_skips_blank_lines_and_comments(prompt_file):
    source = load_prompts(str(prompt_file))
    assert [p for p, _ in source.all()] == ["a red circle", "a blue square", "a green triangle", "a yellow cat"]


def test_builtin_and_shapes_sets_carry_metadata():
    assert len(load_prompts("builtin:animals").all()) > 20
    shapes = load_prompts("shapes:color_binding_val").all()
    assert shapes and all(meta["category"] == "color_binding" for _, meta in shapes)
    assert {m["category"] for _, m in load_prompts("shapes:all_val").all()} >= {"single", "spatial"}


def test_python_callables_list_and_generator():
    listed = load_prompts("tests.helpers:prompt_list").all()
    assert listed == [("a red circle", {}), ("a blue square", {"category": "x"})]
    generated = load_prompts("tests.helpers:prompt_generator")
    batch = generated.sample(np.random.default_rng(0), 3)
    assert [meta["index"] for _, meta in batch] == sorted(meta["index"] for _, meta in batch)
    with pytest.raises(DiffrlError, match="generator"):
        generated.all()


def test_sampling_is_seeded():
    source = load_prompts("shapes:spatial_train")
    a = source.sample(np.random.default_rng(5), 8)
    assert a == source.sample(np.random.default_rng(5), 8)


@pytest.mark.parametrize("spec, message", [
    ("shapes:nope_train", "unknown ShapesWorld prompt set"),
    ("builtin:nope", "unknown built-in prompt set"),
    ("/no/such/file.txt", "prompt file not found"),
    ("no_such_module_xyz:fn", "cannot load prompt function"),
])
def test_bad_prompt_specs(spec, message):
    with pytest.raises(DiffrlError, match=message):
        load_prompts(spec)
