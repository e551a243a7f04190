"""`diffrl evaluate | compare | report` through the real CLI on the tiny pipeline, plus the interval math by hand."""
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffrl.cli import main
from diffrl.report import mean_ci, prediction_interval, t_quantile

TRAIN = ["--set", "sample.num_steps=2", "--set", "train.min_noise_std=0", "--set", "sample.prompts_per_batch=2", "--set", "run.eval_images_per_prompt=1",
         "--set", "run.tensorboard=false", "--set", "run.progress=false", "--set", "train.learning_rate=1e-2",
         "--set", "run.threads=1", "--reward", "brightness", "--k", "2"]
BASE_SCORE = {"a red circle": 1.0, "a blue square": 2.0, "a green triangle": 4.0, "a yellow cat": 5.0}


def category_prompts():
    """Two categories of two prompts each (used as --prompts tests.test_commands:category_prompts)."""
    return [(p, {"category": "color" if i < 2 else "shape"}) for i, p in enumerate(BASE_SCORE)]


def prompt_reward(images, prompts, metadata):
    """BASE_SCORE[prompt] -0.5 / +0.5 on alternate images: per-prompt means (2 images) are exactly BASE_SCORE."""
    return np.array([BASE_SCORE[p] + (0.5 if i % 2 else -0.5) for i, p in enumerate(prompts)])


# --------------------------------------------------------------------------- statistics by hand


def test_t_quantiles_match_tables():
    for p, df, expected in [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 3, 3.1824), (0.9, 1, 3.0777),
                            (0.9, 2, 1.8856), (0.9, 4, 1.5332), (0.975, 30, 2.0423)]:
        assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_mean_ci_and_prediction_interval_by_hand():
    # [1, 2, 4, 5]: mean 3, s = sqrt(10/3) = 1.825742, s/sqrt(4) = 0.912871, x t_{0.975,3} 3.182446 = 2.905163
    ci = mean_ci([1, 2, 4, 5, float("nan")])
    assert ci["n"] == 4 and ci["mean"] == 3.0
    assert ci["half_width"] == pytest.approx(2.905163, abs=1e-6)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((0.094837, 5.905163), abs=1e-6)
    # [1, 2, 3]: mean 2, s = 1, x t_{0.9,2} 1.885618 x sqrt(4/3) 1.154701 = 2.177324
    pi = prediction_interval([1, 2, 3])
    assert (pi["pi_low"], pi["pi_high"]) == pytest.approx((2 - 2.177324, 2 + 2.177324), abs=1e-6)
    assert math.isnan(mean_ci([7.0])["half_width"]) and math.isnan(prediction_interval([7.0])["pi_low"])


# --------------------------------------------------------------------------- evaluate


