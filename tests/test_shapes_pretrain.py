"""ShapesWorld pretraining: a seconds-long smoke run, determinism, and the shipped model."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffrl.errors import DiffrlError
from diffrl.shapes import BUILTIN_MODELS
from diffrl.core.ddim import noised_with_target
from diffrl.shapes.pretrain import PretrainConfig, draw_timesteps, loss_weights, pretrain, zero_terminal_snr_scheduler

TINY = dict(vae_channels=(8, 8, 8), block_channels=(8, 16, 16), text_dim=8, text_layers=1,
            vae_steps=2, vae_batch=4, unet_steps=3, unet_batch=4, warmup=1, save_every=0)


def load(directory):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(directory, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt: str) -> np.ndarray:
    return pipe([prompt], num_inference_steps=2, guidance_scale=3.0, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def test_tiny_pretrain_writes_a_loadable_pipeline(tmp_path):
    pretrain(tmp_path, PretrainConfig(**TINY), progress=False, threads=1)
    assert (tmp_path / "pretrain_config.json").exists()
    pipe = load(tmp_path)
    assert pipe.vae.config.scaling_factor != 0.18215  # fitted, not the SD default
    images = generate(pipe, "an orange triangle and a blue circle")  # unseen words tokenize as words
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_v_loss_weighting_is_the_v_prediction_loss_of_the_same_epsilon_model():
    alpha_bar = torch.tensor([1.0, 0.5, 0.01])
    assert torch.equal(loss_weights(alpha_bar, "epsilon"), torch.ones(3))
    assert torch.allclose(loss_weights(alpha_bar, "v"), torch.tensor([1.0, 2.0, 100.0]))
    # ||v - v_hat||^2, with v_hat built from the model's eps_hat through its x0 estimate, equals weight * ||eps - eps_hat||^2
    g = torch.Generator().manual_seed(0)
    x0, eps, eps_hat = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    a = alpha_bar.view(-1, 1, 1, 1)
    zt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    x0_hat = (zt - (1 - a).sqrt() * eps_hat) / a.sqrt()
    v, v_hat = a.sqrt() * eps - (1 - a).sqrt() * x0, a.sqrt() * eps_hat - (1 - a).sqrt() * x0_hat
    eps_mse = ((eps - eps_hat) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(((v - v_hat) ** 2).mean(dim=(1, 2, 3)), loss_weights(alpha_bar, "v") * eps_mse, rtol=1e-4)
    with pytest.raises(ValueError, match="loss_weighting"):
        loss_weights(alpha_bar, "x0")


def test_zero_terminal_snr_pretraining_regresses_on_v_and_saves_a_plain_pipeline(tmp_path):
    pretrain(tmp_path, PretrainConfig(**TINY, zero_terminal_snr=True), progress=False, threads=1)
    pipe = load(tmp_path)
    config = pipe.scheduler.config
    assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
    assert config.timestep_spacing == "trailing" and pipe.scheduler.alphas_cumprod[-1] == 0
    assert np.isfinite(generate(pipe, "a red circle above a blue square")).all()
    # the target is diffusers' own velocity; at alpha_bar = 0 it is -z0
    scheduler = zero_terminal_snr_scheduler(pipe.scheduler)
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    noised, target = noised_with_target(z0, eps, scheduler.alphas_cumprod[t].view(-1, 1, 1, 1), "v_prediction")
    torch.testing.assert_close(target, scheduler.get_velocity(z0, eps, t))
    torch.testing.assert_close(noised, scheduler.add_noise(z0, eps, t))
    torch.testing.assert_close(target[2], -z0[2])
    assert torch.equal(noised_with_target(z0, eps, scheduler.alphas_cumprod[t].view(-1, 1, 1, 1), "epsilon")[1], eps)
    with pytest.raises(ValueError, match="loss_weighting"):
        pretrain(tmp_path / "bad", PretrainConfig(**TINY, zero_terminal_snr=True, loss_weighting="v"), progress=False)


def test_init_continues_a_saved_pipeline_keeping_its_autoencoder_and_schedule(tmp_path):
    pretrain(tmp_path / "base", PretrainConfig(**TINY, zero_terminal_snr=True), progress=False, threads=1)
    phase = PretrainConfig(**{**TINY, "vae_steps": 50}, init=str(tmp_path / "base"), high_noise_fraction=1.0,
                           category_weights={"single": 0.0, "color_binding": 0.0, "counting": 0.0, "spatial": 1.0})
    pretrain(tmp_path / "phase", phase, progress=False, threads=1)
    base, cont = load(tmp_path / "base"), load(tmp_path / "phase")
    assert cont.scheduler.config.rescale_betas_zero_snr and cont.scheduler.config.prediction_type == "v_prediction"
    assert cont.vae.config.scaling_factor == base.vae.config.scaling_factor
    for name in ("vae", "unet", "text_encoder"):  # the autoencoder is kept; the denoiser (started from base) moved
        same = all(torch.equal(a, b) for a, b in zip(getattr(base, name).state_dict().values(),
                                                      getattr(cont, name).state_dict().values()))
        assert same == (name == "vae"), name
    drift = max((a - b).abs().max().item() for a, b in zip(base.unet.state_dict().values(),
                                                           cont.unet.state_dict().values()))
    assert drift < 0.02  # three small AdamW steps from the base's weights, not a fresh random UNet
    with pytest.raises(ValueError, match="init"):
        PretrainConfig(init=str(tmp_path / "base"), zero_terminal_snr=True).check()
    with pytest.raises(ValueError, match="model_index"):
        PretrainConfig(init=str(tmp_path / "missing")).check()


def test_pretrain_is_deterministic(tmp_path):
    for run in ("a", "b"):
        pretrain(tmp_path / run, PretrainConfig(**TINY), progress=False, threads=1)
    for part in ("unet", "vae", "text_encoder"):
        (a,), (b,) = ((tmp_path / r / part).glob("*.safetensors") for r in ("a", "b"))
        wa, wb = load_file(a), load_file(b)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), part


def test_stop_after_gives_the_model_the_full_run_saves_at_that_step(tmp_path, monkeypatch):
    import shutil

    from diffrl.shapes import pretrain as module

    save = module.save_with_ema

    def save_and_keep(pipe, params, ema, out_dir):  # the full run's step-2 save, kept before step 4 overwrites it
        save(pipe, params, ema, out_dir)
        shutil.copytree(out_dir, tmp_path / "saved_at_2")

    monkeypatch.setattr(module, "save_with_ema", save_and_keep)
    pretrain(tmp_path / "full", PretrainConfig(**{**TINY, "unet_steps": 4, "save_every": 2}), progress=False, threads=1)
    monkeypatch.setattr(module, "save_with_ema", save)
    pretrain(tmp_path / "stopped", PretrainConfig(**{**TINY, "unet_steps": 4, "stop_after": 2}), progress=False,
             threads=1)
    for part in ("unet", "text_encoder"):
        (a,), (b,), (c,) = ((tmp_path / r / part).glob("*.safetensors") for r in ("saved_at_2", "stopped", "full"))
        saved, stopped, full = load_file(a), load_file(b), load_file(c)
        assert all(torch.equal(saved[k], stopped[k]) for k in saved), part
        assert not all(torch.equal(full[k], stopped[k]) for k in full), part  # steps 3-4 moved the full run on
    with pytest.raises(ValueError, match="stop_after"):
        PretrainConfig(unet_steps=4, stop_after=5).check()
    with pytest.raises(ValueError, match="stop_after"):
        PretrainConfig(stop_after=0).check()


@pytest.mark.parametrize("name", ["shapes", "shapes-spatial", "shapes-spatial2"])
def test_builtin_models_resolve_and_generate(name):
    from diffrl.models.pipeline import resolve_model

    path = resolve_model(f"builtin:{name}")
    assert path == str(BUILTIN_MODELS[name])
    images = generate(load(path), "a red circle above a blue square")
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_an_unknown_builtin_model_names_the_available_ones():
    from diffrl.models.pipeline import resolve_model

    with pytest.raises(DiffrlError, match="unknown built-in model 'builtin:nope'; available: builtin:shapes, "
                                          "builtin:shapes-spatial, builtin:shapes-spatial2"):
        resolve_model("builtin:nope")


def test_every_prompt_word_is_one_token(tmp_path):
    """The word tokenizer must not split 'orange' because 'and' taught it the merge 'a n'."""
    from diffrl.models.tiny import write_word_tokenizer
    from diffrl.shapes.pretrain import vocabulary

    words = vocabulary()
    tokenizer = write_word_tokenizer(words, tmp_path)
    assert {"orange", "an", "and", "triangles"} <= set(words)
    for word in words:
        assert len(tokenizer(word).input_ids) == 3, word  # <start> word <end>
    assert len(tokenizer("an orange triangle to the right of a yellow square").input_ids) == 12


def test_cli_report_on_a_tiny_model(tmp_path, capsys):
    import argparse
    import json

    from diffrl.shapes.cli import register

    pretrain(tmp_path / "model", PretrainConfig(**TINY), progress=False, threads=1)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["shapes", "report", "--model", str(tmp_path / "model"), "--images-per-prompt", "1",
                              "--max-prompts", "1", "--steps", "2", "--out", str(tmp_path / "report")])
    assert args.func(args) == 0
    table = json.loads((tmp_path / "report" / "table.json").read_text())["table"]
    assert set(table) == {"single", "color_binding", "counting", "spatial", "unseen"}
    assert (tmp_path / "report" / "grid.png").exists() and "unseen" in capsys.readouterr().out
    pretrain_args = parser.parse_args(["shapes", "pretrain", "--out", "x", "--unet-steps", "5", "--threads", "1"])
    assert pretrain_args.unet_steps == 5 and callable(pretrain_args.func) and pretrain_args.loss_weighting == "epsilon"
    assert parser.parse_args(["shapes", "pretrain", "--out", "x", "--loss-weighting", "v"]).loss_weighting == "v"
    assert parser.parse_args(["shapes", "pretrain", "--out", "x", "--stop-after", "4000"]).stop_after == 4000
    with pytest.raises(SystemExit):
        parser.parse_args(["shapes", "pretrain", "--out", "x", "--loss-weighting", "x0"])


def test_category_weights_option_parses_and_rejects():
    import argparse

    from diffrl.shapes.cli import _category_weights

    assert _category_weights("color_binding=0.5, spatial=2") == {"single": 1.0, "color_binding": 0.5, "counting": 1.0,
                                                                  "spatial": 2.0}
    assert _category_weights("")["color_binding"] == 0.0  # the default: no color-binding prompts (docs/tuning.md)
    for bad in ("colour=1", "spatial", "spatial=x", "spatial=-1", "single=0,color_binding=0,counting=0,spatial=0"):
        with pytest.raises(argparse.ArgumentTypeError):
            _category_weights(bad)


def test_high_noise_fraction_draws_that_share_of_timesteps_from_the_noisiest_tenth():
    torch.manual_seed(0)
    uniform = draw_timesteps(4000, 1000, 0.0)
    torch.manual_seed(0)
    assert torch.equal(uniform, torch.randint(0, 1000, (4000,)))  # fraction 0: the old stream, bit for bit
    t = draw_timesteps(4000, 1000, 0.5)
    assert t.min() >= 0 and t.max() < 1000
    assert abs((t >= 900).float().mean().item() - (0.5 + 0.5 * 0.1)) < 0.03
    assert (draw_timesteps(100, 1000, 1.0) >= 900).all()
    with pytest.raises(ValueError, match="high_noise_fraction"):
        PretrainConfig(high_noise_fraction=1.5).check()
