"""Memory options: train.gradient_checkpointing, train.optimizer=adamw8bit, train.frozen_dtype (tiny pipelines, CPU)."""
import json

import pytest
import torch
from safetensors.torch import load_file

import diffrl.trainer
from diffrl.cli import main
from diffrl.models.pipeline import denoiser, frozen_modules

FAST = ["--reward", "brightness", "--epochs", "1", "--set", "sample.num_steps=3", "--set", "sample.prompts_per_batch=2",
        "--set", "sample.k=2", "--set", "run.eval_prompts=none", "--set", "run.progress=false",
        "--set", "run.tensorboard=false", "--set", "train.min_noise_std=0", "--set", "train.learning_rate=1e-2",
        "--set", "train.chunk_size=4"]


@pytest.fixture
def captured_runs(monkeypatch):
    """The RunState of every run started by the CLI in this test."""
    runs = []
    original = diffrl.trainer.start_run

    def recording(config, resume):
        run = original(config, resume)
        runs.append(run)
        return run

    monkeypatch.setattr(diffrl.trainer, "start_run", recording)
    return runs


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state; a test with another train.mixed_precision needs it cleared (and
    cleared again after, for the tests that follow in this process)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def train(model_dir, prompt_file, out, *extra):
    return main(["train", "--model", str(model_dir), "--prompts", str(prompt_file), "--out", str(out), *FAST, *extra])


def weights_and_loss(out):
    weights = load_file(out / "checkpoints" / "epoch_00001" / "trainable.safetensors")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return weights, records[-1]["loss"]


def sd3_dir_fixture(tmp_path_factory):
    from diffrl.models.tiny_sd3 import tiny_sd3_pipeline

    directory = tmp_path_factory.mktemp("tiny_sd3_mem")
    tiny_sd3_pipeline().save_pretrained(directory)
    prompts = directory / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    return directory, prompts


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return sd3_dir_fixture(tmp_path_factory)


@pytest.mark.parametrize("kind", ["unet", "sd3"])
def test_gradient_checkpointing_same_result_and_enabled(kind, tiny_pipeline_dir, prompt_file, sd3, tmp_path,
                                                        captured_runs):
    model_dir, prompts = (tiny_pipeline_dir, prompt_file) if kind == "unet" else sd3
    assert train(model_dir, prompts, tmp_path / "off") == 0
    assert train(model_dir, prompts, tmp_path / "on", "--set", "train.gradient_checkpointing=true") == 0
    off, on = (denoiser(run.pipe) for run in captured_runs)
    assert not off.is_gradient_checkpointing
    assert on.is_gradient_checkpointing
    # diffusers sets the flag (and the checkpoint function) on the modules whose forward checkpoints its blocks:
    # the UNet's down/mid/up blocks, the SD3 transformer itself
    flagged = [m for m in on.modules() if getattr(m, "gradient_checkpointing", False)]
    assert flagged and all(callable(getattr(m, "_gradient_checkpointing_func", None)) for m in flagged)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in off.modules())
    weights_off, loss_off = weights_and_loss(tmp_path / "off")
    weights_on, loss_on = weights_and_loss(tmp_path / "on")
    assert loss_on == pytest.approx(loss_off, rel=1e-4, abs=1e-7)
    assert weights_off.keys() == weights_on.keys()
    moved = [k for k in weights_off if "lora_B" in k and weights_off[k].abs().sum() > 0]
    assert moved, "LoRA weights did not train"
    for key in weights_off:
        torch.testing.assert_close(weights_on[key], weights_off[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bitsandbytes_installed", [False, True])
def test_adamw8bit_refused_without_bitsandbytes_or_cuda(bitsandbytes_installed, tiny_pipeline_dir, prompt_file,
                                                       tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "bitsandbytes":
            return object() if bitsandbytes_installed else None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "r"
    assert train(tiny_pipeline_dir, prompt_file, out, "--set", "train.optimizer=adamw8bit") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    if bitsandbytes_installed:
        assert "train.optimizer=adamw8bit needs a CUDA GPU" in err
    else:
        assert "train.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes); it runs on CUDA GPUs" in err
    assert not out.exists()


def test_unknown_optimizer_and_dtype_are_one_line_errors(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    for setting, message in [("train.optimizer=sgd", "train.optimizer must be adamw or adamw8bit"),
                             ("train.frozen_dtype=int8", "train.frozen_dtype must be auto, fp32, fp16, bf16")]:
        assert train(tiny_pipeline_dir, prompt_file, tmp_path / "r", "--set", setting) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_frozen_dtype_bf16_needs_matching_mixed_precision(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    assert train(tiny_pipeline_dir, prompt_file, tmp_path / "r", "--set", "train.frozen_dtype=bf16") == 2
    err = capsys.readouterr().err.strip()
    assert "train.frozen_dtype=bf16 needs train.mixed_precision=bf16" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_frozen_dtype_fp16_refused_on_cpu(tiny_pipeline_dir, prompt_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "r"
    assert train(tiny_pipeline_dir, prompt_file, out, "--set", "train.frozen_dtype=fp16",
                 "--set", "train.mixed_precision=fp16") == 2
    err = capsys.readouterr().err.strip()
    assert "train.frozen_dtype=fp16 needs a CUDA GPU" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_frozen_dtype_bf16_trains_on_cpu(tiny_pipeline_dir, prompt_file, tmp_path, captured_runs,
                                         fresh_accelerator_state):
    out = tmp_path / "bf16"
    assert train(tiny_pipeline_dir, prompt_file, out, "--set", "train.frozen_dtype=bf16",
                 "--set", "train.mixed_precision=bf16", "--set", "train.gradient_checkpointing=true") == 0
    (run,) = captured_runs
    for module in frozen_modules(run.pipe):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    unet = denoiser(run.pipe)
    base = {p.dtype for n, p in unet.named_parameters() if "lora_" not in n}
    assert base == {torch.bfloat16}
    assert run.trainable and all(p.dtype == torch.float32 for p in run.trainable.values())
    assert all(p.dtype == torch.float32 for p in run.optimizer.param_groups[0]["params"])
    weights, loss = weights_and_loss(out)
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
    assert loss == loss and any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)


def test_frozen_dtype_auto_is_fp32_on_cpu(tiny_pipeline_dir, prompt_file, tmp_path, captured_runs):
    assert train(tiny_pipeline_dir, prompt_file, tmp_path / "auto") == 0
    (run,) = captured_runs
    assert {p.dtype for m in frozen_modules(run.pipe) for p in m.parameters()} == {torch.float32}


def test_allow_tf32_sets_the_process_wide_torch_flags(tiny_pipeline_dir, prompt_file, tmp_path):
    """train.allow_tf32 reaches torch's TF32 switches (they only act on NVIDIA GPUs; set on CPU too)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        assert train(tiny_pipeline_dir, prompt_file, tmp_path / "off", "--set", "train.allow_tf32=false") == 0
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        assert train(tiny_pipeline_dir, prompt_file, tmp_path / "on") == 0  # the default
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
