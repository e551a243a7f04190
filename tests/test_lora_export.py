"""The exported LoRA file (RUN/lora/) restores exactly the trained adapters in plain diffusers, whatever modules
model.lora_target_modules names: attention projections, convolutions and feed-forward layers together."""
import pytest
import torch

from diffrl.models.pipeline import add_lora, add_text_encoder_lora, load_pipeline, save_lora
from diffrl.sampling import encode_prompts

WIDE_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2"]


def randomize_lora_b(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)  # peft starts B at zero: make every adapter count


def lora_layer_count(module):
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) for m in module.modules())


@pytest.mark.parametrize("alpha", [4.0, 8.0], ids=["scale1", "scale2"])  # alpha / rank != 1: the file must say so
def test_adapters_on_convolutions_and_attention_load_back_exactly(tiny_pipeline_dir, tmp_path, alpha):
    from diffusers import StableDiffusionPipeline

    trained = load_pipeline(str(tiny_pipeline_dir))
    add_lora(trained.unet, 4, alpha, WIDE_TARGETS)
    add_text_encoder_lora(trained.text_encoder, 4, alpha)
    randomize_lora_b(trained.unet)
    randomize_lora_b(trained.text_encoder)
    save_lora(trained.unet, tmp_path, trained.text_encoder)

    plain = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    plain.load_lora_weights(tmp_path)
    assert lora_layer_count(plain.unet) == lora_layer_count(trained.unet)
    assert lora_layer_count(plain.text_encoder) == lora_layer_count(trained.text_encoder)

    prompts = ["a red circle", "a blue square"]
    embeds = encode_prompts(trained, prompts, "cpu")
    torch.testing.assert_close(encode_prompts(plain, prompts, "cpu"), embeds, rtol=0, atol=1e-6)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = trained.unet(latents, 500, embeds).sample
        base = load_pipeline(str(tiny_pipeline_dir)).unet(latents, 500, embeds).sample
        loaded = plain.unet(latents, 500, embeds).sample
    assert not torch.allclose(expected, base, atol=1e-3)
    torch.testing.assert_close(loaded, expected, rtol=0, atol=1e-5)
