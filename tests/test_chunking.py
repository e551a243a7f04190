"""train.chunk_size only regroups the gradient's sums: one call per minibatch (the CPU default) and one pair per
call train the same weights."""
import pytest
import torch

from diffrl.cli import main
from tests.test_reliability_runs import metrics, train_args, weights


def test_one_call_per_minibatch_and_one_pair_per_call_train_the_same_weights(tiny_pipeline_dir, prompt_file,
                                                                            tmp_path):
    # AdamW with epsilon 1 steps along the gradient itself, so float32 regrouping noise stays noise (as in
    # test_zero_advantage.py); brightness rewards (train_args' default) never tie, so every pair is evaluated.
    args = ["--set", "sample.prompts_per_batch=4", "--set", "train.adam_epsilon=1",
            "--set", "train.learning_rate=1", "--set", "train.minibatches=2", "--epochs", "1"]
    assert main(train_args(tiny_pipeline_dir, prompt_file, tmp_path / "default", *args)) == 0
    assert main(train_args(tiny_pipeline_dir, prompt_file, tmp_path / "one", *args,
                           "--set", "train.chunk_size=1")) == 0
    for a, b in zip(metrics(tmp_path / "default"), metrics(tmp_path / "one")):
        if "grad_norm" in a:
            assert a["grad_norm"] > 0 and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    w_default, w_one = weights(tmp_path / "default", 1), weights(tmp_path / "one", 1)
    assert any(w.abs().max() > 0 for key, w in w_default.items() if "lora_B" in key)  # trained: B starts at 0
    for key in w_default:
        torch.testing.assert_close(w_default[key], w_one[key], rtol=1e-4, atol=1e-5)
