"""A tiny random Stable Diffusion 3 pipeline built from configs, with no download.

The components are SD3's classes (MMDiT transformer, two CLIP text encoders with projection,
a T5 encoder, a 4-channel AutoencoderKL with SD3's shift/scaling factors, the flow-matching
Euler scheduler with shift 3), so the code paths that run on it are those of SD3; only the
sizes are small. Shapes that must agree, as StableDiffusion3Pipeline.encode_prompt uses them:
    pooled_projection_dim = clip_1.projection_dim + clip_2.projection_dim   (pooled = concat)
    joint_attention_dim   = t5.d_model >= clip_1.hidden + clip_2.hidden     (CLIP concat, zero-padded)
    caption_projection_dim = num_attention_heads * attention_head_dim      (the MMDiT width)
"""
from __future__ import annotations

import tempfile

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel,
                          T5TokenizerFast)  # in transformers 5 T5TokenizerFast is T5Tokenizer (tokenizers-backed)

from diffrl.models.tiny import write_word_tokenizer

WORDS = ["a", "an", "red", "green", "blue", "yellow", "circle", "square", "triangle", "and", "two", "above", "cat",
         "dog"]


def t5_word_tokenizer(words: list[str], max_length: int = 32) -> T5TokenizerFast:
    """A T5 (SentencePiece-Unigram) tokenizer with each of `words` as one piece, built in memory.

    Unknown words fall back to single characters. The vocabulary follows T5's layout:
    <pad>=0, </s>=1, <unk>=2, then the pieces; no <extra_id_*> sentinels (encoder-only use).
    """
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in dict.fromkeys(words)]
    pieces += [(chr(c), -5.0) for c in range(33, 127)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)


def tiny_sd3_pipeline(words: list[str] = WORDS, seed: int = 0) -> StableDiffusion3Pipeline:
    """Random SD3-architecture pipeline: 32x32 images, 8x8x4 latents, 16 tokens of 2x2 patches.

    Takes other sizes up to 64x64 (pos_embed_max_size 16 patches). The pipeline pads T5 prompts to its
    `max_sequence_length` (256 by default); passing e.g. 32 makes calls cheaper, any length works.
    """
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as directory:  # CLIPTokenizer loads reliably only from files
        write_word_tokenizer(words, directory)
        tokenizer, tokenizer_2 = CLIPTokenizer.from_pretrained(directory), CLIPTokenizer.from_pretrained(directory)
    tokenizer_3 = t5_word_tokenizer(words)

    def clip(hidden: int, projection: int) -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=projection,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))

    text_encoder, text_encoder_2 = clip(8, 8), clip(8, 16)  # different sizes, as SD3's CLIP-L and CLIP-G
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_3), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id, decoder_start_token_id=tokenizer_3.pad_token_id,
    ))
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8 + 16,
        pos_embed_max_size=16,
    )
    vae = AutoencoderKL(  # SD3's VAE has no quant convs and normalises latents by (z - shift) * scale
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=1.5305, shift_factor=0.0609,
    )
    for module in (text_encoder, text_encoder_2, text_encoder_3, transformer, vae):
        module.eval()  # as from_pretrained returns them: T5's dropout would make the output random
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
