"""End to end through the real CLI on a tiny pipeline: artifacts, LoRA export, bad input."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffrl.cli import main

BASE = ["--reward", "brightness", "--set", "sample.num_steps=3", "--set", "sample.prompts_per_batch=2",
        "--set", "sample.k=2", "--set", "run.eval_images_per_prompt=1", "--set", "run.tensorboard=true",
        "--set", "run.progress=false", "--set", "train.learning_rate=1e-2"]


@pytest.fixture(scope="module")
def run_dir(tiny_pipeline_dir, prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--epochs", "2",
                 "--out", str(out), "--set", f"run.eval_prompts={prompt_file}", *BASE])
    assert code == 0
    return out


def test_run_directory_layout(run_dir):
    for name in ("config.yaml", "metrics.jsonl", "reward_curve.png", "before_after.png", "lora/pytorch_lora_weights.safetensors"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run_dir / "images").glob("epoch_*.png"))
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["epoch_00002"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for key in ("reward_mean", "reward_std", "advantage_mean", "advantage_std", "approx_kl", "clip_fraction",
                "grad_norm", "loss", "images_per_s", "ratio_mean"):
        assert np.isfinite(records[-1][key]), key
    assert "eval/brightness" in records[0] and "eval/brightness" in records[-1]
    assert records[-1]["trained_steps"] == 1  # 3 steps: the last two (sigma_t 0.04, 0.02) are not trained


def test_lora_changed_and_loads_into_plain_diffusers(run_dir, tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    lora = load_file(run_dir / "lora" / "pytorch_lora_weights.safetensors")
    assert lora and all(k.startswith("unet.") for k in lora)
    trained = load_file(run_dir / "checkpoints" / "epoch_00002" / "trainable.safetensors")
    # LoRA B matrices start at zero under gaussian init? No: peft's gaussian init zeros B; training moves it.
    b_weights = [v for k, v in trained.items() if "lora_B" in k]
    assert b_weights and any(v.abs().sum() > 0 for v in b_weights)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    base = pipe("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(run_dir / "lora")
    tuned = pipe("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert not np.allclose(base, tuned)


@pytest.mark.parametrize("argv, message", [
    (["--algo", "nope"], "invalid choice"),
    (["--algo", "loop", "--k", "1"], "K >= 2"),
    (["--reward", "no_such_reward"], "unknown reward"),
    (["--model", "/no/such/dir"], "model directory not found"),
    (["--set", "train.nope=1"], "unknown config key 'train.nope'"),
    (["--set", "train.learning_rate=fast"], "train.learning_rate"),
    (["--set", "sample.prompts_per_batch=3", "--set", "train.minibatches=2", "--k", "3"], "does not divide"),
    (["--algo", "reinforce", "--set", "train.inner_epochs=2"], "on-policy"),
    (["--set", "sample.num_steps=2"], "sigma_t >= train.min_noise_std=0.05"),  # both steps near-deterministic
    (["--set", "train.min_noise_std=-1"], "train.min_noise_std must be >= 0"),
    (["--set", "model.lora_target_modules=to_q,conv9"], "conv9 names no module"),  # peft would skip it silently
])
def test_bad_input_is_one_line_exit_2(argv, message, tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    base = ["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--out", str(tmp_path / "r"),
            "--reward", "brightness"]
    with pytest.raises(SystemExit) if message == "invalid choice" else _no_exit():
        code = main(base + argv)
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert "Traceback" not in err
    if message != "invalid choice":
        assert len(err.splitlines()) == 1
        assert not (tmp_path / "r" / "checkpoints").exists()


def test_empty_prompt_file_and_bad_reward_shape(tiny_pipeline_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code = main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(empty), "--out", str(tmp_path / "r")])
    assert code == 2 and "no prompts" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    code = main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompts), "--out", str(tmp_path / "r2"),
                 "--reward", "tests.helpers:wrong_shape_reward", "--epochs", "1", *BASE[2:],
                 "--set", "run.eval_prompts=none"])
    assert code == 2 and "expected (4,)" in capsys.readouterr().err


def test_nan_rewards_are_skipped_not_trained_on(tiny_pipeline_dir, prompt_file, tmp_path):
    out = tmp_path / "nan"
    code = main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--out", str(out),
                 "--epochs", "1", *BASE[2:], "--reward", "tests.helpers:half_nan_reward", "--set", "run.eval_prompts=none"])
    assert code == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["nan_rewards_total"] == 2
    assert np.isfinite(record["reward_mean"]) and np.isfinite(record["loss"])


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_held_out_summary_first_to_last():
    from diffrl.runlog import held_out_summary

    records = [{"epoch": 0, "eval/shapes": 0.5}, {"epoch": 1, "reward_mean": 0.1},
               {"epoch": 5, "eval/shapes": 0.75, "eval/once": 1.0}, {"epoch": 10, "eval/shapes": 0.625}]
    assert held_out_summary(records) == ["held-out shapes: 0.5000 (epoch 0) -> 0.6250 (epoch 10)"]


@pytest.mark.parametrize("setting, expected", [([], True), (["--set", "run.deterministic=false"], False)])
def test_cpu_runs_use_deterministic_algorithms_unless_told_not_to(setting, expected, tiny_pipeline_dir, prompt_file,
                                                                  tmp_path):
    torch.use_deterministic_algorithms(not expected)  # the run must set it, whatever the process had
    try:
        assert main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--out",
                     str(tmp_path / "run"), "--epochs", "1", *BASE, "--set", "run.eval_prompts=none",
                     *setting]) == 0
        assert torch.are_deterministic_algorithms_enabled() is expected
    finally:
        torch.use_deterministic_algorithms(False)
