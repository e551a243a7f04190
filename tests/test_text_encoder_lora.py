"""model.train_text_encoder: LoRA on the CLIP text encoder, trained with the UNet's (tiny SD pipeline)."""
import shutil

import pytest
import torch
from safetensors.torch import load_file

from diffrl.cli import main
from diffrl.cli.evaluate import load_weights
from diffrl.models.pipeline import add_text_encoder_lora, load_pipeline
from diffrl.sampling import encode_prompts, encode_prompts_trainable
from tests.test_reliability_runs import EPOCHS, assert_resumes_to_reference, metrics, train_args, weights

TE = ["--set", "model.train_text_encoder=true"]
PROMPTS = ["a red circle", "", "two blue squares above a green triangle and a yellow cat and a dog"]  # last: truncated


@pytest.fixture(scope="module")
def te_run(tiny_pipeline_dir, prompt_file, tmp_path_factory):
    """A 2-epoch run that trains the text encoder (1 update per epoch: each epoch's ratios are all pre-update)."""
    out = tmp_path_factory.mktemp("te") / "run"
    assert main(train_args(tiny_pipeline_dir, prompt_file, out, *TE, "--epochs", "2",
                           "--set", "train.minibatches=1")) == 0
    return out


def text_encoder_weights(trainable: dict) -> dict:
    """The checkpoint's text-encoder adapters, under the text encoder's own parameter names."""
    prefix = "text_encoder."
    return {k[len(prefix):]: v for k, v in trainable.items() if k.startswith(prefix)}


@pytest.mark.parametrize("attention_mask", [False, True])
def test_trainable_encoding_matches_the_pipeline(tiny_pipeline_dir, attention_mask):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    pipe.text_encoder.config.use_attention_mask = attention_mask
    add_text_encoder_lora(pipe.text_encoder, 4, 4.0)
    with torch.no_grad():  # non-zero B matrices: the adapters take part
        for name, param in pipe.text_encoder.named_parameters():
            if "lora_B" in name:
                param.normal_()
    embeds = encode_prompts_trainable(pipe.tokenizer, pipe.text_encoder, PROMPTS, "cpu")
    assert embeds.requires_grad
    torch.testing.assert_close(embeds, encode_prompts(pipe, PROMPTS, "cpu"), rtol=0, atol=0)


def test_text_encoder_trains_from_ratio_one(te_run):
    trainable = weights(te_run, 2)
    lora_b = [v for k, v in text_encoder_weights(trainable).items() if "lora_B" in k]
    assert len(lora_b) == 8  # 2 layers x q, k, v, out
    assert all(torch.count_nonzero(v) > 0 for v in lora_b)  # moved from peft's zero init
    # Sampled and re-encoded by the same text encoder: old and new log-probs agree up to float noise (a few 1e-6, as
    # without model.train_text_encoder). Epoch 2's sampling without its empty prompt re-encoded gives ratios ~0.5.
    for record in metrics(te_run)[1:]:
        assert record["updates"] == 1
        assert record["ratio_min"] == pytest.approx(1, abs=1e-5) and record["ratio_max"] == pytest.approx(1, abs=1e-5)
        assert record["approx_kl"] == pytest.approx(0, abs=1e-9)


def test_text_encoder_lr_at_the_unets_rate_changes_nothing(te_run, tiny_pipeline_dir, prompt_file, tmp_path):
    """Two parameter groups at one rate are the same AdamW (and the same gradient-norm clip) as one group."""
    out = tmp_path / "run"
    assert main(train_args(tiny_pipeline_dir, prompt_file, out, *TE, "--epochs", "2", "--set", "train.minibatches=1",
                           "--set", "train.text_encoder_lr=1e-2")) == 0  # train_args' train.learning_rate
    reference, grouped = weights(te_run, 2), weights(out, 2)
    assert grouped.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(grouped[name], reference[name], rtol=0, atol=0)


