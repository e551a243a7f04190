"""`diffrl train` on a tiny random SD3 pipeline: every estimator, B2, resume, the LoRA export in plain diffusers, full
fine-tuning's transformer/ export and `diffrl evaluate` on it, and sample.max_sequence_length."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffrl.cli import main

FAST = ["--reward", "brightness", "--set", "sample.num_steps=3", "--set", "sample.prompts_per_batch=2",
        "--set", "sample.k=2", "--set", "run.eval_prompts=none", "--set", "run.progress=false",
        "--set", "run.tensorboard=false", "--set", "train.min_noise_std=0", "--set", "train.learning_rate=1e-2"]


@pytest.fixture(scope="session")
def sd3_prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd3_prompts") / "prompts.txt"
    path.write_text("a red circle\na blue square\na green triangle\n")  # words of tiny_sd3.WORDS
    return path


def train(sd3_dir, sd3_prompts, out, *extra):
    return main(["train", "--model", str(sd3_dir), "--prompts", str(sd3_prompts), "--out", str(out), *FAST, *extra])


def trained_weights(out, epoch):
    return load_file(out / "checkpoints" / f"epoch_{epoch:05d}" / "trainable.safetensors")


@pytest.mark.parametrize("algo", ["reinforce", "reinforce-loo", "ppo", "loop", "grpo"])
def test_every_estimator_trains_sd3(sd3_dir, sd3_prompts, tmp_path, algo):
    out = tmp_path / "run"
    assert train(sd3_dir, sd3_prompts, out, "--algo", algo, "--epochs", "1") == 0
    weights = trained_weights(out, 1)
    assert weights and all("transformer" not in k or "lora" in k for k in weights)
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at zero
    lora = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert lora and all(k.startswith("transformer.") for k in lora)


def test_b2_trains_sd3(sd3_dir, sd3_prompts, tmp_path):
    out = tmp_path / "run"
    assert train(sd3_dir, sd3_prompts, out, "--algo", "loop", "--b2", "--epochs", "2", "--set", "b2.start_steps=2",
                 "--set", "b2.branches=2", "--set", "b2.epochs_per_stage=1") == 0
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["images_seen"] == 2 * 2 * 2  # prompts x K x branches
    assert all("b2/first_trained_step" in r for r in records[1:])
    assert all(r["updates"] > 0 for r in records[1:])


@pytest.mark.parametrize("lora", ["true", "false"])
def test_resume_matches_an_uninterrupted_run(sd3_dir, sd3_prompts, tmp_path, lora):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train(sd3_dir, sd3_prompts, whole, "--algo", "ppo", "--epochs", "2", "--set", f"model.lora={lora}") == 0
    assert train(sd3_dir, sd3_prompts, split, "--algo", "ppo", "--epochs", "1", "--set", f"model.lora={lora}") == 0
    assert main(["train", "--resume", str(split), "--epochs", "2"]) == 0
    a, b = trained_weights(whole, 2), trained_weights(split, 2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_loads_into_plain_diffusers_sd3(sd3_dir, sd3_prompts, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    out = tmp_path / "run"
    assert train(sd3_dir, sd3_prompts, out, "--algo", "loop", "--epochs", "1") == 0
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_dir)
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe("a red circle", num_inference_steps=2, output_type="np", height=32, width=32,
                    generator=torch.Generator().manual_seed(0)).images

    base = generate()
    pipe.load_lora_weights(out / "lora")
    assert not np.allclose(base, generate())


def test_lora_export_keeps_its_scale_in_plain_diffusers_sd3(sd3_dir, tmp_path):
    """alpha / rank = 2 (the flow_grpo preset's 64 / 32): plain diffusers must load the adapters at that scale."""
    from diffusers import StableDiffusion3Pipeline

    from diffrl.models.pipeline import add_lora, load_pipeline, save_lora
    from tests.test_lora_export import randomize_lora_b

    trained = load_pipeline(str(sd3_dir))
    add_lora(trained.transformer, 4, 8.0, ["to_q", "to_k", "to_v", "to_out.0"])
    randomize_lora_b(trained.transformer)
    save_lora(trained.transformer, tmp_path)
    plain = StableDiffusion3Pipeline.from_pretrained(sd3_dir)
    plain.load_lora_weights(tmp_path)
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 4, 8, 8, generator=generator),
                  encoder_hidden_states=torch.randn(1, 5, 16, generator=generator),
                  pooled_projections=torch.randn(1, 24, generator=generator), timestep=torch.tensor([500.0]))
    with torch.no_grad():
        torch.testing.assert_close(plain.transformer(**inputs).sample, trained.transformer(**inputs).sample,
                                   rtol=0, atol=1e-5)


