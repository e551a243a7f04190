"""LOOP learns: with the default trust region (calibrated clip range, sample reuse), a user's own dense reward
(brightness) rises on held-out prompts, fixed seeds, by several standard errors of the paired change."""
import json

import numpy as np

from diffrl.cli import main


def per_prompt(results: dict, name: str) -> np.ndarray:
    return np.array([p["scores"][name] for p in results["per_prompt"]])


def test_loop_raises_brightness_on_held_out_prompts_by_several_standard_errors(tmp_path):
    out = tmp_path / "learn"
    held_out = ["--prompts", "shapes:color_binding_unseen-val", "--images-per-prompt", "2", "--seed", "3",
                "--reward", "brightness", "--threads", "2"]
    assert main(["train", "--reward", "brightness", "--epochs", "12", "--seed", "0",
                 "--prompts", "shapes:color_binding_unseen-train", "--out", str(out),
                 "--set", "sample.num_steps=8", "--set", "sample.prompts_per_batch=4",
                 "--set", "run.eval_prompts=none", "--set", "run.progress=false",
                 "--set", "run.tensorboard=false"]) == 0
    assert main(["evaluate", *held_out, "--out", str(tmp_path / "base"), "--steps", "8"]) == 0
    assert main(["evaluate", *held_out, "--lora", str(out), "--out", str(tmp_path / "after"),
                 "--baseline", str(tmp_path / "base" / "results.json")]) == 0
    before = per_prompt(json.loads((tmp_path / "base" / "results.json").read_text()), "brightness")
    after = per_prompt(json.loads((tmp_path / "after" / "results.json").read_text()), "brightness")
    change = after - before  # 27 held-out prompts, same noise before and after
    standard_error = change.std(ddof=1) / np.sqrt(len(change))
    assert change.mean() > 4 * standard_error, (change.mean(), standard_error)
