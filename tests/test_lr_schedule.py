"""train.lr_schedule / train.lr_warmup_updates: the factor per update, the logged `lr`, checkpoint and resume."""
import signal

import pytest
import torch

import diffrl.checkpoint as ckpt
from diffrl import trainer
from diffrl.cli import main
from diffrl.config import load_config, resume_conflicts, total_updates
from diffrl.errors import DiffrlError
from diffrl.run_state import make_lr_scheduler
from tests.test_reliability_inputs import FAST, assert_one_line, run_cli
from tests.test_reliability_runs import EPOCHS, assert_resumes_to_reference, metrics, train_args, weights

# Hand-computed factors over 10 updates with 2 of warmup, at positions 0..10 (position u: the factor of the
# (u+1)-th update; position 10: after the last one). Warmup u / 2; then linear (10 - u) / 8, cosine
# (1 + cos(pi (u - 2) / 8)) / 2.
WARMUP = [0.0, 0.5]
EXPECTED = {
    "constant": WARMUP + [1.0] * 9,
    "linear": WARMUP + [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0],
    "cosine": WARMUP + [1.0, 0.9619398, 0.8535534, 0.6913417, 0.5, 0.3086583, 0.1464466, 0.0380602, 0.0],
}


@pytest.mark.parametrize("schedule", list(EXPECTED))
def test_factor_per_update_with_warmup(schedule):
    config = load_config(overrides={"train.lr_schedule": schedule, "train.lr_warmup_updates": "2",
                                    "run.epochs": "5", "train.minibatches": "2"})
    assert total_updates(config) == 10  # 5 epochs x 1 inner epoch x 2 minibatches
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=1.0)  # lr 1: the learning rate is the factor
    scheduler = make_lr_scheduler(config, optimizer)
    factors = [optimizer.param_groups[0]["lr"]]
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        factors.append(optimizer.param_groups[0]["lr"])
    assert factors == pytest.approx(EXPECTED[schedule], abs=1e-7)


def test_total_updates_counts_inner_epochs_and_minibatches():
    assert total_updates(load_config()) == 20 * 16  # the demo: 20 epochs x 16 updates of 16 samples
    assert total_updates(load_config(overrides={"run.epochs": "3", "train.inner_epochs": "2",
                                                "train.minibatches": "4"})) == 24


# ---------------------------------------------------------------- real runs (the tiny pipeline, 2 updates/epoch)

LINEAR = ["--set", "train.lr_schedule=linear", "--set", "train.lr_warmup_updates=2"]


@pytest.fixture(scope="module")
def linear_reference(tiny_pipeline_dir, prompt_file, tmp_path_factory):
    """An uninterrupted 4-epoch run with the linear schedule: (final weights, metrics lines)."""
    out = tmp_path_factory.mktemp("linear") / "run"
    assert main(train_args(tiny_pipeline_dir, prompt_file, out, *LINEAR)) == 0
    return weights(out, EPOCHS), metrics(out)


def interrupted(args, monkeypatch, after_epochs: int = 2) -> int:
    """Run `diffrl train ARGS` in this process with a SIGTERM after `after_epochs` epochs (checkpoint, exit 143)."""
    real_epoch = trainer.run_epoch

    def run_epoch(epoch, run):
        epoch_metrics = real_epoch(epoch, run)
        if epoch + 1 == after_epochs:
            signal.raise_signal(signal.SIGTERM)  # StopRequested's handler: stop after this epoch
        return epoch_metrics

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "run_epoch", run_epoch)
        return main(args)


def test_linear_schedule_logs_a_decreasing_lr_that_ends_at_zero(linear_reference):
    lines = linear_reference[1]
    lr = [r["lr"] for r in lines if "lr" in r]
    assert len(lr) == EPOCHS  # one per epoch (the epoch-0 line is the evaluation before training)
    # 8 updates, 2 per epoch, 2 of warmup: after epoch e (position u = 2e) the factor is (8 - u) / 6
    assert lr == pytest.approx([1e-2, 1e-2 * 4 / 6, 1e-2 * 2 / 6, 0.0], abs=1e-12)
    assert all(a > b for a, b in zip(lr, lr[1:]))


def test_interrupted_and_resumed_run_keeps_the_schedule(tiny_pipeline_dir, prompt_file, tmp_path, monkeypatch,
                                                        linear_reference):
    out = tmp_path / "run"
    assert interrupted(train_args(tiny_pipeline_dir, prompt_file, out, *LINEAR), monkeypatch) == 128 + signal.SIGTERM
    assert (ckpt.list_checkpoints(out)[-1] / "lr_scheduler.pt").is_file()
    assert_resumes_to_reference(out, linear_reference)  # bit-identical weights, same rewards
    assert [r.get("lr") for r in metrics(out)] == [r.get("lr") for r in linear_reference[1]]


def test_checkpoint_without_schedule_state_still_resumes(tiny_pipeline_dir, prompt_file, tmp_path, monkeypatch):
    """A checkpoint written before train.lr_schedule existed (constant schedule, no lr_scheduler.pt) resumes."""
    out = tmp_path / "run"
    assert interrupted(train_args(tiny_pipeline_dir, prompt_file, out), monkeypatch) == 128 + signal.SIGTERM
    for path in ckpt.list_checkpoints(out):
        (path / "lr_scheduler.pt").unlink()
    assert main(["train", "--resume", str(out)]) == 0
    assert [r["epoch"] for r in metrics(out)] == list(range(EPOCHS + 1))
    assert [r["lr"] for r in metrics(out)[1:]] == [1e-2] * EPOCHS


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("setting, message", [
    ("train.lr_schedule=step", "train.lr_schedule must be constant, linear, cosine (got 'step')"),
    ("train.lr_warmup_updates=-1", "train.lr_warmup_updates must be >= 0"),
])
def test_bad_values_fail_with_one_line(setting, message, tmp_path, capsys):
    with pytest.raises(DiffrlError, match=message.split(" (")[0]):
        load_config(overrides=dict([setting.split("=")]))
    code, err = run_cli(["train", *FAST, "--set", setting, "--out", str(tmp_path / "run")], capsys)
    assert_one_line(code, err, message)
    assert not (tmp_path / "run").exists()


def test_annealed_schedule_pins_run_epochs_on_resume():
    def config(schedule, epochs):
        return load_config(overrides={"train.lr_schedule": schedule, "run.epochs": epochs})

    assert resume_conflicts(config("constant", "4"), config("constant", "8")) == []  # warmup alone: no length
    conflicts = resume_conflicts(config("linear", "4"), config("linear", "8"))
    assert len(conflicts) == 1 and conflicts[0].startswith("run.epochs (4 -> 8: train.lr_schedule=linear")
    assert resume_conflicts(config("cosine", "4"), config("cosine", "4")) == []
