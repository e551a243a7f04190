"""train.ptx_coef: the denoiser's own training loss on captioned images, added to every optimizer step."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffrl.cli import main
from diffrl.errors import DiffrlError
from diffrl.pretraining_data import ImageFolder, ShapesRenders, load_pretraining_data, square_image
from diffrl.prompts import load_prompts

FAST = ["--k", "2", "--set", "sample.num_steps=3", "--set", "sample.prompts_per_batch=2",
        "--set", "run.eval_prompts=none", "--set", "run.progress=false", "--set", "run.save_every=1",
        "--set", "train.learning_rate=1e-2", "--set", "run.tensorboard=false"]
ARGS = [*FAST, "--set", "model.train_text_encoder=false"]


@pytest.fixture
def image_folder(tmp_path):
    """Four 24x20 images (a colored left half, the rest black) with captions in metadata.jsonl."""
    folder = tmp_path / "images"
    folder.mkdir()
    lines = []
    for i, (caption, color) in enumerate([("a red circle", (255, 0, 0)), ("a blue square", (0, 0, 255)),
                                          ("a green triangle", (0, 255, 0)), ("a yellow cat", (255, 255, 0))]):
        pixels = np.zeros((20, 24, 3), dtype=np.uint8)
        pixels[:, :12] = color
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]


def test_shapes_renders_draw_captioned_images_of_the_named_prompts():
    source = ShapesRenders(load_prompts("shapes:single_train").all(), "shapes:single_train")
    captions, images = source.draw(np.random.default_rng(0), 5, 32)
    assert set(captions) <= set(source.captions) and len(captions) == 5
    assert images.shape == (5, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    again = source.draw(np.random.default_rng(0), 5, 32)
    assert captions == again[0] and torch.equal(images, again[1])  # the generator decides everything
    with pytest.raises(DiffrlError, match="ShapesWorld prompts"):
        ShapesRenders([("a cat", {})], "cats.txt")


def test_image_folder_center_crops_resizes_and_checks_its_listing(image_folder):
    square = square_image(image_folder / "0.png", 8)  # 24x20 -> the middle 20x20 (columns 2-21) -> 8x8
    assert square.shape == (8, 8, 3)
    assert square[:, 0].tolist() == [[255, 0, 0]] * 8 and square[:, -1].tolist() == [[0, 0, 0]] * 8
    captions, images = ImageFolder(image_folder).draw(np.random.default_rng(0), 6, 8)
    assert len(captions) == 6 and images.shape == (6, 3, 8, 8)
    (image_folder / "metadata.jsonl").write_text('{"file_name": "missing.png", "text": "a cat"}\n')
    with pytest.raises(DiffrlError, match="missing.png does not exist"):
        ImageFolder(image_folder)
    (image_folder / "metadata.jsonl").write_text('{"text": "a cat"}\n')
    with pytest.raises(DiffrlError, match="line 1"):
        ImageFolder(image_folder)


def test_a_source_that_captions_a_held_out_prompt_is_refused(image_folder):
    with pytest.raises(DiffrlError, match="held-out prompt"):
        load_pretraining_data(str(image_folder), [("a blue square", {})])
    with pytest.raises(DiffrlError, match="held-out prompt"):
        load_pretraining_data("shapes:spatial_unseen-train", load_prompts("shapes:spatial_unseen-train").all())
    assert load_pretraining_data("shapes:spatial_train", load_prompts("shapes:spatial_unseen-val").all()).captions
    with pytest.raises(DiffrlError, match="neither"):
        load_pretraining_data("no/such/folder", None)


@pytest.mark.parametrize("extra, message", [
    (["--set", "train.ptx_coef=0.1"], "needs train.ptx_data"),
    (["--set", "train.ptx_coef=0.1", "--set", "train.ptx_data=no/such/folder"], "neither"),
    (["--set", "train.ptx_coef=-1", "--set", "train.ptx_data=shapes:single_train"], "ptx_coef must be >= 0"),
    (["--set", "train.ptx_coef=0.1", "--set", "train.ptx_data=own_samples", "--set", "train.ptx_max_noise=0.6",
      "--set", "train.ptx_min_noise=0.7"], "ptx_min_noise must be in [0, train.ptx_max_noise)"),
])
def test_bad_pretraining_settings_fail_in_one_line(tiny_pipeline_dir, prompt_file, tmp_path, capsys, extra, message):
    code = main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), *ARGS, *extra,
                 "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing written


def test_under_a_flat_reward_the_pretraining_loss_alone_trains_and_falls(tiny_pipeline_dir, prompt_file, image_folder,
                                                                         tmp_path):
    # Every advantage is 0, so the whole gradient is ptx_coef x the denoising loss's: the two norms agree, and the
    # loss on the folder's four images falls as the adapters fit them.
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), *ARGS,
                 "--reward", "tests.helpers:flat_reward", "--set", "train.ptx_coef=1",
                 "--set", f"train.ptx_data={image_folder}", "--set", "train.ptx_batch=16",
                 "--set", "train.minibatches=2",
                 "--epochs", "12", "--out", str(out)]) == 0
    rows = metrics(out)
    for row in rows:
        assert row["ptx_grad_norm"] > 0
        assert row["ptx_grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-4)
    first, last = np.mean([r["ptx_loss"] for r in rows[:3]]), np.mean([r["ptx_loss"] for r in rows[-3:]])
    # measured 1.13 -> 1.00; at ptx_coef 1e-9 (a step under AdamW's epsilon) 1.16 -> 1.16
    assert last < first - 0.05, (first, last)


def test_a_run_with_the_pretraining_loss_resumes_bit_for_bit(tiny_pipeline_dir, prompt_file, image_folder, tmp_path):
    common = ["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), *ARGS,
              "--reward", "brightness",
              "--set", "train.ptx_coef=0.5", "--set", f"train.ptx_data={image_folder}", "--set", "train.ptx_batch=3"]
    assert main([*common, "--epochs", "3", "--out", str(tmp_path / "full")]) == 0
    assert main([*common, "--epochs", "1", "--out", str(tmp_path / "part")]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--set", "run.epochs=3"]) == 0
    full = load_file(tmp_path / "full" / "checkpoints" / "epoch_00003" / "trainable.safetensors")
    resumed = load_file(tmp_path / "part" / "checkpoints" / "epoch_00003" / "trainable.safetensors")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    assert [r["ptx_loss"] for r in metrics(tmp_path / "part")] == [r["ptx_loss"] for r in metrics(tmp_path / "full")]


def test_a_flow_model_trains_on_its_own_velocity_loss(sd3_dir, image_folder, tmp_path):
    # SD3: the transformer's velocity MSE at uniform sigmas (FlowPolicy.denoising_loss), the only gradient here
    lines = (image_folder / "metadata.jsonl").read_text().splitlines()[:3]  # captions in tiny_sd3's vocabulary
    (image_folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    out = tmp_path / "run"
    assert main(["train", "--model", str(sd3_dir), "--prompts", str(prompts), *FAST, "--set", "train.min_noise_std=0",
                 "--reward", "tests.helpers:flat_reward", "--set", "train.ptx_coef=1",
                 "--set", f"train.ptx_data={image_folder}", "--epochs", "2", "--out", str(out)]) == 0
    for row in metrics(out):
        assert np.isfinite(row["ptx_loss"]) and row["ptx_grad_norm"] > 0
        assert row["ptx_grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-4)


def test_noise_levels_stay_under_the_maximum():
    from diffrl.update import noise_levels

    everywhere = noise_levels(np.random.default_rng(0), 2000, 1.0)
    assert everywhere.dtype == np.float32 and 0 <= everywhere.min() and everywhere.max() < 1 and everywhere.max() > 0.99
    low = noise_levels(np.random.default_rng(0), 2000, 0.6)
    assert low.max() < 0.6 and low.max() > 0.59


def test_own_samples_draw_from_the_latest_pool_only():
    from diffrl.pretraining_data import OwnSamples

    pool = load_pretraining_data("own_samples", load_prompts("shapes:spatial_unseen-val").all())
    assert isinstance(pool, OwnSamples) and len(pool) == 0
    pool.refill(["a", "b"], torch.stack([torch.zeros(4, 2, 2), torch.ones(4, 2, 2)]))
    captions, latents = pool.draw(np.random.default_rng(0), 6)
    assert len(captions) == 6 and latents.shape == (6, 4, 2, 2)
    for caption, latent in zip(captions, latents):  # each latent stays with its own prompt
        assert latent.eq(0.0 if caption == "a" else 1.0).all()
    pool.refill(["c"], torch.full((1, 4, 2, 2), 2.0))
    assert pool.draw(np.random.default_rng(1), 3)[0] == ["c"] * 3


def test_own_samples_imitate_the_epochs_winners_and_nothing_under_a_flat_reward(tiny_pipeline_dir, prompt_file,
                                                                                 tmp_path):
    common = ["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), *ARGS,
              "--set", "train.ptx_coef=1", "--set", "train.ptx_data=own_samples", "--epochs", "2"]
    assert main([*common, "--reward", "brightness", "--out", str(tmp_path / "bright")]) == 0
    for row in metrics(tmp_path / "bright"):  # K = 2 with distinct rewards: one winner per group every epoch
        assert np.isfinite(row["ptx_loss"]) and row["ptx_grad_norm"] > 0
    # Every advantage 0: no winner, so no pretraining term and no update at all
    assert main([*common, "--reward", "tests.helpers:flat_reward", "--out", str(tmp_path / "flat")]) == 0
    for row in metrics(tmp_path / "flat"):
        assert "ptx_loss" not in row and row["grad_norm"] == 0


def test_noise_levels_stay_above_the_minimum():
    from diffrl.update import noise_levels

    high = noise_levels(np.random.default_rng(0), 2000, 1.0, 0.7)
    assert high.dtype == np.float32 and high.min() >= 0.7 and high.min() < 0.71 and high.max() < 1
    assert np.array_equal(noise_levels(np.random.default_rng(0), 50, 0.6, 0.0),
                          noise_levels(np.random.default_rng(0), 50, 0.6))  # 0: the stream of before
