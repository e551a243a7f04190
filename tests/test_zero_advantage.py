"""Pairs of zero-advantage samples are not evaluated in the update: the gradient, and so the run, is unchanged."""
import numpy as np
import pytest
import torch

from diffrl import update
from diffrl.cli import main
from diffrl.update import Pairs, without_zero_advantage
from tests.test_reliability_runs import metrics, train_args, weights

EPOCHS = 1  # 2 updates; later epochs sample from the updated weights, and GRPO turns float noise there into new advantages


def constant_unless_cat(images, prompts, metadata):
    """1 for every prompt but the cat's, whose reward is the brightness: K equal rewards give advantages 0."""
    brightness = np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3)) / 255.0
    return np.where(["cat" in p for p in prompts], brightness, 1.0)


REWARD = ["--reward", f"{__name__}:constant_unless_cat"]


def test_zero_advantage_pairs_are_dropped_and_the_normalizer_kept():
    pairs = Pairs(torch.tensor([0, 0, 1, 2, 2]), torch.tensor([3, 5, 3, 4, 6]))
    kept = without_zero_advantage(pairs, torch.tensor([0.5, 0.0, -0.25]))
    assert kept.samples.tolist() == [0, 0, 2, 2] and kept.steps.tolist() == [3, 5, 4, 6]
    assert kept.drawn == 5 and kept.weight == 1.0
    assert without_zero_advantage(pairs, torch.tensor([1.0, 2.0, 3.0])) is pairs
    none_left = without_zero_advantage(pairs, torch.zeros(3))  # one stand-in pair without weight
    assert len(none_left.samples) == 1 and none_left.weight == 0.0 and none_left.drawn == 5


@pytest.mark.parametrize("algo", ["loop", "reinforce-loo", "grpo"])
def test_skipping_zero_advantage_pairs_leaves_the_run_unchanged(algo, tiny_pipeline_dir, prompt_file, tmp_path,
                                                                monkeypatch):
    # AdamW with epsilon 1 steps along the gradient itself: with a tiny epsilon it would turn the rounding noise of
    # components whose gradient is ~0 into full-size steps, and the two runs would differ by that, not by a bug.
    args = [*REWARD, "--algo", algo, "--set", "sample.prompts_per_batch=4", "--set", "train.adam_epsilon=1",
            "--set", "train.learning_rate=1",
            "--set", f"train.minibatches={1 if algo == 'reinforce-loo' else 2}", "--epochs", str(EPOCHS)]
    assert main(train_args(tiny_pipeline_dir, prompt_file, tmp_path / "skip", *args)) == 0
    monkeypatch.setattr(update, "without_zero_advantage", lambda pairs, advantages: pairs)
    assert main(train_args(tiny_pipeline_dir, prompt_file, tmp_path / "all", *args)) == 0

    skipped = [m["pairs_evaluated"] for m in metrics(tmp_path / "skip") if "pairs_evaluated" in m]
    assert len(skipped) == EPOCHS and min(skipped) < 0.6  # most groups have equal rewards
    assert all(m["pairs_evaluated"] == 1 for m in metrics(tmp_path / "all") if "pairs_evaluated" in m)
    for a, b in zip(metrics(tmp_path / "skip"), metrics(tmp_path / "all")):
        if "grad_norm" in a:  # (the loss itself, a mean of terms that cancel to ~0, only agrees to float32 noise)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    w_skip, w_all = weights(tmp_path / "skip", EPOCHS), weights(tmp_path / "all", EPOCHS)
    assert any(w.abs().max() > 0 for key, w in w_all.items() if "lora_B" in key)  # trained: B starts at 0
    for key in w_all:  # float32 summation order differs by CPU; GRPO's std division amplifies it to ~2e-6
        torch.testing.assert_close(w_skip[key], w_all[key], rtol=1e-4, atol=1e-5)