def test_flow_policy_at_noise_level_zero_is_the_diffusers_sd3_sampler(sd3_dir):
    """The deterministic limit of the policy (Euler ODE steps) gives StableDiffusion3Pipeline's latents and images."""
    from diffrl.models.pipeline import load_pipeline
    from diffrl.sampling import FlowPolicy, decode_images, encode_prompts, sample_trajectories

    pipe = load_pipeline(str(sd3_dir))
    policy = FlowPolicy(unet=pipe.transformer, noise_level=0.0, guidance_scale=3.0)
    timesteps, prev = policy.schedule(pipe.scheduler, 3, "cpu")
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    traj = sample_trajectories(policy, pipe.vae, encode_prompts(pipe, ["a red circle", "a blue square"], "cpu"),
                               encode_prompts(pipe, [""], "cpu"), 1, timesteps, prev, (4, 8, 8), None,
                               noise_source=lambda shape: noise if shape == noise.shape else torch.zeros(shape))
    expected = pipe(["a red circle", "a blue square"], num_inference_steps=3, guidance_scale=3.0, height=32, width=32,
                    latents=noise.clone(), output_type="latent").images
    torch.testing.assert_close(traj.latents[:, -1], expected, rtol=1e-4, atol=1e-5)
    images = pipe(["a red circle"], num_inference_steps=3, guidance_scale=3.0, height=32, width=32,
                  latents=noise[:1].clone(), output_type="np").images
    assert np.abs(decode_images(pipe.vae, expected[:1]).astype(float) - images * 255).max() <= 1


def test_default_min_noise_std_drops_only_the_last_flow_step(sd3_dir):
    """diffusers' SD3 schedule ends with a tiny step (sigma ~0.003 -> 0) whose std is ~0.006; the others are >= 0.05."""
    from diffrl.config import TrainConfig
    from diffrl.models.pipeline import load_pipeline
    from diffrl.sampling import FlowPolicy

    pipe = load_pipeline(str(sd3_dir))
    for steps in (3, 10, 40):
        policy = FlowPolicy(unet=pipe.transformer, noise_level=0.7, guidance_scale=3.0)
        stds = policy.noise_stds(*policy.schedule(pipe.scheduler, steps, "cpu"))
        assert stds.shape == (steps,) and torch.isfinite(stds).all() and (stds > 0).all()
        assert (stds[:-1] >= TrainConfig().min_noise_std).all() and stds[-1] < TrainConfig().min_noise_std


