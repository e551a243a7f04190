import numpy as np
import pytest

from diffrl.errors import DiffrlError
from diffrl.prompts import BUILTIN_SETS, load_prompts


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


def test_sets_joined_with_plus_concatenate_and_repeat(prompt_file, tmp_path):
    seen = load_prompts("shapes:spatial_train").all()
    unseen = load_prompts("shapes:spatial_unseen-train-all").all()
    joined = load_prompts("shapes:spatial_unseen-train-all+shapes:spatial_unseen-train-all+shapes:spatial_train")
    assert joined.all() == unseen + unseen + seen  # drawn uniformly: the unseen pairs twice as often as once
    file_and_animals = load_prompts(f"{prompt_file}+builtin:animals").all()
    assert file_and_animals == load_prompts(str(prompt_file)).all() + [(a, {}) for a in BUILTIN_SETS["animals"]]
    plus_file = tmp_path / "a+b.txt"  # an existing file whose name holds a + is still a file
    plus_file.write_text("a red circle\n")
    assert load_prompts(str(plus_file)).all() == [("a red circle", {})]


@pytest.mark.parametrize("spec, message", [
    ("shapes:spatial_train+", "empty part"),
    ("shapes:spatial_train+tests.test_prompts:one_prompt", "prompt generator"),
    ("shapes:spatial_train+shapes:nope_train", "unknown ShapesWorld prompt set"),
    ("shapes:nope_train", "unknown ShapesWorld prompt set"),
    ("builtin:nope", "unknown built-in prompt set"),
    ("/no/such/file.txt", "prompt file not found"),
    ("no_such_module_xyz:fn", "cannot load prompt function"),
])
def test_bad_prompt_specs(spec, message):
    with pytest.raises(DiffrlError, match=message):
        load_prompts(spec)


# --- T2I-CompBench(++) prompt files: any <name>.txt of a local examples/dataset folder ---------------


@pytest.fixture
def compbench_dir(tmp_path, monkeypatch):
    """A fake examples/dataset folder with original and T2I-CompBench++ file names."""
    files = {
        "color_train.txt": "a green bench and a red car\n",
        "non_spatial_val.txt": "a man is riding a horse\n\n a cat sleeps \n",
        "numeracy_val.txt": "three apples and two cats\n",
        "3d_spatial_train.txt": "a lamp in front of a sofa\na cup behind a book\n",
        "shape_val_unseen.txt": "an oval mirror and a square rug\n",
        "empty_val.txt": "\n  \n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "README.md").write_text("not a prompt set\n")
    monkeypatch.setenv("DIFFRL_T2I_COMPBENCH_DIR", str(tmp_path))
    return tmp_path


def test_t2i_compbench_reads_original_and_plus_files(compbench_dir):
    from diffrl.prompts_t2i import available_sets, load_t2i_compbench

    assert load_t2i_compbench("t2i-compbench:non_spatial_val") == ["a man is riding a horse", "a cat sleeps"]
    assert load_t2i_compbench("t2i-compbench:numeracy_val") == ["three apples and two cats"]
    assert load_t2i_compbench("shape_val_unseen", compbench_dir) == ["an oval mirror and a square rug"]  # prefix optional
    assert load_t2i_compbench("t2i-compbench:color_train.txt") == ["a green bench and a red car"]
    source = load_prompts("t2i-compbench:3d_spatial_train")
    assert source.all() == [("a lamp in front of a sofa", {}), ("a cup behind a book", {})]
    assert available_sets(compbench_dir) == ["3d_spatial_train", "color_train", "empty_val", "non_spatial_val",
                                             "numeracy_val", "shape_val_unseen"]


def test_t2i_compbench_missing_name_lists_what_is_there(compbench_dir):
    from diffrl.prompts_t2i import load_t2i_compbench

    with pytest.raises(DiffrlError) as err:
        load_prompts("t2i-compbench:shape_val")
    message = str(err.value)
    assert "\n" not in message and "shape_val.txt" in message
    assert message.endswith("available: 3d_spatial_train, color_train, empty_val, non_spatial_val, numeracy_val, "
                            "shape_val_unseen")
    empty = compbench_dir / "nothing"
    empty.mkdir()
    with pytest.raises(DiffrlError, match="available: none"):
        load_t2i_compbench("color_val", empty)


@pytest.mark.parametrize("spec, message", [
    ("t2i-compbench:empty_val", "holds no prompts"),
    ("t2i-compbench:", "unknown T2I-CompBench prompt set"),
    ("t2i-compbench:../color_train", "unknown T2I-CompBench prompt set"),
])
def test_t2i_compbench_bad_specs(compbench_dir, spec, message):
    with pytest.raises(DiffrlError, match=message):
        load_prompts(spec)


def test_t2i_compbench_directory_errors(tmp_path, monkeypatch):
    from diffrl.prompts_t2i import load_t2i_compbench

    with pytest.raises(DiffrlError, match="does not exist"):
        load_t2i_compbench("t2i-compbench:color_val", tmp_path / "missing")
    monkeypatch.delenv("DIFFRL_T2I_COMPBENCH_DIR", raising=False)
    with pytest.raises(DiffrlError, match="DIFFRL_T2I_COMPBENCH_DIR"):
        load_prompts("t2i-compbench:color_val")


def one_prompt():
    """A prompt generator (one (prompt, metadata) pair per call), for the + test above."""
    return ("a red circle", {})
