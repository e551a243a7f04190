"""`diffrl compare` across interruptions, time-to-target readouts and the per-method learning-rate sweep."""
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import diffrl.trainer
from diffrl.cli import main
from diffrl.report import load_run, parse_target, target_summary, time_to_target, write_record

TINY = ["--set", "sample.num_steps=2", "--set", "train.min_noise_std=0", "--set", "sample.prompts_per_batch=2",
        "--set", "run.eval_images_per_prompt=1", "--set", "run.tensorboard=false", "--set", "run.progress=false",
        "--set", "run.threads=1", "--set", "run.save_every=1", "--reward", "brightness", "--k", "2"]


def _common(model, prompts, out, budget):
    return ["--model", str(model), "--prompts", str(prompts), "--set", f"run.eval_prompts={prompts}", "--seeds", "1",
            "--budget", str(budget), "--out", str(out), *TINY]


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def spy(monkeypatch):
    """Records (run_dir, resume) of every trainer.train call that compare makes."""
    calls, real = [], diffrl.trainer.train

    def train(config, resume=False):
        calls.append((config.run.out, resume))
        return real(config, resume=resume)

    monkeypatch.setattr(diffrl.trainer, "train", train)
    return calls


def test_interrupted_compare_resumes_and_skips_finished_runs(tiny_pipeline_dir, prompt_file, tmp_path, monkeypatch,
                                                             spy):
    out = tmp_path / "cmp"
    command = ["compare", "--algos", "loop,reinforce-loo", *_common(tiny_pipeline_dir, prompt_file, out, 8),
               "--set", "train.learning_rate=1e-2", "--target", "eval/brightness=-1", "--target", "eval/brightness=99"]
    loop, rloo = out / "runs" / "loop" / "seed0", out / "runs" / "reinforce-loo" / "seed0"

    # First call, killed during reinforce-loo's last epoch: its newest checkpoint is epoch 1 of 2.
    real = diffrl.trainer.train

    def killed(config, resume=False):
        real(config, resume=resume)
        if config.train.algo == "reinforce-loo":
            shutil.rmtree(rloo / "checkpoints" / "epoch_00002")
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(diffrl.trainer, "train", killed)
        assert main(command) == 130
    spy.clear()
    record = json.loads((out / "compare.json").read_text())
    assert record["methods"]["reinforce-loo"]["seeds"] == [0] and record["methods"]["reinforce-loo"]["runs"] == {}
    assert set(record["methods"]["loop"]["runs"]) == {"0"}
    assert record["local"]["run.progress"] == "false"  # what --resume needs besides the shared settings
    # A config.yaml from before a config key was added (the key takes its default) is still the same experiment.
    saved = yaml.safe_load((loop / "config.yaml").read_text())
    saved["b2"].popitem()
    (loop / "config.yaml").write_text(yaml.safe_dump(saved))
    loop_stamp = (loop / "metrics.jsonl").stat().st_mtime_ns
    before = _lines(rloo)
    assert [r["epoch"] for r in before] == [0, 1, 2]

    # --resume DIR with no other flag: loop is skipped, reinforce-loo continues from its epoch-1 checkpoint.
    assert main(["compare", "--resume", str(out)]) == 0
    assert spy == [(str(rloo), True)]
    assert (loop / "metrics.jsonl").stat().st_mtime_ns == loop_stamp
    after = _lines(rloo)
    assert [r["epoch"] for r in after] == [0, 1, 2]
    assert after[:2] == before[:2]  # epochs 0-1 kept, not retrained
    assert after[2]["reward_mean"] == before[2]["reward_mean"]  # resumed exactly where the checkpoint was taken
    record = json.loads((out / "compare.json").read_text())
    assert set(record["methods"]["reinforce-loo"]["runs"]) == {"0"}

    # The original command again: everything is finished, nothing trains; --target readouts in every output.
    assert main(command) == 0
    assert len(spy) == 1 and (loop / "metrics.jsonl").stat().st_mtime_ns == loop_stamp
    groups = json.loads((out / "report.json").read_text())["groups"]
    low, high = groups["loop"]["time_to_target"]
    assert (low["metric"], low["value"], low["reached"], low["n"]) == ("eval/brightness", -1, 1, 1)
    assert low["per_seed"] == [{"seed": 0, "images": 0, "seconds": 0.0}]  # the base model's evaluation already has it
    assert high["reached"] == 0 and high["per_seed"][0]["images"] is None
    assert record["summary"]["loop"]["time_to_target"][0]["reached"] == 1
    md = (out / "report.md").read_text()
    assert "images to eval/brightness >= -1 | seconds to eval/brightness >= -1 |" in md
    assert "not reached (0/1)" in md and "(1/1)" in md
    assert "seconds to eval/brightness &gt;= 99" in (out / "report.html").read_text()


