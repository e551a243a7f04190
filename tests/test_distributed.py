"""Two CPU processes (torchrun + gloo): replicas stay identical, only rank 0 writes, no hang at save."""
import json
import os
import sys
from pathlib import Path

import pytest

from tests.torchrun_guard import free_port, run_torchrun


@pytest.mark.parametrize("algo, extra", [("ppo", []), ("loop", []),
                                         ("loop", ["--set", "model.train_text_encoder=true"])],  # its grads synced too
                         ids=["ppo", "loop", "loop-text-encoder"])
def test_two_process_run_keeps_replicas_identical(tiny_pipeline_dir, prompt_file, tmp_path, algo, extra):
    out = tmp_path / "dist"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    port = free_port()
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "diffrl.cli", "train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file),
           "--reward", "brightness", "--algo", algo, "--epochs", "2", "--out", str(out), "--k", "2",
           "--set", "sample.num_steps=2", "--set", "train.min_noise_std=0", "--set", "sample.prompts_per_batch=2", "--set", "run.eval_prompts=none",
           "--set", "run.progress=false", "--set", "run.save_every=1", "--set", "train.learning_rate=1e-2", *extra]
    # On a shared 2-core machine two processes took over 4 minutes once.
    result = run_torchrun(cmd, env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("diffrl: done") == 1  # only rank 0 speaks
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]  # logged once, by the main process
    assert all(r["images_seen"] == 8 * r["epoch"] for r in records[1:])  # 2 processes x 2 prompts x K=2
    assert all(r["dist/param_spread"] == 0.0 for r in records[1:])
    assert all(r["grad_norm"] > 0 for r in records[1:])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_00001", "epoch_00002"]
