"""`diffrl soup`: the average of LoRA changes, by hand and against diffusers' own weighted adapters."""
import json

import pytest
import torch

from diffrl.cli import main
from diffrl.config import Config
from diffrl.errors import DiffrlError
from diffrl.models.pipeline import add_lora, add_text_encoder_lora, load_pipeline, save_lora
from diffrl.run_state import write_config
from diffrl.sampling import encode_prompts
from diffrl.soup import ADAPTER_METADATA, adapter_scales, average_lora

TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def test_average_lora_is_the_weighted_mean_of_the_changes_by_hand():
    first = {"unet.m.lora_A.weight": torch.tensor([[1.0, 2.0]]), "unet.m.lora_B.weight": torch.tensor([[1.0], [0.0]])}
    second = {"unet.m.lora_A.weight": torch.tensor([[0.0, 1.0]]), "unet.m.lora_B.weight": torch.tensor([[0.0], [2.0]])}
    # first's change [[1, 2], [0, 0]] at scale 2, second's [[0, 0], [0, 2]] at scale 1, weights 1/2 each
    out = average_lora([first, second], [{"unet": 2.0}, {}], [0.5, 0.5])
    assert out["unet.m.lora_A.weight"].shape == (2, 2) and out["unet.m.lora_B.weight"].shape == (2, 2)
    torch.testing.assert_close(out["unet.m.lora_B.weight"] @ out["unet.m.lora_A.weight"],
                               torch.tensor([[1.0, 2.0], [0.0, 1.0]]))


def test_average_lora_refuses_other_weights():
    with pytest.raises(DiffrlError, match="not a LoRA"):
        average_lora([{"unet.m.weight": torch.ones(1)}], [{}], [1.0])


def test_adapter_scales_read_diffusers_metadata():
    metadata = {ADAPTER_METADATA: json.dumps({"unet.r": 4, "unet.lora_alpha": 8.0, "unet.rank_pattern": {},
                                              "text_encoder.r": 4, "text_encoder.lora_alpha": 4.0})}
    assert adapter_scales(metadata, "x") == {"unet": 2.0, "text_encoder": 1.0}
    assert adapter_scales({"format": "pt"}, "x") == {}  # no metadata: diffusers assumes alpha = rank
    with pytest.raises(DiffrlError, match="rank_pattern"):
        adapter_scales({ADAPTER_METADATA: json.dumps({"unet.r": 4, "unet.rank_pattern": {"to_q": 8}})}, "x")


def saved_adapter(tiny_pipeline_dir, directory, seed, alpha):
    """A LoRA directory with random (nonzero) A and B on the UNet and the text encoder, as a run exports it."""
    pipe = load_pipeline(str(tiny_pipeline_dir))
    add_lora(pipe.unet, 4, alpha, TARGETS)
    add_text_encoder_lora(pipe.text_encoder, 4, alpha)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, param in module.named_parameters():
                if "lora_" in name:
                    param.normal_(std=0.1)
    save_lora(pipe.unet, directory, pipe.text_encoder)
    return directory


