"""Small Stable Diffusion pipelines built from configs, with no download.

Used by the tests (random weights) and by ShapesWorld pretraining (trained weights).
The components are exactly the SD 1.x/2.x classes, so every code path that runs on
them is the one that runs on Stable Diffusion 2.0.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]


def words_of(texts: list[str]) -> list[str]:
    """The lower-case word vocabulary of `texts`, as CLIP's pre-tokenizer would split it."""
    return sorted({w for t in texts for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", t.lower())})


def write_word_tokenizer(words: list[str], directory: str | Path) -> CLIPTokenizer:
    """Write a CLIP BPE tokenizer whose vocabulary holds each of `words` as one token.

    CLIP's BPE ends words with `</w>`; we add every character (plain and word-final)
    plus merges that build each word, so each word in `words` becomes a single token and
    unknown words still tokenize (character by character). Merges are learned the way BPE
    training does it, each one applied to every word at once: a merge list made of
    independent per-word chains would let one word's merge ("a n" from "and") fire inside
    another word ("orange") first and leave it in pieces.
    In transformers 5, building CLIPTokenizer(vocab_file=...) directly can give a broken
    tokenizer, so we write files and load with from_pretrained.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    # Byte-level alphabet would be 256 symbols; the printable ASCII subset is enough here.
    for code in range(33, 127):
        add(chr(code))
        add(chr(code) + "</w>")
    merges: list[str] = []
    pieces = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in dict.fromkeys(words)}
    for word in pieces:
        while len(pieces[word]) > 1:
            left, right = pieces[word][:2]
            merges.append(f"{left} {right}")
            add(left + right)
            for other, symbols in pieces.items():
                pieces[other] = _merge_pair(symbols, left, right)
    for token in SPECIAL_TOKENS:
        add(token)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 16, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
    }))
    return CLIPTokenizer.from_pretrained(directory)


def _merge_pair(symbols: list[str], left: str, right: str) -> list[str]:
    """`symbols` with every adjacent (left, right) joined, scanning left to right as BPE does."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
            out.append(left + right)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def build_tiny_pipeline(
    directory: str | Path,
    words: list[str],
    *,
    sample_size: int = 32,
    block_channels: tuple[int, ...] = (32, 64),
    cross_attention_dim: int = 32,
    latent_channels: int = 4,
    vae_channels: tuple[int, ...] = (32, 64),
    text_layers: int = 2,
    max_length: int = 16,
    seed: int = 0,
    bidirectional_text: bool = False,
) -> StableDiffusionPipeline:
    """Build a random SD-architecture pipeline and `save_pretrained` it to `directory`.

    The VAE downsamples by 2**(len(vae_channels)-1): (32, 64) maps 32x32 images to
    16x16 latents; (32, 64, 64) to 8x8.
    """
    import torch

    torch.manual_seed(seed)
    directory = Path(directory)
    tokenizer = write_word_tokenizer(words, directory / "tokenizer")
    tokenizer.model_max_length = max_length
    sizes = dict(vocab_size=len(tokenizer), hidden_size=cross_attention_dim, intermediate_size=2 * cross_attention_dim,
                 num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=max_length,
                 pad_token_id=tokenizer.pad_token_id)
    if bidirectional_text:  # every token sees the whole prompt (CLIP's text model is causal); plain SD pipelines load it
        # its pooler is unused (SD reads the hidden states) but saved, so loading warns of nothing
        text_encoder = BertModel(BertConfig(**sizes, type_vocab_size=1))
    else:
        text_encoder = CLIPTextModel(CLIPTextConfig(**sizes, bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id))
    latent_size = sample_size // 2 ** (len(vae_channels) - 1)
    n = len(block_channels)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=block_channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels), layers_per_block=1,
        norm_num_groups=8, sample_size=sample_size,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return pipe