def _evaluate(model, out, *extra):
    return main(["evaluate", "--model", str(model), "--prompts", "tests.test_commands:category_prompts",
                 "--reward", "tests.test_commands:prompt_reward", "--images-per-prompt", "2", "--steps", "2",
                 "--threads", "1", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def evaluated(tiny_pipeline_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert _evaluate(tiny_pipeline_dir, root / name, "--seed", seed) == 0
    return root


def test_evaluate_json_schema_and_ci(evaluated):
    result = json.loads((evaluated / "a" / "results.json").read_text())
    assert result["schema"] == "diffrl.evaluate/1"
    assert (result["num_prompts"], result["images_per_prompt"], result["seed"]) == (4, 2, 3)
    assert result["sampling"]["num_steps"] == 2 and result["ci"]["unit"] == "prompt"
    stats = result["metrics"]["tests.test_commands:prompt_reward"]
    # Per-prompt means 1, 2, 4, 5 (the +-0.5 cancels): over prompts n = 4, not over the 8 images.
    assert stats["overall"]["n"] == 4 and stats["overall"]["mean"] == pytest.approx(3.0)
    assert stats["overall"]["half_width"] == pytest.approx(2.905163, abs=1e-6)
    # color: [1, 2] -> mean 1.5, s = 0.707107, s/sqrt(2) = 0.5, x t_{0.975,1} 12.706205 = 6.353102
    color, shape = stats["categories"]["color"], stats["categories"]["shape"]
    assert (color["mean"], shape["mean"]) == pytest.approx((1.5, 4.5))
    assert color["half_width"] == pytest.approx(6.353102, abs=1e-6) == shape["half_width"]
    assert [p["scores"]["tests.test_commands:prompt_reward"] for p in result["per_prompt"]] == [1, 2, 4, 5]
    assert (evaluated / "a" / "grid.png").is_file()


def test_evaluate_same_seed_same_images(evaluated):
    a, b, c = ((evaluated / n / "grid.png").read_bytes() for n in "abc")
    assert a == b and a != c


def test_evaluate_eta_zero_is_plain_diffusers_ddim(tiny_pipeline_dir, tmp_path, monkeypatch):
    """--eta 0 is StableDiffusionPipeline's sampler with a DDIMScheduler at its default eta 0: deterministic, and from
    the same initial latents (passed as latents=) the same final latents and images. Its log-probs are never computed,
    so no NaN/inf warning either."""
    import warnings

    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    import diffrl.evaluation
    from diffrl.sampling import sample_trajectories

    sampled = []  # the trajectories `evaluate` draws, to read x_T and x_0 from

    def recorded(*args, **kwargs):
        sampled.append(sample_trajectories(*args, **kwargs))
        return sampled[-1]

    monkeypatch.setattr(diffrl.evaluation, "sample_trajectories", recorded)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for name in "ab":
            assert _evaluate(tiny_pipeline_dir, tmp_path / name, "--eta", "0", "--steps", "4", "--guidance", "3") == 0
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in "ab")
    assert a["sampling"] == {"num_steps": 4, "guidance_scale": 3.0, "eta": 0.0}
    assert {**a, "wall_s": 0} == {**b, "wall_s": 0}
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()
    first, second = sampled
    assert torch.equal(first.latents, second.latents) and np.array_equal(first.images, second.images)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    plain = dict(prompt=[p for p in BASE_SCORE for _ in range(2)], latents=first.latents[:, 0], num_inference_steps=4,
                 guidance_scale=3.0, eta=0.0, height=16, width=16)  # prompt by prompt, as evaluate lays them out
    torch.testing.assert_close(pipe(**plain, output_type="latent").images, first.latents[:, -1], rtol=1e-5, atol=1e-5)
    images = (pipe(**plain, output_type="np").images * 255).round()
    assert np.abs(images - first.images).max() <= 1  # uint8 rounding of the same floats


# --------------------------------------------------------------------------- compare and report


@pytest.fixture(scope="module")
def compared(tiny_pipeline_dir, prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    common = ["--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--set",
              f"run.eval_prompts={prompt_file}", "--seeds", "2", "--budget", "7", "--out", str(out), *TRAIN]
    assert main(["compare", "--algos", "loop,reinforce-loo", *common]) == 0
    first = json.loads((out / "compare.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/metrics.jsonl")}
    assert main(["compare", "--algos", "loop,reinforce-loo,ppo", *common]) == 0
    return out, first, stamps


def test_compare_writes_json_figures_html(compared):
    out, first, _ = compared
    assert first["schema"] == "diffrl.compare/1" and first["budget"] == 7
    assert set(first["methods"]) == {"loop", "reinforce-loo"}
    loop = first["methods"]["loop"]
    assert (loop["images_per_epoch"], loop["epochs"]) == (4, 2)  # ceil(7 / 4)
    for seed in ("0", "1"):
        run = loop["runs"][seed]
        assert run["images"] == 8 and run["wall_s"] > 0 and run["train_s"] > 0
        assert run["run_dir"] == f"runs/loop/seed{seed}"  # relative: the directory can move
        assert "eval/brightness" in run["final"]
    final = first["summary"]["loop"]["final"]["eval/brightness"]
    assert final["n"] == 2 and final["pi_low"] <= final["mean"] <= final["pi_high"]
    for name in ("reward_vs_images.png", "reward_vs_wallclock.png", "report.html", "report.json"):
        assert (out / name).is_file(), name
    assert "before_after.png" in (out / "report.html").read_text()


def test_second_compare_reuses_finished_runs(compared, capsys):
    out, _, stamps = compared
    assert len(stamps) == 4 and all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # not retrained
    record = json.loads((out / "compare.json").read_text())
    assert set(record["methods"]) == {"loop", "reinforce-loo", "ppo"}
    assert set(record["methods"]["ppo"]["runs"]) == {"0", "1"}
    assert record["methods"]["loop"]["runs"]["0"]["wall_s"] > 0  # kept from the first call
    assert set(json.loads((out / "report.json").read_text())["groups"]) == {"loop", "reinforce-loo", "ppo"}
    # Other shared settings into the same directory would mix experiments: refused before anything runs.
    assert main(["compare", "--algos", "grpo", "--budget", "9", "--out", str(out), "--k", "2"]) == 2
    assert "was made with other --budget" in capsys.readouterr().err
    assert not (out / "runs" / "grpo").exists()


def test_report_rebuilds_from_run_dirs(compared, tmp_path):
    out, _, _ = compared
    runs = sorted(str(p) for p in out.glob("runs/*/seed*"))
    assert main(["report", *runs, "--out", str(tmp_path / "rep")]) == 0
    groups = json.loads((tmp_path / "rep" / "report.json").read_text())["groups"]
    assert set(groups) == {"loop K=2", "reinforce-loo K=2", "ppo K=2"}
    assert groups["ppo K=2"]["seeds"] == [0, 1] and groups["ppo K=2"]["images"] == [8, 8]
    curve = groups["loop K=2"]["curves"]["eval/brightness"]
    assert [p["epoch"] for p in curve] == [0, 2] and [p["images"] for p in curve] == [0, 8]
    assert (tmp_path / "rep" / "reward_vs_images.png").is_file() and (tmp_path / "rep" / "report.html").is_file()
    # change = last - first held-out value of each seed (paired: every run starts from the same base images)
    per_seed = [json.loads(line) for d in groups["loop K=2"]["runs"] for line in open(f"{d}/metrics.jsonl")]
    evals = [r["eval/brightness"] for r in per_seed if "eval/brightness" in r]
    expected = ((evals[1] - evals[0]) + (evals[3] - evals[2])) / 2
    assert math.isclose(groups["loop K=2"]["change"]["eval/brightness"]["mean"], expected, rel_tol=1e-9)
    table = (tmp_path / "rep" / "report.md").read_text().splitlines()
    assert table[0].startswith("| method | seeds | images | train s | reward_mean | eval/brightness |")
    assert table[0].endswith("eval/brightness change |") and len(table) == 2 + len(groups)


def test_report_keeps_records_that_rebuild_and_extend_it_without_the_run_dirs(compared, tmp_path):
    out, _, _ = compared
    copies = tmp_path / "copies"  # run directories that will be gone, as after a session ends
    shutil.copytree(out / "runs", copies)
    runs = sorted(copies.glob("*/seed*"))
    rep = tmp_path / "rep"
    assert main(["report", *map(str, runs), "--out", str(rep)]) == 0
    first = json.loads((rep / "report.json").read_text())["groups"]
    records = sorted(rep.glob("records/*/*"))
    assert [r.relative_to(rep / "records") for r in records] == [r.relative_to(copies) for r in runs]
    assert {p.name for p in records[0].iterdir()} == {"config.yaml", "metrics.jsonl", "record.json"}
    shutil.rmtree(copies)
    # Rebuilt from the records alone: the same groups, curves and final values.
    assert main(["report", *map(str, records), "--out", str(rep)]) == 0
    again = json.loads((rep / "report.json").read_text())["groups"]
    for label, group in first.items():
        assert again[label]["seeds"] == group["seeds"] and again[label]["curves"] == group["curves"]
        assert again[label]["final"] == group["final"]
    # A report over some of them (or some plus new runs) keeps exactly its own runs' records.
    kept = [r for r in records if r.parent.name == "ppo"]
    assert main(["report", *map(str, kept), "--out", str(rep)]) == 0
    assert sorted(rep.glob("records/*/*")) == kept
    assert set(json.loads((rep / "report.json").read_text())["groups"]) == {"ppo K=2"}


def test_report_names_what_differs_beyond_the_seed(compared, tmp_path, capsys):
    out, _, _ = compared
    copies = [tmp_path / f"seed{s}" for s in (0, 1)]
    for seed, copy in zip((0, 1), copies):
        shutil.copytree(out / "runs" / "ppo" / f"seed{seed}", copy)
    first, second = (c / "config.yaml" for c in copies)
    assert "  step_weight_power: 0.0\n" in first.read_text() and "chunk_size: null" in second.read_text()
    first.write_text(first.read_text().replace("  step_weight_power: 0.0\n", ""))  # a key added after the run
    second.write_text(second.read_text().replace("  chunk_size: null\n  clip_range:", "  chunk_size: 8\n  clip_range:"))
    capsys.readouterr()
    assert main(["report", *map(str, copies), "--out", str(tmp_path / "rep")]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "more than their seed" in line]
    assert len(notes) == 1 and notes[0].endswith("differ in more than their seed: train.chunk_size")


def test_report_splits_groups_by_a_config_key(compared, tmp_path, capsys):
    out, _, _ = compared  # a learning-rate sweep's runs share algorithm, K and seed: --split-by keeps them apart
    copies = [tmp_path / "sweep" / "ppo" / f"lr{lr}" for lr in ("0.001", "0.003")]
    for lr, copy in zip(("0.001", "0.003"), copies):
        shutil.copytree(out / "runs" / "ppo" / "seed0", copy)
        config = copy / "config.yaml"
        text = config.read_text()
        assert "  learning_rate: " in text
        config.write_text(re.sub(r"  learning_rate: .*", f"  learning_rate: {lr}", text))
    rep = tmp_path / "rep"
    assert main(["report", *map(str, copies), "--out", str(rep)]) == 0
    assert set(json.loads((rep / "report.json").read_text())["groups"]) == {"ppo K=2"}  # one group of two "seeds"
    assert main(["report", *map(str, copies), "--split-by", "train.learning_rate", "--out", str(rep)]) == 0
    groups = json.loads((rep / "report.json").read_text())["groups"]
    assert set(groups) == {"ppo K=2 train.learning_rate=0.001", "ppo K=2 train.learning_rate=0.003"}
    assert sorted(p.relative_to(rep / "records") for p in rep.glob("records/*/*")) == [
        Path("ppo/lr0.001"), Path("ppo/lr0.003")]
    capsys.readouterr()
    assert main(["report", *map(str, copies), "--split-by", "train.nope", "--out", str(rep)]) == 2
    assert "--split-by train.nope" in capsys.readouterr().err


def test_lora_changes_images_and_run_defaults(compared, tiny_pipeline_dir, tmp_path):
    out, _, _ = compared
    run = out / "runs" / "loop" / "seed0"
    common = ["--prompts", "tests.test_commands:category_prompts", "--reward", "brightness", "--threads", "1"]
    assert main(["evaluate", "--model", str(tiny_pipeline_dir), "--steps", "2", "--out", str(tmp_path / "base"),
                 *common]) == 0
    assert main(["evaluate", "--lora", str(run), "--out", str(tmp_path / "tuned"), *common]) == 0
    tuned = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert tuned["model"] == str(tiny_pipeline_dir) and tuned["sampling"]["num_steps"] == 2  # from the run's config
    assert tuned["images_per_prompt"] == 1 and tuned["weights"].startswith("lora:")
    assert (tmp_path / "base" / "grid.png").read_bytes() != (tmp_path / "tuned" / "grid.png").read_bytes()


def test_evaluate_paired_change_against_a_baseline(compared, tiny_pipeline_dir, tmp_path, capsys):
    out, _, _ = compared
    run = out / "runs" / "loop" / "seed0"
    common = ["--prompts", "tests.test_commands:category_prompts", "--reward", "brightness", "--threads", "1",
              "--images-per-prompt", "1"]
    assert main(["evaluate", "--model", str(tiny_pipeline_dir), "--steps", "2", "--out", str(tmp_path / "base"),
                 *common]) == 0
    base_json = tmp_path / "base" / "results.json"
    assert main(["evaluate", "--lora", str(run), "--out", str(tmp_path / "tuned"), "--baseline", str(base_json),
                 *common]) == 0
    base, tuned = json.loads(base_json.read_text()), json.loads((tmp_path / "tuned" / "results.json").read_text())
    change = tuned["baseline"]["paired_change"]["brightness"]
    expected = tuned["metrics"]["brightness"]["overall"]["mean"] - base["metrics"]["brightness"]["overall"]["mean"]
    assert math.isclose(change["mean"], expected, abs_tol=1e-9)
    assert change["better"] + change["worse"] + change["equal"] == tuned["num_prompts"]
    assert "paired over prompts" in capsys.readouterr().out
    # Another seed would not be a paired comparison: refused before anything is generated.
    assert main(["evaluate", "--lora", str(run), "--out", str(tmp_path / "x"), "--baseline", str(base_json),
                 "--seed", "1", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert "differs in --seed" in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()


def test_evaluate_full_finetune_run_loads_its_unet(tiny_pipeline_dir, prompt_file, tmp_path):
    from diffrl import load_config, train

    run = tmp_path / "full"
    overrides = {"model.pretrained": str(tiny_pipeline_dir), "model.lora": "false", "run.prompts": str(prompt_file),
                 "run.eval_prompts": "none", "run.epochs": "1", "run.out": str(run), "run.reward": "brightness",
                 "sample.num_steps": "2", "train.min_noise_std": "0", "sample.k": "2", "sample.prompts_per_batch": "2", "run.progress": "false",
                 "run.tensorboard": "false", "run.threads": "1", "train.learning_rate": "1e-2"}
    train(load_config(overrides=overrides))
    assert main(["evaluate", "--lora", str(run), "--prompts", str(prompt_file), "--images-per-prompt", "1",
                 "--threads", "1", "--out", str(tmp_path / "ev")]) == 0
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert result["weights"] == f"unet:{run / 'unet'}" and list(result["metrics"]) == ["brightness"]


@pytest.mark.parametrize("argv, message", [
    (["compare", "--algos", "loop,nope", "--budget", "8"], "unknown algorithm 'nope' in --algos"),
    (["compare", "--algos", "loop", "--budget", "3"], "smaller than one epoch"),
    (["compare", "--algos", "loop:k", "--budget", "8"], "expected ALGO:k=N"),
    (["report", "{tmp}"], "is not a diffrl run directory"),
    (["evaluate", "--lora", "{tmp}"], "not a run directory"),
    (["evaluate", "--eta", "-1"], "--eta, --flow-noise-level and --guidance >= 0"),
    (["evaluate", "--flow-noise-level", "-1"], "--eta, --flow-noise-level and --guidance >= 0"),
])
def test_bad_input_is_one_line_exit_2(argv, message, tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "compare":
        argv += ["--out", str(tmp_path / "cmp"), "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file),
                 "--k", "2", "--set", "sample.prompts_per_batch=2"]
    elif argv[0] == "evaluate":
        argv += ["--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--reward", "brightness"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "cmp").exists()
