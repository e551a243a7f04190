"""Smoke run of benchmarks/bench_epoch.py: diffrl's side only (no TRL venv), tiny pipeline, no timing assertions."""
import json

from tests.conftest import BENCHMARKS, load_benchmark


def test_bench_epoch_diffrl_side_runs_on_the_tiny_pipeline(tiny_pipeline_dir, tmp_path):
    bench = load_benchmark("bench_epoch")
    out = tmp_path / "bench.json"
    assert bench.main(["--pipelines", str(tiny_pipeline_dir), "--impls", "diffrl", "--rounds", "1", "--warmup", "0",
                       "--steps", "2", "--k", "2", "--prompts-per-batch", "2", "--threads", "1",
                       "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["table"][tiny_pipeline_dir.name].values()
    assert row["images_per_epoch"] == 4 and row["updates_per_epoch"] == 2
    assert row["images_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert row["attn_processors"] == ["AttnProcessor2_0"]  # diffusers' SDPA processor is on
    assert "| diffrl |" in out.with_suffix(".md").read_text()


def test_sampling_chunks_times_each_chunk_size_and_checks_it_samples_the_same_images(capsys):
    bench = load_benchmark("sampling_chunks")
    bench.main(["--prompts", "2", "--rounds", "1", "--processes", "1", "--chunks", "all", "8"])  # 16 images
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1 process(es) x 1 thread(s), 16 images per batch, 1 round(s)"
    assert lines[1].startswith("chunk   all: median") and lines[1].endswith("bit-identical to all: True")
    assert lines[2].startswith("chunk     8: median")  # rounding may differ at 8 images per call: not asserted


def test_variant_parsing():
    bench = load_benchmark("bench_epoch")
    assert bench.parse_variant("base") == {}
    assert bench.parse_variant("chunk_size=8,channels_last") == {"chunk_size": 8, "channels_last": True}
    assert bench.parse_variant("chunk_size=all") == {"chunk_size": "all"}
    assert bench.parse_variant("chunk_size=16,train.gradient_checkpointing=true") == {
        "chunk_size": 16, "config": {"train.gradient_checkpointing": "true"}}


def test_time_to_target_readout_arithmetic_and_the_degenerate_case():
    """benchmarks/bench_ttt.py's readout on hand-made curves (no TRL, no training)."""
    import pytest

    ttt = load_benchmark("bench_ttt")
    m = ttt.METRIC

    def epoch(n, value):  # every epoch: 10 + 1 + 9 = 20 s of training, 256 images
        return {"epoch": n, "images_seen": 256 * n, "sample_s": 10.0, "reward_s": 1.0, "train_s": 9.0, m: value}

    # diffrl: 0.40 at 0 s, 0.45 at 20 s, 0.5 (summed in another order: one ulp low) at 40 s, 0.60 at 60 s
    diffrl = [{"epoch": 0, m: 0.40}, epoch(1, 0.45), epoch(2, 0.5 - 1e-16), epoch(3, 0.60)]
    points = lambda *pairs: [{"seconds": s, "value": v} for s, v in pairs]  # noqa: E731

    up = ttt.seed_readout(points((0, 0.40), (600, 0.52), (1200, 0.50)), diffrl, budget_s=1200)
    assert up["status"] == "reached" and up["target"] == 0.50 and up["diffrl_s"] == 40.0
    assert up["ratio"] == 40 / 1200 and up["trl_first_reached_final_s"] == 600
    assert up["best_gain"]["target"] == 0.52 and up["best_gain"]["diffrl_s"] == 60.0
    assert up["best_gain"]["ratio"] == 60 / 600
    capped = ttt.seed_readout(points((0, 0.40), (1200, 0.50)), diffrl, budget_s=30)  # 40 s is past the cap
    assert capped["ratio"] is None and capped["status"].startswith("diffrl did not reach")

    flat = ttt.seed_readout(points((0, 0.40), (600, 0.38), (1200, 0.40)), diffrl, budget_s=1200)
    assert flat["status"] == "TRL did not improve; ratio undefined" and flat["ratio"] is None
    assert flat["diffrl_s"] is None and flat["best_gain"]["ratio"] is None
    peaked = ttt.seed_readout(points((0, 0.40), (600, 0.45), (1200, 0.39)), diffrl, budget_s=1200)
    assert peaked["ratio"] is None and peaked["best_gain"]["diffrl_s"] == 20.0
    assert peaked["best_gain"]["ratio"] == 20 / 600

    other = ttt.seed_readout(points((0, 0.40), (1000, 0.50)), diffrl, budget_s=1200)  # ratio 40 / 1000
    summary = ttt.summarize_seeds({0: up, 1: other})
    # mean 0.036667; s = (0.04 - 0.033333) / sqrt(2); half = t_{0.9, 1} (3.0777) * s * sqrt(1 + 1/2)
    assert summary["ratio"]["mean"] == pytest.approx(0.0366667, abs=1e-6)
    assert summary["ratio"]["pi_high"] == pytest.approx(0.0366667 + 3.0777 * 0.0047140 * 1.2247449, abs=1e-4)
    assert summary["verdict"].startswith("met")
    short = ttt.seed_readout(points((0, 0.40), (50, 0.50)), diffrl, budget_s=1200)  # ratio 40 / 50
    wide = ttt.summarize_seeds({0: up, 1: short})["ratio"]  # mean 0.42, half-width 2.0: a ratio is never below 0
    assert wide["pi_low"] == 0.0 and wide["pi_high"] == pytest.approx(0.4166667 + 2.04, abs=0.01)
    # a seed where TRL did not improve is never read as a success, however fast the other seed was
    assert ttt.summarize_seeds({0: up, 1: flat})["verdict"].startswith("undefined")
    assert ttt.summarize_seeds({0: up, 1: capped})["verdict"].startswith("not met")

    defaults = {"seed": 0, "num_epochs": 100, "project_kwargs": {}, "mixed_precision": "fp16",
                "num_checkpoint_limit": 5, "sample_num_steps": 50}
    _, cpu = ttt.trl_settings(defaults, 0, "/p", cuda=False, overrides={})
    assert [a["key"] for a in cpu] == ["num_epochs", "project_kwargs", "mixed_precision"]
    kwargs, gpu = ttt.trl_settings(defaults, 1, "/p", cuda=True, overrides={"sample_num_steps": 10})
    assert [a["key"] for a in gpu] == ["seed", "num_epochs", "project_kwargs", "sample_num_steps"]
    assert kwargs["project_kwargs"]["total_limit"] == 5 and "mixed_precision" not in kwargs
    assert ttt.next_snapshot_due(125.0, 120.0) == 240.0 and ttt.next_snapshot_due(119.0, 120.0) == 120.0


def test_relation_use_probe_edits_only_what_it_names(monkeypatch):
    import sys

    from diffrl.shapes.world import prompt_set

    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the probe imports its sibling `probe`
    module = load_benchmark("relation_use")
    sys.modules.pop("probe", None)
    above = next(s for s in prompt_set("spatial", "train") if s.relation == "above")
    left = next(s for s in prompt_set("spatial", "train") if s.relation == "left of")
    texts = module.edited_texts([above, left])
    a, b = (o.phrase() for o in above.objects)
    assert texts["true"][0] == f"{a} above {b}"
    assert texts["inverted relation"][0] == f"{a} below {b}"
    assert texts["swapped subject/object"][0] == f"{b} above {a}"
    assert texts["inverted relation"][1] == texts["true"][1].replace("to the left of", "to the right of")
    assert texts["empty"] == ["", ""]


def test_gradient_snr_mirrored_noise_and_its_unbiased_baseline():
    """Antithetic groups: sample j and j + K/2 of every group draw opposite noise; the leave-pair-out baseline leaves
    out each sample's mirror, whose reward depends on its noise."""
    import sys

    import torch

    module = load_benchmark("gradient_snr")
    sys.modules.pop("probe", None)
    draw = module.mirrored_noise(torch.Generator().manual_seed(0), k=4)
    noise = draw((2 * 4, 3)).reshape(2, 4, 3)  # 2 prompts x K = 4
    assert torch.equal(noise[:, 2:], -noise[:, :2]) and not torch.equal(noise[:, 0], noise[:, 1])
    rewards = torch.tensor([[1.0, 0.0, 1.0, 1.0]])  # mirrors: (0, 2) and (1, 3)
    # sample 0 against r_1, r_3 (not its mirror r_2): 1 - 0.5; sample 1 against r_0, r_2: 0 - 1; sample 2 against
    # r_1, r_3: 1 - 0.5; sample 3 against r_0, r_2: 1 - 1
    assert torch.allclose(module.leave_pair_out(rewards), torch.tensor([[0.5, -1.0, 0.5, 0.0]]))


def test_gradient_snr_mirror_agreement_compares_mirror_pairs_with_the_groups_other_pairs():
    import sys

    import torch

    module = load_benchmark("gradient_snr")
    sys.modules.pop("probe", None)
    # K = 4, mirrors (0, 2) and (1, 3) agree; of the other pairs (0, 1), (0, 3), (1, 2), (2, 3) none does
    line = module.mirror_agreement(torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    assert line.startswith("equal rewards: mirror pairs 1.000, other pairs 0.000; deviation correlation +1.000 vs -1.000")


def test_merged_sampling_times_each_mode_and_reports_the_rounding(capsys):
    bench = load_benchmark("merged_sampling")
    bench.main(["--prompts", "2", "--rounds", "1", "--processes", "1"])  # 16 images
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1 process(es) x 1 thread(s), 16 images per batch, 1 round(s), adapters on to_k,")
    assert [line.split(":")[0].strip() for line in lines[1:4]] == ["adapters", "merged", "no adapters"]
    deviation = float(lines[4].split("at most ")[1].split(",")[0])
    assert deviation < 1e-4  # the same policy: rounding only
