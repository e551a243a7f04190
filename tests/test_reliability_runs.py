"""Faults injected into real runs (docs/reliability.md): SIGKILL at a random point and in the middle of a
checkpoint write, SIGTERM / SIGINT, a full disk, non-finite losses, rewards that turn NaN, a collapsing
held-out reward. Every interrupted run is resumed and must end bit-identical to one that never stopped.

Runs are tiny (16x16 images, 2 DDIM steps, 2 prompts x K=2, 4 epochs) and use one torch thread, so a
subprocess and this process compute the same bits.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import diffrl.checkpoint as ckpt
from diffrl import trainer
from diffrl.cli import main

EPOCHS = 4
ARGS = ["--reward", "brightness", "--k", "2", "--algo", "loop", "--set", "sample.num_steps=2", "--set", "train.min_noise_std=0",
        "--set", "sample.prompts_per_batch=2", "--set", "run.eval_prompts=none", "--set", "run.progress=false",
        "--set", "run.save_every=1", "--set", "run.keep_checkpoints=2", "--set", "train.learning_rate=1e-2",
        "--set", "train.clip_range=0.1", "--set", "run.tensorboard=false", "--set", "run.threads=1",
        "--set", "train.inner_epochs=1", "--set", "train.minibatches=2"]  # 2 updates per epoch: the skip counts below
REPO = Path(__file__).parents[1]


def train_args(tiny_pipeline_dir, prompt_file, out, *extra):
    return ["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), *ARGS,
            "--epochs", str(EPOCHS), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir, prompt_file, tmp_path_factory):
    """The uninterrupted run every resumed run is compared with: (final weights, metrics lines)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_args(tiny_pipeline_dir, prompt_file, out)) == 0
    return weights(out, EPOCHS), metrics(out)


def weights(out: Path, epoch: int) -> dict:
    return load_file(ckpt.checkpoint_path(out, epoch) / "trainable.safetensors")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_resumes_to_reference(out: Path, reference, *extra) -> None:
    """`diffrl train --resume` finishes the run; weights bit-identical, metrics without gaps or repeats."""
    assert main(["train", "--resume", str(out), *extra]) == 0
    ref_weights, ref_metrics = reference
    resumed = weights(out, EPOCHS)
    assert resumed.keys() == ref_weights.keys()
    for key in ref_weights:
        assert torch.equal(resumed[key], ref_weights[key]), key
    lines = metrics(out)
    assert [r["epoch"] for r in lines] == list(range(EPOCHS + 1))
    assert [r.get("reward_mean") for r in lines] == [r.get("reward_mean") for r in ref_metrics]
    assert not list((out / "checkpoints").glob("*.tmp"))


def start(args: list[str], code: str | None = None) -> subprocess.Popen:
    """`python -m diffrl.cli ARGS` (or a wrapper script `code` that ends by calling main) in a new process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = ["-c", code] if code else ["-m", "diffrl.cli"]
    return subprocess.Popen([sys.executable, *launcher, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, epoch: int = 1, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ckpt.checkpoint_path(out, epoch).is_dir():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def test_sigkill_at_a_random_point_then_resume_is_bit_identical(tiny_pipeline_dir, prompt_file, tmp_path, reference):
    seed = int(os.environ.get("DIFFRL_KILL_SEED", random.randrange(10**6)))  # printed: rerun with it to reproduce
    rng = random.Random(seed)
    after, delay = rng.randint(1, EPOCHS - 1), rng.uniform(0.0, 0.25)  # mid-epoch, mid-save or mid-log
    out = tmp_path / "run"
    proc = start(train_args(tiny_pipeline_dir, prompt_file, out))
    wait_for_checkpoint(proc, out, epoch=after)
    time.sleep(delay)
    alive = proc.poll() is None
    proc.kill()
    proc.wait()
    print(f"DIFFRL_KILL_SEED={seed}: SIGKILL {delay:.2f}s after checkpoint {after} "
          f"({'mid-run' if alive else 'after it ended'}); checkpoints {[p.name for p in ckpt.list_checkpoints(out)]}")
    assert_resumes_to_reference(out, reference)


KILL_DURING_SECOND_CHECKPOINT = """
import os, signal, sys
import diffrl.checkpoint as c
from diffrl.cli import main
real, calls = c.save_file, []
def save_file_then_die(tensors, path, *args, **kwargs):
    real(tensors, path, *args, **kwargs)
    calls.append(path)
    if len(calls) == 2:  # checkpoint 2: half of its first file is on disk when the process dies
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
c.save_file = save_file_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_in_the_middle_of_a_checkpoint_write(tiny_pipeline_dir, prompt_file, tmp_path, reference):
    out = tmp_path / "run"
    proc = start(train_args(tiny_pipeline_dir, prompt_file, out), code=KILL_DURING_SECOND_CHECKPOINT)
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert (out / "checkpoints" / "epoch_00002.tmp").is_dir()  # the torn write is there...
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["epoch_00001"]  # ...but never picked
    assert_resumes_to_reference(out, reference)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_exits_with_128_plus_signal_and_resumes(signum, tiny_pipeline_dir, prompt_file, tmp_path,
                                                                   reference):
    out = tmp_path / "run"
    # 40 epochs: the signal always lands mid-run, however late this (loaded) machine delivers it
    proc = start(train_args(tiny_pipeline_dir, prompt_file, out, "--epochs", "40"))
    wait_for_checkpoint(proc, out)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err[-2000:]
    newest = ckpt.list_checkpoints(out)[-1]
    assert err.strip().splitlines() == [
        f"diffrl: stopped: {signal.Signals(signum).name} after epoch {int(newest.name[6:])}; checkpoint {newest} "
        f"written; resume with: diffrl train --resume {out}"]  # the whole of stderr: one line
    assert int(newest.name[6:]) < EPOCHS
    assert_resumes_to_reference(out, reference, "--set", f"run.epochs={EPOCHS}")  # run.epochs may change on resume


