"""The presets in src/diffrl/presets/: each loads by name and validates; the Flow-GRPO one holds Flow-GRPO's values.

(The Flow-GRPO preset also trains an epoch on the tiny SD3 pipeline: tests/test_sd3_train.py.)
"""
import pytest

from diffrl.config import PRESET_DIR, load_config, preset_names, read_config_file


def test_preset_names_are_the_shipped_files():
    assert preset_names() == sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
    assert {"ddpo_compressibility", "loop_sd2", "flow_grpo_pickscore"} <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_validates(name):
    config = load_config(name)  # by name, as --config NAME
    written = [(getattr(config, section), key, value) for section, table in read_config_file(name).items()
               for key, value in table.items()]
    assert written
    for section, key, value in written:  # every value arrives as written ("none": TOML's stand-in for null)
        assert getattr(section, key) == (None if value == "none" else value), key


def test_flow_grpo_preset_has_flow_grpos_sd35_pickscore_values():
    """The values of yifan123/flow_grpo config/grpo.py pickscore_sd3 (+ base.py, scripts/train_sd3.py)."""
    c = load_config("flow_grpo_pickscore")
    assert (c.model.pretrained, c.model.resolution, c.model.lora) == ("stabilityai/stable-diffusion-3.5-medium", 512,
                                                                      True)
    assert (c.model.lora_rank, c.model.lora_alpha) == (32, 64.0)
    assert set(c.model.lora_target_modules) == {"attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj",
                                                "attn.to_add_out", "attn.to_k", "attn.to_out.0", "attn.to_q",
                                                "attn.to_v"}
    s, t, r = c.sample, c.train, c.run
    assert (s.num_steps, s.guidance_scale, s.flow_noise_level, s.max_sequence_length, s.k) == (10, 4.5, 0.7, 128, 24)
    assert s.logprob_reduce == "mean"
    assert (t.algo, t.learning_rate, t.clip_range, t.kl_coef, t.adv_clip_max, t.max_grad_norm) == \
        ("grpo", 3e-4, 1e-4, 0.01, 5.0, 1.0)
    assert (t.inner_epochs, t.minibatches, t.first_steps, t.min_noise_std) == (1, 2, 9, 0.0)
    assert (t.adam_beta1, t.adam_beta2, t.adam_weight_decay, t.adam_epsilon) == (0.9, 0.999, 1e-4, 1e-8)
    assert t.mixed_precision == "fp16"
    assert (r.reward, r.seed, r.eval_images_per_prompt, r.eval_every, r.save_every) == ("pickscore", 42, 1, 60, 60)
    # 48 prompts x 24 images per epoch on 8 processes, as Flow-GRPO's 32 GPUs x 9 images x 4 batches
    assert 8 * s.prompts_per_batch * s.batches_per_epoch == 48


def test_an_unknown_config_names_the_presets(tmp_path):
    from diffrl.errors import DiffrlError

    with pytest.raises(DiffrlError, match="presets: .*flow_grpo_pickscore"):
        load_config(tmp_path / "nope")


def test_shapes_spatial_preset_is_section_33s_command():
    """docs/tuning.md section 33 ran it as docs/tuning/reproduce.sh's spk8union2b128_spA1250_fix (the base as a local
    directory, the prompt set as tuning_prompts:spatial_unseen_twice_and_seen: the same list)."""
    c = load_config("shapes_spatial")
    assert (c.model.pretrained, c.model.lora, c.model.train_text_encoder) == ("builtin:shapes-spatial2", True, True)
    assert (c.sample.k, c.sample.prompts_per_batch, c.sample.num_steps, c.sample.eta) == (8, 128, 10, 1.0)
    assert (c.train.algo, c.train.learning_rate, c.train.lr_schedule, c.train.minibatches) == ("loop", 2e-3, "cosine", 16)
    assert (c.train.step_weight_power, c.train.kl_coef, c.train.inner_epochs) == (1.0, 0.0, None)
    assert (c.run.reward, c.run.epochs, c.run.eval_prompts) == ("shapes_success", 60, "shapes:spatial_unseen-val")
