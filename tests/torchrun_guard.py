"""Two-process torchrun launches for the distributed tests: a free port, and a hang guard that leaves no worker."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil  # accelerate's own dependency
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_process_train_command(pipeline: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    """torchrun of `diffrl train` on 2 processes (a free port): the tiny pipeline, the brightness reward, 2 epochs of
    2 prompts x K = 2 per process, a checkpoint each epoch; `extra` adds arguments (--algo, --set ...)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()),
            "-m", "diffrl.cli", "train", "--model", str(pipeline), "--prompts", str(prompts),
            "--reward", "brightness", "--epochs", "2", "--out", str(out), "--k", "2",
            "--set", "sample.num_steps=2", "--set", "train.min_noise_std=0", "--set", "sample.prompts_per_batch=2",
            "--set", "run.eval_prompts=none", "--set", "run.progress=false", "--set", "run.save_every=1",
            "--set", "train.learning_rate=1e-2", *extra]


def run_torchrun(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group; past `timeout` kill it and its workers (`kill_tree`) and fail the test
    with what it printed. A hang guard, not a timing check."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{cmd[0]} did not finish in {timeout} s; its output:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a torchrun started with start_new_session and every worker it spawned. The workers run in sessions of
    their own (torch elastic starts them so), so killing torchrun's process group alone leaves them running."""
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for worker in workers:
        try:
            worker.kill()
        except psutil.NoSuchProcess:
            pass
