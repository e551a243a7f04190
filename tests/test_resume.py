"""Resume restores everything: a run stopped after epoch 2 and resumed ends bit-identical to one that never stopped."""
import json

import pytest
import torch
from safetensors.torch import load_file

from diffrl.cli import main

ARGS = ["--reward", "brightness", "--k", "2", "--set", "sample.num_steps=3", "--set", "sample.prompts_per_batch=2",
        "--set", "run.eval_prompts=none", "--set", "run.progress=false", "--set", "run.save_every=1",
        "--set", "train.learning_rate=1e-2", "--set", "train.clip_range=0.1", "--set", "run.tensorboard=false"]


@pytest.mark.parametrize("algo", ["ppo", "loop"])
def test_interrupted_and_resumed_run_matches_uninterrupted(tiny_pipeline_dir, prompt_file, tmp_path, algo):
    common = ["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--algo", algo, *ARGS]
    assert main([*common, "--epochs", "4", "--out", str(tmp_path / "full")]) == 0
    assert main([*common, "--epochs", "2", "--out", str(tmp_path / "part")]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--set", "run.epochs=4"]) == 0

    full = load_file(tmp_path / "full" / "checkpoints" / "epoch_00004" / "trainable.safetensors")
    resumed = load_file(tmp_path / "part" / "checkpoints" / "epoch_00004" / "trainable.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2, 3, 4]  # no duplicated or missing lines
    reference = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("reward_mean") for r in lines] == [r.get("reward_mean") for r in reference]


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a diffrl run directory" in capsys.readouterr().err


def test_new_run_refuses_an_existing_run_directory(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    common = ["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), *ARGS, "--epochs", "1",
              "--out", str(tmp_path / "r")]
    assert main(common) == 0
    assert main(common) == 2
    assert "--resume" in capsys.readouterr().err
