"""sample.skip_zero_advantage: prompts whose last group was flat are passed over with a probability, and a run that
skips them resumes bit for bit."""
import json

import numpy as np
import pytest
import torch

from diffrl import checkpoint as ckpt
from diffrl.cli import main
from diffrl.core.prompt_filter import MAX_DRAW_ROUNDS, draw_skipping_flat, flat_prompts, update_flat_set
from tests.test_reliability_runs import metrics, weights
from tests.test_resume import ARGS


class ScriptedRng:
    """rng.random() returns the given numbers in order."""

    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def scripted_draw(texts):
    """draw(m): the next m prompts of a fixed list, as (text, metadata) pairs."""
    queue = list(texts)
    return lambda m: [(queue.pop(0), {}) for _ in range(m)]


def test_a_prompt_is_flat_when_every_image_has_a_zero_advantage():
    texts = ["a", "a", "b", "b", "c", "c"]
    advantages = np.array([0.0, 0.0, 0.5, -0.5, 0.0, np.nan])  # NaN: not known to be flat
    assert flat_prompts(texts, advantages) == {"a": True, "b": False, "c": False}


def test_the_flat_set_keeps_each_prompts_latest_outcome():
    flat_set = {"b", "x"}
    update_flat_set(flat_set, {"a": True, "b": False})
    assert flat_set == {"a", "x"}  # a joined, b taught again and left, x was not drawn and stays


def test_flat_prompts_are_passed_over_with_the_probability_and_replaced():
    # round 1 draws f (0.1 < 0.5: passed over), a (not flat: no number drawn), f (0.9: kept); round 2 draws b
    rng = ScriptedRng([0.1, 0.9])
    chosen, passed_over = draw_skipping_flat(scripted_draw(["f", "a", "f", "b"]), 3, {"f"}, 0.5, rng)
    assert [text for text, _ in chosen] == ["a", "f", "b"] and passed_over == 1 and rng.values == []


def test_without_skipping_it_is_one_plain_draw_that_leaves_the_rng_alone():
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    chosen, passed_over = draw_skipping_flat(scripted_draw(["f", "f", "a"]), 3, {"f"}, 0.0, rng)
    assert [text for text, _ in chosen] == ["f", "f", "a"] and passed_over == 0
    assert rng.bit_generator.state == before


def test_a_batch_of_only_flat_prompts_is_still_filled():
    draws = []

    def draw(m):
        draws.append(m)
        return [("f", {})] * m
    chosen, passed_over = draw_skipping_flat(draw, 4, {"f"}, 0.99, ScriptedRng([0.0] * 4 * MAX_DRAW_ROUNDS))
    assert len(chosen) == 4 and passed_over == 4 * MAX_DRAW_ROUNDS and len(draws) == MAX_DRAW_ROUNDS + 1


@pytest.mark.parametrize("bad", ["1", "-0.1"])
def test_a_skip_probability_outside_0_1_is_refused(bad, tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    code = main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), *ARGS,
                 "--set", f"sample.skip_zero_advantage={bad}", "--out", str(tmp_path / "run")])
    assert code == 2 and "sample.skip_zero_advantage must be in [0, 1)" in capsys.readouterr().err


def test_a_run_skipping_flat_prompts_passes_them_over_and_resumes_bit_for_bit(tiny_pipeline_dir, prompt_file,
                                                                              tmp_path):
    # Every prompt but the cat's gets reward 1 on every image: flat after its first draw.
    common = ["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--algo", "loop", *ARGS,
              "--reward", "tests.test_zero_advantage:constant_unless_cat", "--set", "sample.prompts_per_batch=4",
              "--set", "sample.skip_zero_advantage=0.9"]
    assert main([*common, "--epochs", "4", "--out", str(tmp_path / "full")]) == 0
    assert main([*common, "--epochs", "2", "--out", str(tmp_path / "part")]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--set", "run.epochs=4"]) == 0

    lines = metrics(tmp_path / "full")[1:]
    assert lines[0]["prompts_passed_over"] == 0  # nothing known before the first epoch
    assert sum(line["prompts_passed_over"] for line in lines[1:]) > 0
    state = json.loads((ckpt.checkpoint_path(tmp_path / "full", 4) / "state.json").read_text())
    assert state["flat_prompts"] and "a yellow cat" not in state["flat_prompts"]
    assert set(state["flat_prompts"]) <= {"a red circle", "a blue square", "a green triangle"}

    resumed = metrics(tmp_path / "part")[1:]
    assert [r["prompts_passed_over"] for r in resumed] == [r["prompts_passed_over"] for r in lines]
    full, part = weights(tmp_path / "full", 4), weights(tmp_path / "part", 4)
    for key in full:
        assert torch.equal(full[key], part[key]), key
