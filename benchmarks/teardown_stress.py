"""How often a two-process CPU run hangs at its end: the distributed teardown under CPU contention.

Runs `tests/test_distributed.py`'s `[loop-text-encoder]` command (torchrun, 2 processes, gloo, a tiny random SD
pipeline, 2 epochs) ROUNDS times, with BUSY busy-loop processes beside it, and counts the rounds that did not exit
within TIMEOUT seconds. A hung round's workers are killed. docs/reliability.md ("Distributed") reports how often the
same command hung before and after `trainer.leave_together` released the DDP wrappers ahead of the process group.

    python benchmarks/teardown_stress.py --rounds 40 --busy 2
    python benchmarks/teardown_stress.py --rounds 40 --busy 2 --src /tmp/old_checkout/src   # another diffrl
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import WORDS  # noqa: E402  (the test suite's tiny-pipeline vocabulary)
from tests.torchrun_guard import kill_tree, two_process_train_command  # noqa: E402


def busy_loop() -> None:
    while True:
        pass


def one_round(work: Path, pipeline: Path, prompts: Path, src: Path | None, timeout: float) -> str:
    """'ok', 'failed (rc N)' or 'hung'."""
    cmd = two_process_train_command(pipeline, prompts, work / "run", "--algo", "loop",
                                    "--set", "model.train_text_encoder=true")  # the test's [loop-text-encoder]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(src or ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        proc.wait()
        return "hung"
    return "ok" if rc == 0 else f"failed (rc {rc})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--busy", type=int, default=2, help="busy-loop processes beside each round (CPU contention)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds after which a round counts as hung")
    ap.add_argument("--src", type=Path, help="the diffrl source tree to run (default: this checkout's src/)")
    args = ap.parse_args()

    from diffrl.models.tiny import build_tiny_pipeline

    busy = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    outcomes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipeline, prompts = tmp / "tiny", tmp / "prompts.txt"
        build_tiny_pipeline(pipeline, WORDS, sample_size=16, block_channels=(16, 32), cross_attention_dim=16,
                            vae_channels=(16, 32), seed=0)
        prompts.write_text("a red circle\na blue square\na green triangle\na yellow cat\n")
        for i in range(args.rounds):
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(dir=tmp) as work:
                outcome = one_round(Path(work), pipeline, prompts, args.src, args.timeout)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            print(f"round {i + 1}: {outcome} ({time.perf_counter() - start:.0f} s)", flush=True)
    for p in busy:
        p.terminate()
    print(", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())) + f" of {args.rounds} rounds")


if __name__ == "__main__":
    main()