def test_text_encoder_lr_sets_the_text_encoders_step(tiny_pipeline_dir, prompt_file, tmp_path):
    """AdamW's first update moves each weight with a gradient by lr * |g| / (|g| + eps), i.e. by lr: the UNet's
    LoRA B matrices (zero at the start) end at most 1e-2 from 0, the text encoder's at most 1e-3, both reached."""
    out = tmp_path / "run"
    assert main(train_args(tiny_pipeline_dir, prompt_file, out, *TE, "--epochs", "1", "--set", "train.minibatches=1",
                           "--set", "train.text_encoder_lr=1e-3")) == 0
    trainable = weights(out, 1)
    for in_text_encoder, lr in ((True, 1e-3), (False, 1e-2)):
        lora_b = torch.cat([v.flatten() for k, v in trainable.items()
                            if "lora_B" in k and k.startswith("text_encoder.") == in_text_encoder])
        assert lora_b.abs().max().item() == pytest.approx(lr, rel=1e-3)
    assert "lr" in metrics(out)[1]  # the logged lr stays the UNet's (train.learning_rate)
    assert metrics(out)[1]["lr"] == pytest.approx(1e-2)


def test_exported_lora_loads_both_adapters_into_plain_diffusers(te_run, tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    assert {k.split(".")[0] for k in load_file(te_run / "lora" / "pytorch_lora_weights.safetensors")} == {
        "unet", "text_encoder"}
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    base = encode_prompts(pipe, PROMPTS, "cpu")
    pipe.load_lora_weights(te_run / "lora")
    loaded = encode_prompts(pipe, PROMPTS, "cpu")

    direct = load_pipeline(str(tiny_pipeline_dir))  # the run's text encoder: base + the checkpoint's adapters
    add_text_encoder_lora(direct.text_encoder, 4, 4.0)
    missing = direct.text_encoder.load_state_dict(text_encoder_weights(weights(te_run, 2)), strict=False)
    assert not missing.unexpected_keys and not [k for k in missing.missing_keys if "lora" in k]
    expected = encode_prompts(direct, PROMPTS, "cpu")
    assert not torch.allclose(expected, base, atol=1e-4)
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-6)

    evaluated = load_pipeline(str(tiny_pipeline_dir))  # `diffrl evaluate --lora RUN` loads the same
    assert load_weights(evaluated, te_run) == f"lora:{te_run / 'lora'}"
    torch.testing.assert_close(encode_prompts(evaluated, PROMPTS, "cpu"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra", [[], ["--set", "train.text_encoder_lr=3e-3"]])  # one or two parameter groups
def test_resume_is_bit_identical(extra, tiny_pipeline_dir, prompt_file, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(train_args(tiny_pipeline_dir, prompt_file, full, *TE, *extra)) == 0
    assert main(train_args(tiny_pipeline_dir, prompt_file, part, *TE, *extra, "--epochs", "2")) == 0
    assert any(k.startswith("text_encoder.") for k in weights(full, EPOCHS))
    assert_resumes_to_reference(part, (weights(full, EPOCHS), metrics(full)), "--set", f"run.epochs={EPOCHS}")


def test_kl_penalty_with_a_trained_text_encoder(tiny_pipeline_dir, prompt_file, tmp_path):
    """The KL reference is the base model: UNet and text encoder with their adapters off (0 before any update)."""
    out = tmp_path / "run"
    assert main(train_args(tiny_pipeline_dir, prompt_file, out, *TE, "--epochs", "2", "--set", "train.minibatches=1",
                           "--set", "train.kl_coef=1.0")) == 0
    kls = [r["kl_to_base"] for r in metrics(out)[1:]]
    assert kls[0] == pytest.approx(0, abs=1e-12) and kls[-1] > 0


@pytest.mark.parametrize("model, extra, message", [
    ("tiny", ["--set", "model.lora=false"], "model.train_text_encoder needs model.lora = true"),
    ("tiny", ["--set", "train.text_encoder_lr=0"], "train.text_encoder_lr must be > 0"),
    ("tiny", ["--set", "model.train_text_encoder=false", "--set", "train.text_encoder_lr=1e-3"],
     "train.text_encoder_lr needs model.train_text_encoder = true"),
    ("sd3", [], "model.train_text_encoder is for SD 1.x/2.x pipelines"),
])
def test_bad_settings_are_one_line_errors(model, extra, message, request, prompt_file, tmp_path, capsys):
    directory = request.getfixturevalue("tiny_pipeline_dir" if model == "tiny" else "sd3_dir")
    capsys.readouterr()  # the fixture's first build prints progress bars
    out = tmp_path / "run"
    assert main(train_args(directory, prompt_file, out, *TE, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (out / "config.yaml").exists()


def test_a_text_encoder_other_than_clip_is_a_one_line_error(prompt_file, tmp_path, capsys):
    """ShapesWorld's --bidirectional-text models have a BERT text encoder, whose adapters diffusers' load_lora_weights
    cannot restore: refused before training, in one line."""
    from diffrl.models.tiny import build_tiny_pipeline
    from tests.conftest import WORDS

    model = tmp_path / "bert_sd"
    build_tiny_pipeline(model, WORDS, sample_size=16, block_channels=(16, 32), cross_attention_dim=16,
                        vae_channels=(16, 32), seed=0, bidirectional_text=True)
    capsys.readouterr()  # building it prints progress bars
    out = tmp_path / "run"
    assert main(train_args(model, prompt_file, out, *TE)) == 2
    err = capsys.readouterr().err.strip()
    assert "supports CLIP text encoders" in err and "this pipeline's is a BertModel" in err
    assert len(err.splitlines()) == 1 and not (out / "config.yaml").exists()


@pytest.mark.parametrize("pretrained, lora, setting, trained", [
    ("builtin:shapes", True, None, True),    # the default on ShapesWorld (docs/tuning.md, section 18)
    ("builtin:shapes", False, None, False),  # full fine-tuning has no adapters to add
    ("builtin:shapes-spatial", True, None, True),  # the spatial studies' base trains it too (docs/tuning.md 16-17)
    ("builtin:shapes-spatial2", True, None, True),
    ("stabilityai/stable-diffusion-2-base", True, None, False),  # measured on ShapesWorld only
    ("builtin:shapes", True, False, False),
    ("stabilityai/stable-diffusion-2-base", True, True, True),
])
def test_the_default_trains_the_text_encoder_on_shapesworld_only(pretrained, lora, setting, trained):
    from diffrl.config import load_config, trains_text_encoder

    config = load_config(overrides={"model.pretrained": pretrained, "model.lora": lora,
                                    "model.train_text_encoder": setting})
    assert trains_text_encoder(config) is trained


def test_a_run_records_the_resolved_value_and_resumes_by_it(tmp_path):
    """model.train_text_encoder's default follows the model (and changed on 2026-12-02): config.yaml records what
    the run trains, so resuming compares that, not the default of the day."""
    from diffrl.compare import run_state
    from diffrl.config import load_config, resume_conflicts, with_resolved_defaults
    from diffrl.errors import DiffrlError
    from diffrl.run_state import write_config

    default, unet_only = load_config(), load_config(overrides={"model.train_text_encoder": False})
    recorded_on, recorded_off = with_resolved_defaults(default), with_resolved_defaults(unet_only)
    assert (recorded_on.model.train_text_encoder, recorded_off.model.train_text_encoder) == (True, False)
    assert resume_conflicts(recorded_on, default) == [] and resume_conflicts(recorded_off, unet_only) == []
    assert resume_conflicts(recorded_off, default) == ["model.train_text_encoder (False -> True)"]
    # Written before runs recorded it (None): either setting may resume; the checkpoint's weights decide (next test).
    assert resume_conflicts(default, unet_only) == [] and resume_conflicts(default, default) == []
    # diffrl compare --resume plans runs with the unresolved default and must recognize its own runs.
    write_config(tmp_path / "on", recorded_on)
    assert run_state(tmp_path / "on", default) == "new"
    write_config(tmp_path / "off", recorded_off)
    with pytest.raises(DiffrlError, match="different configuration"):
        run_state(tmp_path / "off", default)


def test_resuming_without_the_adapters_the_checkpoint_holds_names_the_setting(te_run, tmp_path, capsys):
    """A run directory from before runs recorded the value (null) resumes under today's default; when that disagrees
    with the checkpoint's weights, the one-line error says which setting resumes it."""
    legacy = tmp_path / "legacy"
    shutil.copytree(te_run, legacy)
    config = (legacy / "config.yaml").read_text()
    assert "train_text_encoder: true" in config
    (legacy / "config.yaml").write_text(config.replace("train_text_encoder: true", "train_text_encoder: null"))
    capsys.readouterr()
    assert main(["train", "--resume", str(legacy), "--epochs", "3"]) == 2  # the tiny pipeline's default: off
    err = capsys.readouterr().err.strip()
    assert "resume with --set model.train_text_encoder=true" in err and len(err.splitlines()) == 1
