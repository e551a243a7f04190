"""Trust-region plumbing end to end on a tiny pipeline: ratio extremes, the never-clipped warning, the KL penalty."""
import json

import numpy as np

from diffrl.cli import main

BASE = ["--reward", "brightness", "--algo", "loop", "--epochs", "2", "--set", "sample.num_steps=3",
        "--set", "sample.prompts_per_batch=2", "--set", "sample.k=2", "--set", "run.eval_prompts=none",
        "--set", "run.progress=false", "--set", "run.tensorboard=false", "--set", "train.learning_rate=3e-2",
        "--set", "train.min_noise_std=0", "--set", "train.inner_epochs=2"]


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train(tmp_path, name, tiny_pipeline_dir, prompt_file, *extra):
    out = tmp_path / name
    assert main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--out", str(out),
                 *BASE, *extra]) == 0
    return records(out)


def test_ratio_extremes_logged_and_clip_warning_once(tmp_path, tiny_pipeline_dir, prompt_file, capsys):
    recs = train(tmp_path, "wide", tiny_pipeline_dir, prompt_file, "--set", "train.clip_range=1e6")
    last = recs[-1]
    assert last["ratio_min"] <= last["ratio_mean"] <= last["ratio_max"]
    assert last["ratio_min"] != last["ratio_max"]  # the second inner epoch is off-policy
    assert capsys.readouterr().out.count("PPO clipping never acted") == 1


def test_calibrated_clip_acts_and_is_announced(tmp_path, tiny_pipeline_dir, prompt_file, capsys):
    recs = train(tmp_path, "calibrated", tiny_pipeline_dir, prompt_file)
    out = capsys.readouterr().out
    assert "clip range 0.000937" in out, out  # 0.015 / sqrt(4 * 8 * 8 latent dims)
    assert max(r.get("clip_fraction", 0) for r in recs) > 0


def test_kl_penalty_keeps_the_policy_nearer_the_base_model(tmp_path, tiny_pipeline_dir, prompt_file):
    free = train(tmp_path, "free", tiny_pipeline_dir, prompt_file, "--set", "train.kl_coef=1e-12")
    held = train(tmp_path, "held", tiny_pipeline_dir, prompt_file, "--set", "train.kl_coef=1e4")
    assert np.isfinite(free[-1]["kl_to_base"]) and free[-1]["kl_to_base"] > 0
    assert held[-1]["kl_to_base"] < 0.5 * free[-1]["kl_to_base"]


def test_kl_penalty_needs_lora(tmp_path, tiny_pipeline_dir, prompt_file, capsys):
    assert main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--out",
                 str(tmp_path / "x"), *BASE, "--set", "train.kl_coef=0.1", "--set", "model.lora=false"]) == 2
    assert "needs model.lora" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_clip_warning_names_an_annealed_step():
    from diffrl.trainer import clip_idle_message

    metrics = {"ratio_min": 0.9992, "ratio_max": 1.0006, "lr": 2e-5}
    annealed = clip_idle_message(34, metrics, 9.37e-4, learning_rate=1e-3)
    assert "epoch 34" in annealed and "annealed to 2e-05" in annealed and "inner_epochs" not in annealed
    constant = clip_idle_message(3, {**metrics, "lr": 1e-3}, 9.37e-4, learning_rate=1e-3)
    assert "inner_epochs" in constant and "annealed" not in constant


def test_onpolicy_ratios_measure_the_arithmetic(tmp_path, tiny_pipeline_dir, prompt_file, capsys):
    """Before an epoch's first step sampler and trainer share the weights: the ratios differ from 1 by rounding
    alone (in fp32 on CPU at most a few 1e-6), and no mismatch warning is given."""
    recs = [r for r in train(tmp_path, "fp32", tiny_pipeline_dir, prompt_file) if "updates" in r]
    assert recs and all(0 <= r["ratio_onpolicy_dev"] < 1e-4 for r in recs)
    assert "before any update" not in capsys.readouterr().out


def test_onpolicy_mismatch_warns_once_for_clipped_estimators():
    from types import SimpleNamespace

    from diffrl.config import Config
    from diffrl.trainer import warn_about_trust_region

    printed = []
    run = SimpleNamespace(estimator=SimpleNamespace(clipped=True), config=Config(), latent_shape=(4, 8, 8),
                          warned=set(), counters={"epoch": 3}, accelerator=SimpleNamespace(print=printed.append))
    quiet = {"updates": 16, "clip_fraction": 0.2, "ratio_onpolicy_dev": 3e-6}
    warn_about_trust_region(run, quiet)
    assert printed == []
    noisy = quiet | {"ratio_onpolicy_dev": 5e-4}  # about half the calibrated 9.37e-4: TF32- or bf16-sized
    warn_about_trust_region(run, noisy)
    warn_about_trust_region(run, noisy)
    assert len(printed) == 1 and "epoch 3" in printed[0] and "53% of the clip range" in printed[0]
    assert "train.allow_tf32=false" in printed[0]
    run.estimator.clipped, run.warned = False, set()  # REINFORCE uses no ratio
    warn_about_trust_region(run, noisy)
    assert len(printed) == 1
