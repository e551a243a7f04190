"""Model-backed rewards on tiny random models saved with save_pretrained (offline, CPU).

The real loading path runs (`from_pretrained` on a local directory); the weights are random, so
these tests check plumbing, shapes, ranges, batching invariance and agreement with an
independent computation, not the quality of any score.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from diffrl.errors import DiffrlError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = ["a", "green", "bench", "red", "car", "dog", "cat", "blue", "bowl", "photo", "of"]
PROMPTS = ["a green bench and a red car", "a dog on the left of a cat", "a blue bowl", "a red dog",
           "a cat near a car", "a photo of a dog", "a green car and a blue cat", "a bench below a bowl",
           "a cat on the top of a dog"]


def tiny_text(tokenizer_len: int, tok) -> dict:
    return dict(vocab_size=tokenizer_len, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                   patch_size=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 shared cores: two torch threads next to another busy process run tiny models ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (len(PROMPTS), 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from diffrl.models.tiny import write_word_tokenizer

    directory = tmp_path_factory.mktemp("clip")
    tok = write_word_tokenizer(WORDS, directory)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=tiny_text(len(tok), tok), vision_config=TINY_VISION,
                         projection_dim=16)).save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    from transformers import BertTokenizerFast, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    directory = tmp_path_factory.mktemp("blip")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "?", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast.from_pretrained(directory)
    n = len(tok)  # BLIP appends [DEC] (bos) and [ENC] after BERT's vocabulary
    text = dict(vocab_size=n + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=32, encoder_hidden_size=32, bos_token_id=n, pad_token_id=0, sep_token_id=3)
    torch.manual_seed(0)
    BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=TINY_VISION)).save_pretrained(directory)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory):
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from diffrl.models.tiny import write_word_tokenizer

    directory = tmp_path_factory.mktemp("owlv2")
    tok = write_word_tokenizer(WORDS, directory)
    torch.manual_seed(0)
    # OWL's class head maps image tokens to the text width and compares them with projected queries:
    # projection_dim must equal the text hidden size.
    Owlv2ForObjectDetection(Owlv2Config(text_config=tiny_text(len(tok), tok), vision_config=TINY_VISION,
                                        projection_dim=32)).save_pretrained(directory)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}),
                   tokenizer=tok).save_pretrained(directory)
    return str(directory)


# --- registry --------------------------------------------------------------------------------------


def test_model_rewards_register_without_importing_transformers():
    code = ("import sys; from diffrl.rewards import reward_names; names = reward_names(); "
            "print(names); assert 'transformers' not in sys.modules, 'transformers imported eagerly'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ["aesthetic", "clip-score", "pickscore", "vqa-binding", "spatial", "imagereward", "hps"]:
        assert f"'{name}'" in out.stdout


@pytest.mark.parametrize("name", ["imagereward", "hps"])
def test_unsupported_rewards_raise_one_line(name):
    from diffrl.rewards import get_reward

    with pytest.raises(DiffrlError) as err:
        get_reward(name)
    assert "\n" not in str(err.value) and "not supported" in str(err.value)


def test_factory_reads_model_dir_from_env(monkeypatch, clip_dir, images):
    from diffrl.rewards import get_reward

    monkeypatch.setenv("DIFFRL_CLIP_MODEL", clip_dir)
    monkeypatch.setenv("DIFFRL_REWARD_DEVICE", "cpu")
    monkeypatch.setenv("DIFFRL_REWARD_BATCH_SIZE", "4")
    reward = get_reward("clip-score")
    assert reward.batch_size == 4 and reward.device == "cpu"
    assert reward(images[:2], PROMPTS[:2], [{}, {}]).shape == (2,)


def test_missing_weights_give_one_line_error(tmp_path):
    from diffrl.rewards.models.clip import ClipScore

    with pytest.raises(DiffrlError, match="DIFFRL_CLIP_MODEL") as err:
        ClipScore(model_id=str(tmp_path / "nowhere"), device="cpu")
    assert "\n" not in str(err.value)


# --- CLIP family -----------------------------------------------------------------------------------


def test_clip_score_is_the_diagonal_cosine(clip_dir, images):
    from transformers import CLIPModel, CLIPProcessor

    from diffrl.rewards.models.clip import ClipScore

    scores = ClipScore(model_id=clip_dir, device="cpu", batch_size=8)(images, PROMPTS, [{}] * len(PROMPTS))
    assert scores.shape == (len(PROMPTS),) and scores.dtype == np.float64
    assert np.all(np.abs(scores) <= 1 + 1e-6)
    # Independent path: CLIPModel.forward's logits_per_image = exp(logit_scale) * cos, N x N.
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    from PIL import Image

    inputs = processor(text=PROMPTS, images=[Image.fromarray(i) for i in images], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    expected = (logits.diagonal() / model.logit_scale.exp()).detach().double().numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_clip_score_batching_and_determinism(clip_dir, images):
    from diffrl.rewards.models.clip import ClipScore

    one = ClipScore(model_id=clip_dir, device="cpu", batch_size=1)(images, PROMPTS, [{}] * len(PROMPTS))
    eight = ClipScore(model_id=clip_dir, device="cpu", batch_size=8)
    np.testing.assert_allclose(one, eight(images, PROMPTS, [{}] * len(PROMPTS)), atol=1e-5)
    np.testing.assert_array_equal(eight(images, PROMPTS, [{}] * 9), eight(images, PROMPTS, [{}] * 9))


def test_clip_score_accepts_injected_model(clip_dir, images):
    from transformers import CLIPModel, CLIPProcessor

    from diffrl.rewards.models.clip import ClipScore

    reward = ClipScore(model=CLIPModel.from_pretrained(clip_dir), processor=CLIPProcessor.from_pretrained(clip_dir),
                       device="cpu")
    assert not reward.model.training and not any(p.requires_grad for p in reward.model.parameters())
    np.testing.assert_allclose(reward(images[:3], PROMPTS[:3], [{}] * 3),
                               ClipScore(model_id=clip_dir, device="cpu")(images[:3], PROMPTS[:3], [{}] * 3), atol=1e-6)


def test_open_clip_backend_without_package_is_a_clear_error():
    import importlib.util

    from diffrl.rewards.models.clip import ClipScore

    if importlib.util.find_spec("open_clip") is not None:
        pytest.skip("open_clip installed")
    with pytest.raises(DiffrlError, match="open-clip-torch"):
        ClipScore(model_id="open_clip:ViT-H-14/laion2b_s32b_b79k", device="cpu")


def test_pickscore_is_logit_scale_times_cosine(clip_dir, images):
    from diffrl.rewards.models.clip import ClipScore, PickScore

    pick = PickScore(model_id=clip_dir, processor_id=clip_dir, device="cpu", batch_size=4)
    scores = pick(images, PROMPTS, [{}] * len(PROMPTS))
    cos = ClipScore(model_id=clip_dir, device="cpu")(images, PROMPTS, [{}] * len(PROMPTS))
    np.testing.assert_allclose(scores, np.exp(pick.model.logit_scale.item()) * cos, rtol=1e-5, atol=1e-6)


def test_aesthetic_head_loads_pth_and_safetensors(clip_dir, images, tmp_path):
    from safetensors.torch import save_file

    from diffrl.rewards.models.clip import AestheticMLP, AestheticScore

    torch.manual_seed(1)
    head = AestheticMLP(16)
    torch.save(head.state_dict(), tmp_path / "head.pth")  # the original file is a plain state dict
    save_file(head.state_dict(), str(tmp_path / "head.safetensors"))
    a = AestheticScore(model_id=clip_dir, head_path=str(tmp_path / "head.pth"), device="cpu", batch_size=1)
    b = AestheticScore(model_id=clip_dir, head_path=str(tmp_path / "head.safetensors"), device="cpu", batch_size=8)
    sa, sb = a(images, PROMPTS, [{}] * 9), b(images, PROMPTS, [{}] * 9)
    assert sa.shape == (9,) and np.all(np.isfinite(sa))
    np.testing.assert_allclose(sa, sb, atol=1e-5)
    # Independent: MLP on the L2-normalized projected image embedding.
    from PIL import Image

    pixels = a.processor(images=[Image.fromarray(i) for i in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        emb = a.model.vision_model(pixel_values=pixels).pooler_output
        emb = a.model.visual_projection(emb)
        expected = head.eval()(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1).double().numpy()
    np.testing.assert_allclose(sa, expected, atol=1e-5)
    assert list(head.state_dict()) == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]


def test_aesthetic_errors(clip_dir, tmp_path, monkeypatch):
    from diffrl.rewards.models.clip import AestheticMLP, AestheticScore

    monkeypatch.delenv("DIFFRL_AESTHETIC_HEAD", raising=False)
    with pytest.raises(DiffrlError, match="DIFFRL_AESTHETIC_HEAD"):
        AestheticScore(model_id=clip_dir, device="cpu")
    torch.save(AestheticMLP(768).state_dict(), tmp_path / "l14.pth")  # ViT-L/14 head on a 16-d model
    with pytest.raises(DiffrlError, match="16-d"):
        AestheticScore(model_id=clip_dir, head_path=str(tmp_path / "l14.pth"), device="cpu")
    with pytest.raises(DiffrlError, match="not found"):
        AestheticScore(model_id=clip_dir, head_path=str(tmp_path / "missing.pth"), device="cpu")


def test_bad_images_rejected(clip_dir):
    from diffrl.rewards.models.clip import ClipScore

    reward = ClipScore(model_id=clip_dir, device="cpu")
    with pytest.raises(DiffrlError, match="uint8"):
        reward(np.zeros((2, 8, 8, 3), dtype=np.float32), ["a", "b"], [{}, {}])
    with pytest.raises(DiffrlError, match="prompts"):
        reward(np.zeros((2, 8, 8, 3), dtype=np.uint8), ["a"], [{}])


# --- VQA binding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, phrases", [
    ("a green bench and a red car", ["a green bench", "a red car"]),
    ("a blue bowl", ["a blue bowl"]),
    ("A bathroom with green tile and a red shower curtain.", ["A bathroom", "green tile", "a red shower curtain"]),
    ("two white sheep, a black goat and a white goat in a field",
     ["two white sheep", "a black goat", "a white goat in a field"]),
    ("", []),
])
def test_noun_phrases(prompt, phrases):
    from diffrl.rewards.models.vqa import noun_phrases, questions_for

    assert noun_phrases(prompt) == phrases
    assert questions_for(prompt) == [f"{p}?" for p in phrases]


class StubVQA:
    """Known answers: P(yes) by question; records what it was asked."""

    def __init__(self, table: dict[str, float]):
        self.table, self.asked = table, []

    def yes_probability(self, images, questions):
        assert len(images) == len(questions)
        self.asked.append(list(questions))
        return np.array([self.table[q] for q in questions])


def test_vqa_binding_multiplies_yes_probabilities():
    from diffrl.rewards.models.vqa import VqaBinding

    stub = StubVQA({"a green bench?": 0.8, "a red car?": 0.5, "a blue bowl?": 0.3})
    images = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    scores = VqaBinding(vqa=stub)(images, ["a green bench and a red car", "a blue bowl", "..."], [{}] * 3)
    np.testing.assert_allclose(scores, [0.4, 0.3, 1.0])  # no noun phrase scores 1, as in T2I-CompBench
    assert stub.asked == [["a green bench?", "a red car?", "a blue bowl?"]]


def test_blip_yes_probability_matches_forward_loss(blip_dir, images):
    from transformers import BlipForQuestionAnswering, BlipProcessor

    from diffrl.rewards.models.vqa import BlipVQA

    raw = BlipVQA(model_id=blip_dir, device="cpu", normalize=False)
    questions = ["a green bench?", "a red car and a blue bowl?"]
    probs = raw.yes_probability(images[:2], questions)
    # Independent: BlipForQuestionAnswering.forward with labels [DEC] yes gives loss = -log p(yes | question).
    model = BlipForQuestionAnswering.from_pretrained(blip_dir).eval()
    processor = BlipProcessor.from_pretrained(blip_dir)
    yes = processor.tokenizer.convert_tokens_to_ids("yes")
    from PIL import Image

    for image, question, p in zip(images[:2], questions, probs):
        inputs = processor(images=Image.fromarray(image), text=question, return_tensors="pt")
        labels = torch.tensor([[model.config.text_config.bos_token_id, yes]])
        with torch.no_grad():
            loss = model(**inputs, labels=labels).loss
        assert p == pytest.approx(float(torch.exp(-loss)), rel=1e-4)


def test_blip_vqa_binding_end_to_end(blip_dir, images):
    from diffrl.rewards.models.vqa import VqaBinding

    one = VqaBinding(model_id=blip_dir, device="cpu", batch_size=1)(images, PROMPTS, [{}] * 9)
    eight = VqaBinding(model_id=blip_dir, device="cpu", batch_size=8)
    scores = eight(images, PROMPTS, [{}] * 9)
    assert scores.shape == (9,) and np.all((scores >= 0) & (scores <= 1))
    np.testing.assert_allclose(one, scores, atol=1e-5)
    np.testing.assert_array_equal(scores, eight(images, PROMPTS, [{}] * 9))


# --- spatial ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, parsed", [
    ("a giraffe next to a lamp", ("giraffe", "near", "lamp")),
    ("a girl on the top of a frog", ("girl", "top", "frog")),
    ("a mouse on side of a key", ("mouse", "near", "key")),
    ("a bee on the right of a refrigerator", ("bee", "right", "refrigerator")),
    ("a bicycle on the bottom of a girl", ("bicycle", "bottom", "girl")),
    ("A red car on top of the blue bench.", ("red car", "top", "blue bench")),
    ("a dog on the left of a cat", ("dog", "left", "cat")),
])
def test_parse_spatial(prompt, parsed):
    from diffrl.rewards.models.spatial import parse_spatial

    assert tuple(parse_spatial(prompt)) == parsed


def test_parse_spatial_rejects_prompts_without_relation():
    from diffrl.rewards.models.spatial import parse_spatial

    with pytest.raises(DiffrlError, match="relation"):
        parse_spatial("a green bench and a red car")


def test_position_score_by_hand():
    from diffrl.rewards.models.spatial import position_score

    left, right = (0.0, 0.4, 0.2, 0.6), (0.7, 0.4, 0.9, 0.6)  # centres (0.1, 0.5) and (0.8, 0.5)
    assert position_score("left", left, right) == 1.0
    assert position_score("right", left, right) == 0.0
    assert position_score("right", right, left) == 1.0
    top, bottom = (0.4, 0.0, 0.6, 0.2), (0.4, 0.7, 0.6, 0.9)
    assert position_score("top", top, bottom) == 1.0 and position_score("bottom", bottom, top) == 1.0
    assert position_score("top", bottom, top) == 0.0
    assert position_score("left", top, bottom) == 0.0  # offset is mostly vertical
    # Overlapping boxes: IoU = 0.5 / 1.5 = 1/3 >= 0.1, so 0.1 / (1/3) = 0.3.
    a, b = (0.0, 0.0, 1.0, 1.0), (0.5, 0.0, 1.5, 1.0)
    assert position_score("left", a, b) == pytest.approx(0.3)
    # Near: within 150/512 on either axis is 1; otherwise threshold / max offset.
    assert position_score("near", (0.0, 0.0, 0.1, 0.1), (0.2, 0.9, 0.3, 1.0)) == 1.0
    far = position_score("near", (0.0, 0.0, 0.1, 0.1), (0.8, 0.8, 0.9, 0.9))
    assert far == pytest.approx((150 / 512) / 0.8)


class StubDetector:
    def __init__(self, found):
        self.found = found

    def detect(self, images, queries):
        return [[self.found.get(q) for q in qs] for qs in queries]


def test_spatial_score_t2i_compbench_combination():
    from diffrl.rewards.models.spatial import Detection, SpatialScore

    dog, cat = Detection(0.9, (0.0, 0.4, 0.2, 0.6)), Detection(0.8, (0.7, 0.4, 0.9, 0.6))
    images = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    prompts = ["a dog on the left of a cat", "a dog on the right of a cat", "a dog next to a bowl"]
    scores = SpatialScore(detector=StubDetector({"dog": dog, "cat": cat}))(images, prompts, [{}] * 3)
    # 0.25 * 0.9 + 0.25 * 0.8 + 0.5 * 1; wrong side: 0.425 < 0.5 -> 0; one object: 0.225 -> 0.
    np.testing.assert_allclose(scores, [0.925, 0.0, 0.0])
    ungated = SpatialScore(detector=StubDetector({"dog": dog, "cat": cat}), gate=0.0)(images, prompts, [{}] * 3)
    np.testing.assert_allclose(ungated, [0.925, 0.425, 0.225])


def test_owlv2_detector_and_spatial_end_to_end(owl_dir, images):
    from diffrl.rewards.models.spatial import OwlDetector, SpatialScore

    spatial_prompts = [p for p in PROMPTS if any(r in p for r in ("left", "near", "below", "top"))]
    imgs = images[: len(spatial_prompts)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no torchvision/scipy here: the torch resize fallback runs
        one = OwlDetector(model_id=owl_dir, device="cpu", batch_size=1, threshold=0.0)
        eight = OwlDetector(model_id=owl_dir, device="cpu", batch_size=8, threshold=0.0)
        queries = [["dog", "cat"], ["car"], ["bench", "bowl"], ["cat", "dog"]]
        a, b = one.detect(imgs, queries), eight.detect(imgs, queries)
        assert [len(r) for r in b] == [2, 1, 2, 2]
        for row_a, row_b in zip(a, b):
            for da, db in zip(row_a, row_b):
                assert 0.0 <= db.score <= 1.0 and len(db.box) == 4
                assert da.score == pytest.approx(db.score, abs=1e-5)
                np.testing.assert_allclose(da.box, db.box, atol=1e-5)
        scores = SpatialScore(detector=eight)(imgs, spatial_prompts, [{}] * len(imgs))
        strict = OwlDetector(model=eight.model, processor=eight.processor, device="cpu", threshold=1.01)
        assert all(d is None for row in strict.detect(imgs, queries) for d in row)
    assert scores.shape == (len(imgs),)
    assert np.all((scores == 0) | ((scores >= 0.5) & (scores <= 1)))


def test_owlv2_torch_preprocessing_shape(owl_dir):
    from transformers import Owlv2Processor

    from diffrl.rewards.models.spatial import owlv2_pixels

    processor = Owlv2Processor.from_pretrained(owl_dir)
    x = owlv2_pixels(np.full((2, 20, 40, 3), 255, dtype=np.uint8), processor.image_processor)
    assert x.shape == (2, 3, 32, 32)
    mean, std = np.array(processor.image_processor.image_mean), np.array(processor.image_processor.image_std)
    np.testing.assert_allclose(x[0, :, 2, 16].numpy(), (1 - mean) / std, atol=1e-4)  # image rows: white
    np.testing.assert_allclose(x[0, :, 30, 16].numpy(), (0 - mean) / std, atol=1e-4)  # zero padding below