def test_held_out_evaluation_and_evaluate_on_an_sd3_run(sd3_dir, sd3_prompts, tmp_path):
    out = tmp_path / "run"
    assert train(sd3_dir, sd3_prompts, out, "--algo", "loop", "--epochs", "1", "--set",
                 f"run.eval_prompts={sd3_prompts}", "--set", "run.eval_images_per_prompt=1") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(records[0]["eval/brightness"]) and np.isfinite(records[-1]["eval/brightness"])
    assert main(["evaluate", "--lora", str(out), "--prompts", str(sd3_prompts), "--images-per-prompt", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert result["weights"].startswith("lora:") and np.isfinite(result["metrics"]["brightness"]["overall"]["mean"])


def test_full_finetune_exports_the_transformer_and_evaluate_reloads_it(sd3_dir, sd3_prompts, tmp_path):
    """model.lora=false saves the transformer under transformer/ (SD3's component name); `diffrl evaluate`'s loader
    puts exactly those weights (the last checkpoint's) into the pipeline, in place of the base transformer."""
    from diffrl.cli.evaluate import load_weights
    from diffrl.models.pipeline import load_pipeline

    out = tmp_path / "run"
    assert train(sd3_dir, sd3_prompts, out, "--algo", "loop", "--epochs", "2", "--set", "model.lora=false") == 0
    assert (out / "transformer" / "config.json").is_file() and not (out / "unet").exists()
    assert not (out / "lora").exists()
    pipe = load_pipeline(str(sd3_dir))
    base = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    assert load_weights(pipe, out) == f"transformer:{out / 'transformer'}"
    loaded, saved = pipe.transformer.state_dict(), trained_weights(out, 2)
    assert saved.keys() == dict(pipe.transformer.named_parameters()).keys()  # every weight (buffers aside)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert any(not torch.equal(loaded[k], base[k]) for k in base)
    assert not any(p.requires_grad for p in pipe.transformer.parameters()) and not pipe.transformer.training
    assert main(["evaluate", "--lora", str(out), "--prompts", str(sd3_prompts), "--images-per-prompt", "1",
                 "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert result["weights"] == f"transformer:{out / 'transformer'}"


def test_a_unet_directory_does_not_load_into_an_sd3_pipeline(sd3_dir, tiny_pipeline_dir):
    from diffrl.cli.evaluate import load_weights
    from diffrl.errors import DiffrlError
    from diffrl.models.pipeline import load_pipeline

    with pytest.raises(DiffrlError, match="holds a UNet2DConditionModel.*transformer is a SD3Transformer2DModel"):
        load_weights(load_pipeline(str(sd3_dir)), tiny_pipeline_dir / "unet")


def test_max_sequence_length_sets_the_t5_part_of_the_prompt_embeddings(sd3_dir):
    from diffrl.models.pipeline import load_pipeline
    from diffrl.sampling import SD3_MAX_SEQUENCE_LENGTH, encode_prompts

    pipe = load_pipeline(str(sd3_dir))
    lengths = {n: encode_prompts(pipe, ["a red circle"], "cpu", n).embeds.shape[1] for n in (8, 32)}
    default = encode_prompts(pipe, ["a red circle"], "cpu")
    assert lengths[32] - lengths[8] == 24
    assert default.embeds.shape[1] - lengths[8] == SD3_MAX_SEQUENCE_LENGTH - 8
    assert encode_prompts(pipe, ["a red circle"], "cpu", 8).pooled.shape == default.pooled.shape


def test_max_sequence_length_reaches_every_prompt_encoding_of_a_run(sd3_dir, sd3_prompts, tmp_path, monkeypatch):
    """Training (the empty prompt, every sampled batch), its held-out evaluation and `diffrl evaluate` of the run
    all encode with the run's sample.max_sequence_length."""
    from diffusers import StableDiffusion3Pipeline

    seen = []
    encode = StableDiffusion3Pipeline.encode_prompt

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("max_sequence_length"))
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusion3Pipeline, "encode_prompt", spy)
    out = tmp_path / "run"
    assert train(sd3_dir, sd3_prompts, out, "--algo", "loop", "--epochs", "1", "--set", "sample.max_sequence_length=16",
                 "--set", f"run.eval_prompts={sd3_prompts}", "--set", "run.eval_images_per_prompt=1") == 0
    assert main(["evaluate", "--lora", str(out), "--prompts", str(sd3_prompts), "--images-per-prompt", "1",
                 "--out", str(tmp_path / "eval")]) == 0
    assert len(seen) >= 6 and set(seen) == {16}  # uncond + 1 batch + 2 evaluations (uncond + prompts) + evaluate


def test_flow_grpo_preset_trains_on_the_tiny_sd3_pipeline(sd3_dir, sd3_prompts, tmp_path):
    """The flow_grpo_pickscore preset, shrunk to the tiny pipeline, trains: its LoRA target modules (attn.add_*_proj,
    attn.to_add_out, ...) exist in an SD3 transformer, and its other settings (grpo, 2 updates per epoch, the first
    steps only, T5 length 128, KL to the base) run together."""
    out = tmp_path / "run"
    assert main(["train", "--config", "flow_grpo_pickscore", "--model", str(sd3_dir), "--prompts", str(sd3_prompts),
                 "--reward", "brightness", "--out", str(out), "--epochs", "1", "--set", "model.resolution=32",
                 "--set", "sample.num_steps=3", "--set", "train.first_steps=2", "--set", "sample.k=2",
                 "--set", "sample.batches_per_epoch=2", "--set", "train.mixed_precision=no",
                 "--set", "run.eval_prompts=none", "--set", "run.progress=false", "--set", "run.tensorboard=false"]) == 0
    lora = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert any(".attn.add_k_proj." in k for k in lora) and any(".attn.to_add_out." in k for k in lora)
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in lora.items())
    record = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["updates"] == 2 and record["trained_steps"] == 2


def test_evaluate_takes_the_flow_noise_level_and_refuses_eta_on_sd3(sd3_dir, sd3_prompts, tmp_path, capsys):
    """SD3 is evaluated at --flow-noise-level (0: plain diffusers' ODE sampler), recorded in results.json and checked
    against --baseline; --eta, a DDIM setting SD3 does not use, is refused instead of ignored."""
    common = ["evaluate", "--model", str(sd3_dir), "--prompts", str(sd3_prompts), "--images-per-prompt", "1",
              "--reward", "brightness"]
    assert main([*common, "--flow-noise-level", "0", "--out", str(tmp_path / "ode")]) == 0
    ode = json.loads((tmp_path / "ode" / "results.json").read_text())
    assert ode["sampling"] == {"num_steps": 10, "guidance_scale": 3.0, "flow_noise_level": 0.0}
    assert "flow noise level 0.0" in capsys.readouterr().out
    assert main([*common, "--flow-noise-level", "0.7", "--out", str(tmp_path / "sde")]) == 0
    sde = json.loads((tmp_path / "sde" / "results.json").read_text())
    assert sde["metrics"]["brightness"]["overall"]["mean"] != ode["metrics"]["brightness"]["overall"]["mean"]
    assert main([*common, "--baseline", str(tmp_path / "ode" / "results.json"), "--out", str(tmp_path / "x")]) == 2
    assert "differs in sampling (flow_noise_level 0.7 here, 0.0 there)" in capsys.readouterr().err
    assert main([*common, "--eta", "0", "--out", str(tmp_path / "y")]) == 2
    assert "--flow-noise-level" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_evaluate_refuses_the_flow_noise_level_on_a_ddim_model(tiny_pipeline_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tiny_pipeline_dir), "--prompts", "shapes:single_val",
                 "--flow-noise-level", "0", "--out", str(tmp_path / "e")]) == 2
    assert "use --eta" in capsys.readouterr().err and not (tmp_path / "e").exists()
