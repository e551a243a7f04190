"""Which denoising steps are trained: train.first_steps against min_noise_std and B2's interval."""
import json

import torch

from diffrl.cli import main
from tests.test_reliability_runs import weights

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


def test_noise_aware_step_weights_change_the_update_and_reduce_to_uniform_on_one_step(tmp_path, tiny_pipeline_dir,
                                                                                      prompt_file):
    def trained(name, *extra):
        out = tmp_path / name
        assert main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--out", str(out),
                     *BASE, "--set", "run.save_every=1", *extra]) == 0
        return weights(out, 1)

    uniform, weighted = trained("uniform"), trained("weighted", "--set", "train.step_weight_power=1")
    assert any(not torch.allclose(uniform[k], weighted[k]) for k in uniform if "lora_B" in k)
    # one trained step: its weight is the mean, 1, so the run is the uniform one
    one_uniform = trained("one", "--set", "train.first_steps=1")
    one_weighted = trained("one_weighted", "--set", "train.first_steps=1", "--set", "train.step_weight_power=1")
    for key in one_uniform:
        torch.testing.assert_close(one_uniform[key], one_weighted[key], rtol=0, atol=0)
