"""sample.merge_lora: sampling with the adapters merged into the base weights computes the same policy (up to
floating-point rounding), and leaves the base weights exactly as they were, so a run resumes bit for bit."""
import pytest
import torch

from diffrl.cli import main
from diffrl.models.pipeline import add_lora, load_pipeline, lora_merged
from tests.test_lora_export import WIDE_TARGETS, lora_layer_count, randomize_lora_b
from tests.test_reliability_inputs import FAST, assert_one_line, run_cli
from tests.test_reliability_runs import metrics, train_args, weights


def merged_layers(unet) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) and m.merged for m in unet.modules())


@pytest.fixture
def adapted(tiny_pipeline_dir):
    """A tiny UNet with adapters on attention, feed-forward layers and convolutions, every B non-zero, and a call."""
    unet = load_pipeline(str(tiny_pipeline_dir)).unet
    add_lora(unet, 4, 8.0, WIDE_TARGETS)  # alpha / rank = 2: the merge must scale the delta
    randomize_lora_b(unet)
    generator = torch.Generator().manual_seed(1)
    latents, embeds = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 7, 16, generator=generator)

    @torch.no_grad()
    def call():
        return unet(latents, 500, embeds).sample

    return unet, call


def test_merged_call_matches_the_adapters_and_the_weights_come_back_bit_for_bit(adapted):
    unet, call = adapted
    before_weights = {k: v.clone() for k, v in unet.state_dict().items()}
    before = call()
    with lora_merged(unet):
        assert merged_layers(unet) > 30  # attention, feed-forward and convolution layers alike
        changed = [k for k, v in unet.state_dict().items() if not torch.equal(v, before_weights[k])]
        inside = call()
    assert merged_layers(unet) == 0
    assert len(changed) == lora_layer_count(unet)  # each adapted layer's base weight holds W + (alpha / r) B A
    torch.testing.assert_close(inside, before, rtol=0, atol=1e-5)
    after = unet.state_dict()
    for key, value in before_weights.items():
        assert torch.equal(after[key], value), key
    assert torch.equal(call(), before)


def test_the_base_weights_come_back_after_an_error_inside(adapted):
    unet, call = adapted
    before = call()
    with pytest.raises(RuntimeError, match="inside"):
        with lora_merged(unet):
            raise RuntimeError("inside")
    assert merged_layers(unet) == 0 and torch.equal(call(), before)


def test_disabled_it_merges_nothing(adapted):
    unet, call = adapted
    with lora_merged(unet, enabled=False):
        assert merged_layers(unet) == 0


def test_a_run_sampling_merged_stays_on_policy_and_resumes_bit_for_bit(tiny_pipeline_dir, prompt_file, tmp_path):
    merged = ["--set", "sample.merge_lora=true", "--set", f"model.lora_target_modules={','.join(WIDE_TARGETS)}"]
    assert main(train_args(tiny_pipeline_dir, prompt_file, tmp_path / "full", *merged)) == 0
    lines = metrics(tmp_path / "full")
    trained = [r for r in lines if "ratio_onpolicy_dev" in r]
    assert trained and all(r["ratio_onpolicy_dev"] < 1e-4 for r in trained)  # rounding only, not another policy
    epochs = max(r["epoch"] for r in lines)
    assert main(train_args(tiny_pipeline_dir, prompt_file, tmp_path / "part", *merged,
                           "--epochs", str(epochs - 1))) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--set", f"run.epochs={epochs}"]) == 0
    full, resumed = weights(tmp_path / "full", epochs), weights(tmp_path / "part", epochs)
    assert any(w.abs().max() > 0 for key, w in full.items() if "lora_B" in key)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_merging_into_half_precision_weights_is_refused(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    code, err = run_cli(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), *FAST,
                         "--set", "sample.merge_lora=true", "--set", "train.frozen_dtype=bf16",
                         "--set", "train.mixed_precision=bf16", "--out", str(tmp_path / "run")], capsys)
    assert_one_line(code, err, "sample.merge_lora needs fp32 frozen weights")
    assert not (tmp_path / "run").exists()
