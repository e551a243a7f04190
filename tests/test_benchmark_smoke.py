"""Smoke run of benchmarks/bench_epoch.py: diffrl's side only (no TRL venv), tiny pipeline, no timing assertions."""
import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_epoch.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_epoch", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_epoch_diffrl_side_runs_on_the_tiny_pipeline(tiny_pipeline_dir, tmp_path):
    bench = load_bench()
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


def test_variant_parsing():
    bench = load_bench()
    assert bench.parse_variant("base") == {}
    assert bench.parse_variant("chunk_size=8,channels_last") == {"chunk_size": 8, "channels_last": True}
    assert bench.parse_variant("chunk_size=all") == {"chunk_size": "all"}