def test_two_compares_on_one_out_keep_each_others_runs(tiny_pipeline_dir, prompt_file, tmp_path, monkeypatch):
    """One call per seed into one OUT (one per core): a call that read compare.json before the other recorded its
    run must not drop that run when it writes the file after its own."""
    out = tmp_path / "cmp"
    command = ["compare", "--algos", "loop", *_common(tiny_pipeline_dir, prompt_file, out, 4)]
    first, second = [*command, "--seeds", "0,"], [*command, "--seeds", "1,"]  # seed 0 only, seed 1 only
    real, nested = diffrl.trainer.train, []

    def interleaved(config, resume=False):
        real(config, resume=resume)
        if config.run.seed == 0 and not nested:  # the second call starts and ends while the first trains seed 0
            nested.append(1)
            assert main(second) == 0

    monkeypatch.setattr(diffrl.trainer, "train", interleaved)
    assert main(first) == 0
    record = json.loads((out / "compare.json").read_text())
    assert record["methods"]["loop"]["seeds"] == [0, 1]
    assert set(record["methods"]["loop"]["runs"]) == {"0", "1"}
    assert json.loads((out / "report.json").read_text())["groups"]["loop"]["seeds"] == [0, 1]


def test_time_to_target_by_hand():
    metrics = [{"epoch": 0, "eval/x": 0.2}, {"epoch": 1, "images_seen": 8, "sample_s": 1.0, "train_s": 0.5},
               {"epoch": 2, "images_seen": 16, "sample_s": 1.0, "train_s": 0.5, "eval/x": 0.9}]
    assert time_to_target(metrics, "eval/x", 0.5) == (16, 3.0)
    assert time_to_target(metrics, "eval/x", 0.2) == (0, 0.0)
    assert time_to_target(metrics, "eval/x", 0.95) is None and time_to_target(metrics, "eval/y", 0) is None
    runs = [{"config": {"run": {"seed": s}}, "metrics": m} for s, m in
            ((0, metrics), (1, [{**r, "eval/x": r["eval/x"] - 0.5} if "eval/x" in r else r for r in metrics]),
             (2, [{**r, "images_seen": 2 * r.get("images_seen", 0)} for r in metrics]))]
    t = target_summary(runs, "eval/x", 0.5)
    assert (t["reached"], t["n"]) == (2, 3) and t["images"]["values"] == [16, 32] and t["images"]["mean"] == 24
    # 80% PI of [16, 32]: 24 +- t_{0.9,1} 3.077684 x s 11.313708 x sqrt(3/2) = 24 +- 42.645
    assert t["images"]["pi_high"] == pytest.approx(24 + 3.077684 * 11.313708 * math.sqrt(1.5), abs=1e-3)
    assert t["images"]["pi_low"] == 0  # not 24 - 42.6: no run reaches a target before its first image
    assert t["per_seed"][1] == {"seed": 1, "images": None, "seconds": None}
    assert parse_target(" eval/shapes_success = 0.85") == ("eval/shapes_success", 0.85)


