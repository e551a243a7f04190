"""run.eval_prompts = auto (the default): held-out prompts that follow the user's training prompts.

ShapesWorld prompts keep ShapesWorld's held-out set; any other fixed set of >= 5 distinct prompts gives up a
fixed-seed 20% (at least 1) that training never samples; fewer prompts mean no held-out evaluation, said once.
"""
import json

import numpy as np
import pytest

from diffrl.cli import main
from diffrl.config import Config, resume_conflicts
from diffrl.prompts import AUTO, SHAPES_HELD_OUT, load_prompts, split_prompts

SIX = ["a red circle", "a blue square", "a green triangle", "a yellow cat", "two dog", "a red dog"]
TINY = ["--reward", f"{__name__}:recording_brightness", "--k", "2", "--epochs", "1",
        "--set", "sample.num_steps=2", "--set", "train.min_noise_std=0", "--set", "sample.prompts_per_batch=2",
        "--set", "run.eval_images_per_prompt=1", "--set", "run.progress=false", "--set", "run.tensorboard=false",
        "--set", "run.threads=1"]
CALLS: list[list[str]] = []


def recording_brightness(images, prompts, metadata):
    """brightness, remembering the prompts of every call (held-out evaluations included)."""
    CALLS.append(list(prompts))
    return np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3)) / 255


def write_prompts(path, prompts):
    path.write_text("\n".join(prompts) + "\n")
    return str(path)


def test_auto_holds_out_a_fixed_fifth_of_a_user_prompt_set(tmp_path):
    ten = write_prompts(tmp_path / "ten.txt", [f"prompt {i}" for i in range(10)] + ["prompt 3"])  # one duplicate
    split = split_prompts(ten, AUTO)
    held = [p for p, _ in split.held_out]
    trained = [p for p, _ in split.train.prompts]
    assert len(held) == 2 and len(set(held)) == 2  # 20% of 10 distinct prompts
    assert not set(held) & set(trained)  # every copy of a held-out text leaves training
    assert set(held) | set(trained) == {f"prompt {i}" for i in range(10)}
    assert [p for p, _ in split_prompts(ten, AUTO).held_out] == held  # the same split every time (and every seed)
    assert "2 of the 10" in split.note

    five = write_prompts(tmp_path / "five.txt", SIX[:5])
    assert len(split_prompts(five, AUTO).held_out) == 1  # at least 1


def test_auto_with_few_prompts_a_generator_or_shapesworld(tmp_path, prompt_file):
    few = split_prompts(str(prompt_file), AUTO)
    assert few.held_out is None and "4 distinct" in few.note and len(few.train.prompts) == 4
    generated = split_prompts("tests.helpers:prompt_generator", AUTO)
    assert generated.held_out is None and "generator" in generated.note
    shapes = split_prompts("shapes:color_binding_unseen-train", AUTO)
    assert shapes.held_out == load_prompts(SHAPES_HELD_OUT).all() and shapes.note is None
    assert len(shapes.train.prompts) == len(load_prompts("shapes:color_binding_unseen-train").all())


def test_explicit_held_out_prompts_and_none_leave_training_alone(tmp_path, prompt_file):
    six = write_prompts(tmp_path / "six.txt", SIX)
    explicit = split_prompts(six, str(prompt_file))
    assert [p for p, _ in explicit.held_out] == [p for p, _ in load_prompts(str(prompt_file)).all()]
    assert len(explicit.train.prompts) == 6
    off = split_prompts(six, None)
    assert off.held_out is None and off.note is None and len(off.train.prompts) == 6
    assert Config().run.eval_prompts == AUTO


def test_resume_refuses_switching_auto_when_it_changes_the_training_prompts(tmp_path):
    saved, new = Config(), Config()
    saved.run.prompts = new.run.prompts = "my_prompts.txt"
    new.run.eval_prompts = None
    assert any("run.eval_prompts" in c and "training prompts" in c for c in resume_conflicts(saved, new))
    new.run.eval_prompts = "other.txt"
    assert resume_conflicts(saved, new)
    saved.run.eval_prompts = "other.txt"
    new.run.eval_prompts = None
    assert resume_conflicts(saved, new) == []  # neither takes prompts from training
    shapes_saved, shapes_new = Config(), Config()
    shapes_new.run.eval_prompts = None
    assert resume_conflicts(shapes_saved, shapes_new) == []  # ShapesWorld's held-out set is not a training prompt


def test_user_model_and_prompts_evaluate_on_their_own_held_out_prompts(tiny_pipeline_dir, tmp_path, capsys):
    """`diffrl train --model DIR --prompts FILE --reward R`: no ShapesWorld evaluation, no shapes_success."""
    prompts = write_prompts(tmp_path / "six.txt", SIX)
    held = [p for p, _ in split_prompts(prompts, AUTO).held_out]
    CALLS.clear()
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_pipeline_dir), "--prompts", prompts, "--out", str(out), *TINY]) == 0
    stdout = capsys.readouterr().out
    assert "shapes_success" not in stdout and "held-out prompts: 1 of the 6" in stdout
    assert f"held-out {__name__}:recording_brightness" in stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {k for k in records[0] if k.startswith("eval/")} == {f"eval/{__name__}:recording_brightness"}
    before, training, after = CALLS  # held-out evaluation, the epoch, held-out evaluation
    assert before == after == held  # eval_images_per_prompt = 1
    assert not set(training) & set(held)

    # `diffrl evaluate --lora RUN` defaults to the same held-out prompts
    assert main(["evaluate", "--lora", str(out), "--images-per-prompt", "1", "--threads", "1",
                 "--out", str(tmp_path / "ev")]) == 0
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [p["prompt"] for p in result["per_prompt"]] == held and "held out of" in result["prompts"]
    assert list(result["metrics"]) == [f"{__name__}:recording_brightness"]


def test_too_few_prompts_evaluate_nothing_and_say_so_once(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--out", str(out),
                 *TINY]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("no held-out evaluation") == 1 and "shapes_success" not in stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not [k for r in records for k in r if k.startswith("eval/")]
    # early stopping on the held-out reward cannot work without one: refused before anything is written
    assert main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file),
                 "--out", str(tmp_path / "x"), *TINY, "--set", "run.early_stop_drop=0.1"]) == 2
    assert "run.early_stop_drop needs held-out prompts" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("value", ["none", "None"])
def test_eval_prompts_none_still_means_off(value, tmp_path):
    from diffrl.config import load_config

    assert load_config(overrides={"run.eval_prompts": value}).run.eval_prompts is None
