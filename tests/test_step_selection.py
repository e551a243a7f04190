"""Which denoising steps are trained: train.first_steps against min_noise_std and B2's interval."""
import json

from diffrl.cli import main

BASE = ["--reward", "brightness", "--algo", "loop", "--epochs", "1", "--set", "sample.num_steps=4",
        "--set", "sample.prompts_per_batch=2", "--set", "sample.k=2", "--set", "run.eval_prompts=none",
        "--set", "run.progress=false", "--set", "run.tensorboard=false", "--set", "train.min_noise_std=0"]


def trained_steps(tmp_path, tiny_pipeline_dir, prompt_file, *extra) -> int:
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--out", str(out),
                 *BASE, *extra]) == 0
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["trained_steps"]


def test_first_steps_limits_the_trained_steps(tmp_path, tiny_pipeline_dir, prompt_file):
    assert trained_steps(tmp_path / "all", tiny_pipeline_dir, prompt_file) == 4
    assert trained_steps(tmp_path / "two", tiny_pipeline_dir, prompt_file, "--set", "train.first_steps=2") == 2


def test_first_steps_disjoint_from_b2_interval_is_refused(tmp_path, tiny_pipeline_dir, prompt_file, capsys):
    # B2 stage 0 trains the last 2 of 4 steps; train.first_steps=1 leaves none.
    code = main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--out",
                 str(tmp_path / "b2"), *BASE, "--b2", "--set", "b2.start_steps=2", "--set", "b2.branches=2",
                 "--set", "train.first_steps=1"])
    assert code == 2
    assert "train.first_steps" in capsys.readouterr().err
    assert not (tmp_path / "b2").exists()
