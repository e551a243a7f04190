"""B2-DiffuRL inside the one training loop, composed with every estimator."""
import json

import pytest

from diffrl.cli import main


@pytest.mark.parametrize("algo", ["reinforce", "reinforce-loo", "ppo", "loop", "grpo"])
def test_b2_composes_with_every_estimator(tiny_pipeline_dir, prompt_file, tmp_path, algo):
    out = tmp_path / algo
    code = main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--reward", "brightness",
                 "--algo", algo, "--k", "2", "--epochs", "3", "--out", str(out), "--b2",
                 "--set", "sample.num_steps=4", "--set", "train.min_noise_std=0", "--set", "sample.prompts_per_batch=1", "--set", "b2.start_steps=2",
                 "--set", "b2.stages=3", "--set", "b2.branches=2", "--set", "b2.selection=all",
                 "--set", "run.eval_prompts=none", "--set", "run.progress=false"])
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    # schedule 4 steps, start 2, 3 stages: n_s = 2 + floor(s * 3 / 3) -> 2, 3, 4 trained steps
    assert [r["b2/stage"] for r in records] == [0, 1, 2]
    assert [r["b2/trained_steps"] for r in records] == [2, 3, 4]
    assert [r["b2/first_trained_step"] for r in records] == [2, 1, 0]
    assert all(r["images_seen"] == 4 * r["epoch"] for r in records)  # 1 prompt x K=2 x B=2


def test_b2_zscore_selection_logs_selected_count(tiny_pipeline_dir, prompt_file, tmp_path):
    out = tmp_path / "sel"
    code = main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--reward", "brightness",
                 "--algo", "ppo", "--k", "2", "--epochs", "2", "--out", str(out), "--b2",
                 "--set", "sample.num_steps=3", "--set", "train.min_noise_std=0", "--set", "sample.prompts_per_batch=2", "--set", "b2.start_steps=1",
                 "--set", "b2.branches=3", "--set", "run.eval_prompts=none", "--set", "run.progress=false"])
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    for r in records:
        assert 0 <= r["b2/selected"] <= 2 * 4  # at most best + worst of each of the 4 sibling groups


def test_b2_needs_two_branches_for_group_estimators(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    code = main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--reward", "brightness",
                 "--algo", "loop", "--b2", "--set", "b2.branches=1", "--out", str(tmp_path / "x")])
    assert code == 2 and "b2.branches must be >= 2" in capsys.readouterr().err


def test_b2_group_estimator_accepts_one_trunk_per_prompt():
    """With B2 the siblings are the group, so LOOP with K = 1 trunk and B = 4 branches is valid (K x B = 4)."""
    from diffrl.config import images_per_epoch, load_config

    config = load_config(None, {"train.algo": "loop", "sample.k": "1", "b2.enabled": "true", "b2.branches": "4",
                                "sample.prompts_per_batch": "2"})
    assert images_per_epoch(config) == 8