# Two adapters in one UNet are the point here (diffusers' weighted sum is the reference), which peft warns about.
@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")
def test_soup_loads_in_plain_diffusers_as_its_weighted_adapters(tiny_pipeline_dir, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    first = saved_adapter(tiny_pipeline_dir, tmp_path / "a", 0, alpha=8.0)  # scale 2: the metadata must be read
    second = saved_adapter(tiny_pipeline_dir, tmp_path / "b", 1, alpha=4.0)
    assert main(["soup", str(first), str(second), "--out", str(tmp_path / "soup"), "--weights", "0.7", "0.3"]) == 0
    assert "2 adapter(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "soup" / "soup.json").read_text())["weights"] == [0.7, 0.3]

    def outputs(pipe):
        embeds = encode_prompts(pipe, ["a red circle"], "cpu")
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return embeds, pipe.unet(latents, 500, embeds).sample

    souped = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    souped.load_lora_weights(tmp_path / "soup")
    mixed = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    mixed.load_lora_weights(first, adapter_name="a")
    mixed.load_lora_weights(second, adapter_name="b")
    mixed.set_adapters(["a", "b"], adapter_weights=[0.7, 0.3])  # diffusers' own weighted sum of the changes
    base = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    (souped_embeds, souped_out), (mixed_embeds, mixed_out) = outputs(souped), outputs(mixed)
    torch.testing.assert_close(souped_embeds, mixed_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(souped_out, mixed_out, rtol=0, atol=1e-5)
    assert not torch.allclose(outputs(base)[1], souped_out, atol=1e-3)


def test_soup_refuses_what_does_not_average(tiny_pipeline_dir, tmp_path, capsys):
    first = saved_adapter(tiny_pipeline_dir, tmp_path / "a", 0, alpha=4.0)
    pipe = load_pipeline(str(tiny_pipeline_dir))
    add_lora(pipe.unet, 4, 4.0, ["to_q"])  # other modules
    save_lora(pipe.unet, tmp_path / "narrow")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full" / "unet").mkdir(parents=True)  # a full fine-tune's export
    runs = []
    for name, base in (("run1", "model-a"), ("run2", "model-b")):
        config = Config()
        config.model.pretrained = base
        write_config(tmp_path / name, config)
        save_lora(pipe.unet, tmp_path / name / "lora")
        runs.append(str(tmp_path / name))
    cases = [([str(first), str(tmp_path / "narrow")], "adapt different modules"),
             ([str(first), str(tmp_path / "empty")], "neither a run directory"),
             ([str(first), str(tmp_path / "full")], "full fine-tune"),
             ([str(first), str(first), "--weights", "1"], "1 weights for 2 runs"),
             (runs, "different base models")]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["soup", *argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()


def test_evaluate_reads_a_soups_base_and_settings_from_its_first_run(tiny_pipeline_dir, tmp_path):
    from diffrl.cli.evaluate import default_model

    pipe = load_pipeline(str(tiny_pipeline_dir))
    add_lora(pipe.unet, 4, 4.0, ["to_q"])
    config = Config()
    config.model.pretrained = str(tiny_pipeline_dir)
    write_config(tmp_path / "run", config)
    save_lora(pipe.unet, tmp_path / "run" / "lora")
    assert main(["soup", str(tmp_path / "run"), "--weights", "0.5", "--out", str(tmp_path / "soup")]) == 0
    assert json.loads((tmp_path / "soup" / "soup.json").read_text())["base"] == str(tiny_pipeline_dir)
    assert default_model(tmp_path / "soup") == str(tiny_pipeline_dir)
    # A soup of that soup (e.g. re-souped with --weights 1 to fold its scale in) keeps the base, and evaluate follows
    # the records back to the run, not to the default model.
    assert main(["soup", str(tmp_path / "soup"), "--weights", "1", "--out", str(tmp_path / "soup2")]) == 0
    assert json.loads((tmp_path / "soup2" / "soup.json").read_text())["base"] == str(tiny_pipeline_dir)
    assert default_model(tmp_path / "soup2") == str(tiny_pipeline_dir) != Config().model.pretrained


def test_lora_init_seed_initializes_the_adapters_apart_from_the_run_seed(tiny_pipeline_dir, prompt_file, tmp_path):
    """model.lora_init_seed=0 at run.seed 1 starts from run.seed 0's adapters (runs to be souped share their A
    subspaces); without it run.seed decides, as before."""
    from diffrl.config import load_config
    from diffrl.run_state import start_run

    def initial_a(name: str, seed: int, init_seed: int | None = None) -> dict[str, torch.Tensor]:
        overrides = {"model.pretrained": str(tiny_pipeline_dir), "run.prompts": str(prompt_file),
                     "run.out": str(tmp_path / name), "run.seed": str(seed), "run.eval_prompts": "none",
                     "run.tensorboard": "false", "run.reward": "brightness"}
        if init_seed is not None:
            overrides["model.lora_init_seed"] = str(init_seed)
        run = start_run(load_config(None, overrides), resume=False)
        return {n: p.detach().clone() for n, p in run.trainable.items() if ".lora_A." in n}

    seed0, seed1, shared = initial_a("s0", 0), initial_a("s1", 1), initial_a("s1_init0", 1, init_seed=0)
    assert seed0 and seed0.keys() == shared.keys()
    for name in seed0:
        torch.testing.assert_close(shared[name], seed0[name], rtol=0, atol=0)
    assert not all(torch.equal(seed1[name], seed0[name]) for name in seed0)
