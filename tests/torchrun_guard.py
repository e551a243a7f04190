"""Two-process torchrun launches for the distributed tests: a free port, and a hang guard that leaves no worker."""
import os
import signal
import socket
import subprocess

import psutil  # accelerate's own dependency
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