def test_disk_full_during_checkpoint_keeps_the_previous_one(tiny_pipeline_dir, prompt_file, tmp_path, reference,
                                                            monkeypatch, capsys):
    real, calls = ckpt.save_file, []

    def full_disk(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"\0" * 64)  # a partial file, then the error
            raise OSError(28, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(ckpt, "save_file", full_disk)
    assert main(train_args(tiny_pipeline_dir, prompt_file, out)) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "could not write checkpoint" in err and "No space left on device" in err and "epoch_00001" in err
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["epoch_00001"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch_00001"]  # nothing half-written remains
    ckpt.load_checkpoint(ckpt.list_checkpoints(out)[-1])
    monkeypatch.setattr(ckpt, "save_file", real)  # space freed
    assert_resumes_to_reference(out, reference)


def test_disk_full_on_the_first_checkpoint_leaves_nothing_to_pick(tiny_pipeline_dir, prompt_file, tmp_path,
                                                                  monkeypatch, capsys):
    def full_disk(obj, path, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    out = tmp_path / "run"
    assert main(train_args(tiny_pipeline_dir, prompt_file, out, "--epochs", "1")) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint was written yet" in err
    assert ckpt.list_checkpoints(out) == [] and not list((out / "checkpoints").iterdir())


# ---------------------------------------------------------------- guards (faults injected in this process)


class NanGradient(torch.autograd.Function):
    """Adds 0 to the loss, NaN to its gradient: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def poison_loss(monkeypatch, from_epoch: int, kind: str = "loss") -> None:
    """From `from_epoch` (0-based) on, make the loss NaN with finite gradients (kind 'loss': a NaN constant
    is added) or keep the loss finite and make its gradients NaN (kind 'gradient')."""
    current = {"epoch": 0}
    real_epoch, real_loss = trainer.run_epoch, trainer.pair_loss

    def run_epoch(epoch, *args, **kwargs):
        current["epoch"] = epoch
        return real_epoch(epoch, *args, **kwargs)

    def pair_loss(*args, **kwargs):
        terms, kl = real_loss(*args, **kwargs)
        if current["epoch"] < from_epoch:
            return terms, kl
        bad = float("nan") if kind == "loss" else NanGradient.apply(terms.loss)
        return terms._replace(loss=terms.loss + bad), kl

    monkeypatch.setattr(trainer, "run_epoch", run_epoch)
    monkeypatch.setattr(trainer, "pair_loss", pair_loss)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_loss_or_gradient_skips_the_update(kind, tiny_pipeline_dir, prompt_file, tmp_path, monkeypatch):
    poison_loss(monkeypatch, from_epoch=0, kind=kind)
    out = tmp_path / "run"
    assert main(train_args(tiny_pipeline_dir, prompt_file, out, "--epochs", "1",
                           "--set", "train.max_consecutive_skips=10")) == 0
    record = metrics(out)[-1]
    assert record["skipped_updates_total"] == 2 and record["updates"] == 0  # loop: 2 minibatches, both skipped
    lora_b = [v for k, v in weights(out, 1).items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(v) == 0 for v in lora_b)  # still peft's zero init: never stepped


def test_consecutive_skips_halt_with_the_checkpoint_before_the_fault(tiny_pipeline_dir, prompt_file, tmp_path,
                                                                    monkeypatch, capsys, reference):
    poison_loss(monkeypatch, from_epoch=1)  # epoch 1 is clean; epochs 2 and 3 skip both their updates
    out = tmp_path / "run"
    assert main(train_args(tiny_pipeline_dir, prompt_file, out, "--set", "train.max_consecutive_skips=3")) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "4 updates in a row were skipped" in err and "epoch_00001" in err
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["epoch_00001"]  # epoch 2's save waited for a clean epoch
    assert metrics(out)[-1]["epoch"] == 3 and metrics(out)[-1]["skipped_updates_total"] == 4
    monkeypatch.undo()  # the cause is fixed
    assert_resumes_to_reference(out, reference)


REWARD_CALLS = []


def nan_after_first_epoch(images, prompts, metadata):
    """brightness for the first call, then NaN for every image (a reward server returning garbage)."""
    from diffrl.rewards import get_reward

    REWARD_CALLS.append(len(images))
    values = np.asarray(get_reward("brightness")(images, prompts, metadata), dtype=np.float64)
    return values if len(REWARD_CALLS) == 1 else np.full(len(images), np.nan)


def test_all_nan_reward_epochs_halt_the_run(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    REWARD_CALLS.clear()
    out = tmp_path / "run"
    code = main(train_args(tiny_pipeline_dir, prompt_file, out, "--reward", f"{__name__}:nan_after_first_epoch",
                           "--set", "train.max_consecutive_skips=2"))
    assert code == 3
    assert "2 updates in a row were skipped" in capsys.readouterr().err
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["epoch_00001"]
    last = metrics(out)[-1]
    assert last["epoch"] == 3 and last["nan_rewards_total"] == 8 and last["updates"] == 0


def collapsing_reward(images, prompts, metadata):
    """-1, -2, -3, ... per call: the held-out reward falls by 2 at every evaluation."""
    REWARD_CALLS.append(len(images))
    return np.full(len(images), -float(len(REWARD_CALLS)))


def test_early_stop_on_held_out_reward_collapse(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    REWARD_CALLS.clear()
    out = tmp_path / "run"
    code = main(train_args(tiny_pipeline_dir, prompt_file, out, "--reward", f"{__name__}:collapsing_reward",
                           "--set", f"run.eval_prompts={prompt_file}", "--set", "run.eval_every=1",
                           "--set", "run.eval_images_per_prompt=1", "--set", "run.early_stop_drop=3",
                           "--epochs", "6"))
    assert code == 0
    # evaluations: before -1 (best), epoch 1 -3 (2 below), epoch 2 -5 (4 below > 3): stop, with a checkpoint
    assert "early stop after epoch 2: held-out" in capsys.readouterr().out
    assert [r["epoch"] for r in metrics(out)] == [0, 1, 2]
    assert ckpt.list_checkpoints(out)[-1].name == "epoch_00002"
    # an early-stopped run is a finished run for `diffrl report` (it stopped on purpose), with a note why
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    assert "stopped early at epoch 2 (held-out" in printed and "not finished" not in printed
    assert (tmp_path / "rep" / "report.html").is_file()


def serve_brightness(port: int = 0):
    """The brightness reward behind a real HTTP server on 127.0.0.1 (diffrl serve-reward's server)."""
    import threading

    from diffrl.rewards import get_reward
    from diffrl.rewards.remote import make_server

    server = make_server(get_reward("brightness"), port=port, name="brightness")
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def stop(server) -> None:
    server.shutdown()
    server.server_close()


def test_reward_server_down_mid_run_halts_with_a_checkpoint_and_resumes(tiny_pipeline_dir, prompt_file, tmp_path,
                                                                       monkeypatch, capsys, reference):
    """The server stops after epoch 1; epoch 2's reward fails after the client's retries: exit 3, a checkpoint of
    the state before epoch 2 (run.save_every=3 had not saved one), the resume command. Served again on the same
    port, the resumed run ends bit-identical to the reference (local brightness: the same floats)."""
    server = serve_brightness()
    url, port = server.url, server.server_address[1]
    real_epoch = trainer.run_epoch

    def run_epoch(epoch, *args, **kwargs):
        if epoch == 1:
            stop(server)  # after the first epoch
        return real_epoch(epoch, *args, **kwargs)

    monkeypatch.setattr(trainer, "run_epoch", run_epoch)
    out = tmp_path / "run"
    try:
        code = main(train_args(tiny_pipeline_dir, prompt_file, out, "--reward", f"remote:{url}/",
                               "--set", "run.save_every=3"))
    finally:
        stop(server)
    err = capsys.readouterr().err.strip()
    assert code == 3 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"the reward failed in epoch 2: reward server {url} unreachable after 4 attempts" in err
    assert f"checkpoint {ckpt.checkpoint_path(out, 1)} written" in err and f"diffrl train --resume {out}" in err
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["epoch_00001"]
    assert metrics(out)[-1]["epoch"] == 1  # nothing of epoch 2 was logged

    monkeypatch.undo()
    server = serve_brightness(port)  # back, at the same address (the reward spec is part of the run)
    try:
        assert_resumes_to_reference(out, reference)
    finally:
        stop(server)


def test_bad_remote_reward_spec_is_still_bad_input(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_pipeline_dir, prompt_file, out, "--reward", "remote:localhost:8000")) == 2
    assert "must start with http://" in capsys.readouterr().err and not out.exists()