def test_lr_sweep_picks_per_method_and_is_resumable(tiny_pipeline_dir, prompt_file, tmp_path, spy):
    out = tmp_path / "sweep"
    command = ["compare", "--algos", "loop,ppo", "--lr-sweep", "1e-4,1e-2,1e-1",
               *_common(tiny_pipeline_dir, prompt_file, out, 4)]
    assert main(command) == 0
    assert len(spy) == 2 * 3 and not any(resume for _, resume in spy)  # seed 0 at the chosen rate is a sweep run
    record = json.loads((out / "compare.json").read_text())
    assert record["lr_sweep"] == {"values": [1e-4, 1e-2, 1e-1], "metric": "eval/brightness"}
    report = json.loads((out / "report.json").read_text())["lr_sweep"]
    for label in ("loop", "ppo"):
        entry = record["methods"][label]
        finals = {lr: run["final"]["eval/brightness"] for lr, run in entry["sweep"].items()}
        assert set(finals) == {"0.0001", "0.01", "0.1"}
        assert entry["sweep"]["0.01"]["run_dir"] == f"sweep/{label}/lr0.01"
        assert entry["learning_rate"] == float(max(finals, key=finals.get))
        assert report["methods"][label] == {"seed": 0, "chosen": entry["learning_rate"], "final": finals}
        seed0 = out / "runs" / label / "seed0"
        assert seed0.resolve() == (out / "sweep" / label / f"lr{entry['learning_rate']!r}").resolve()
        assert f"learning_rate: {entry['learning_rate']}" in (seed0 / "config.yaml").read_text()
        assert entry["runs"]["0"]["final"] == entry["sweep"][repr(entry["learning_rate"])]["final"]
    assert "Learning-rate sweep (final eval/brightness" in (out / "report.md").read_text()
    assert "Learning-rate sweep" in (out / "report.html").read_text()
    # Same command again: sweep and comparison runs are all finished, nothing trains.
    assert main(command) == 0 and len(spy) == 6
    assert main(["compare", "--resume", str(out)]) == 0 and len(spy) == 6
    # A second seed trains only itself, at the chosen rate.
    two_seeds = ["2" if flag == "--seeds" else arg for flag, arg in zip([None, *command], command)]
    assert main(two_seeds) == 0
    assert len(spy) == 8 and (out / "runs" / "ppo" / "seed1" / "config.yaml").is_file()
    # Run directories replaced by their records (config and metrics only): still finished, nothing trains.
    for run_dir in [*out.glob("sweep/*/*"), out / "runs" / "ppo" / "seed1"]:
        write_record(load_run(run_dir), tmp_path / "record")
        shutil.rmtree(run_dir)
        shutil.move(tmp_path / "record", run_dir)
    assert main(two_seeds) == 0 and len(spy) == 8


@pytest.mark.parametrize("argv, message", [
    (["--algos", "loop", "--budget", "8", "--target", "eval/x"], "--target expects METRIC=VALUE"),
    (["--algos", "loop", "--budget", "8", "--target", "brightness=0.5"], "--target expects METRIC=VALUE"),
    (["--algos", "loop", "--budget", "8", "--lr-sweep", "1e-3,3e-3"], "at least 3 distinct positive"),
    (["--algos", "loop:train.learning_rate=1", "--budget", "8", "--lr-sweep", "1,2,3"], "which --lr-sweep chooses"),
    (["--algos", "loop", "--budget", "8", "--lr-sweep", "1,2,3", "--set", "run.eval_prompts=none"],
     "picks by a held-out metric"),
    (["--algos", "loop", "--budget", "8", "--set", "run.early_stop_drop=0.1"], "drop run.early_stop_drop"),
    (["--resume", "{tmp}/cmp", "--budget", "8"], "drop --budget"),
    (["--resume", "{tmp}/cmp"], "no readable compare.json"),
    (["--budget", "8"], "compare needs --algos, --budget and --out"),
])
def test_bad_compare_input_is_one_line_exit_2(argv, message, tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--resume" not in argv and "--algos" in argv:
        argv += ["--out", str(tmp_path / "cmp"), "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file),
                 "--k", "2", "--set", "sample.prompts_per_batch=2"]
    assert main(["compare", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "cmp").exists()


def test_report_target_flag_is_checked(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--target", "eval/x=high"]) == 2
    assert "--target expects METRIC=VALUE" in capsys.readouterr().err


def test_ctrl_c_during_a_run_names_the_resume_command(tiny_pipeline_dir, prompt_file, tmp_path, monkeypatch, capsys):
    from diffrl.errors import RunInterrupted

    def interrupted(config, resume=False):  # what the trainer raises after SIGINT, once its checkpoint is written
        raise RunInterrupted("SIGINT after epoch 1", 2)

    monkeypatch.setattr(diffrl.trainer, "train", interrupted)
    out = tmp_path / "cmp"
    assert main(["compare", "--algos", "loop", *_common(tiny_pipeline_dir, prompt_file, out, 8)]) == 130
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"continue the comparison with: diffrl compare --resume {out}") and len(err.splitlines()) == 1
    assert json.loads((out / "compare.json").read_text())["methods"]["loop"]["seeds"] == [0]  # the spec is saved


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_saved_progress_records_are_not_git_ignored():
    # reproduce.sh save-progress writes records under docs/results/progress/NAME/{sweep,runs}/...; an ignore
    # pattern for the users' runs/ folder must not hide the records' runs/ (it once did: seeds 1-2 were lost)
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    record = "docs/results/progress/study/runs/loop/seed1/metrics.jsonl"
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", record], cwd=root).returncode == 0
    assert not ignored
    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", "runs/study/x"], cwd=root).returncode == 0
