"""A tiny Stable-Diffusion-shaped pipeline built from configs, offline, as diffusers' own tests
build theirs (``get_dummy_components``): a few-thousand-weight UNet2DConditionModel, AutoencoderKL
and CLIP text encoder, and a CLIP tokenizer over a byte-level vocabulary written here.

It is what the image-lora tests, the LoRA-size benchmark and an offline demo fine-tune: the same
diffusers folder layout as a real base model (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/; safetensors), small enough for a CPU in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: one printable character per byte, as CLIP's BPE reads it."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A byte-level BPE vocabulary (every byte, alone and word-final) and a few merges."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = [BOS, EOS, *chars, *(c + "</w>" for c in chars)]
    merges = ["e d</w>", "r e", "d r", "dr e", "s s</w>", "s h", "i r"]
    vocab += [m.replace(" ", "") for m in merges]
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(dict.fromkeys(vocab))}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def tiny_pipeline(work: Path, max_length: int = 16, seed: int = 0) -> StableDiffusionPipeline:
    """The pipeline with untrained weights fixed by ``seed``; prompts over ``max_length``
    tokens are what the text encoder cannot read."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    vocab_file, merges_file = write_tokenizer_files(work / "tiny-vocab")
    merges: Any = [tuple(m.split()) for m in merges_file.read_text().splitlines()[1:]]
    tokenizer = CLIPTokenizer(
        vocab=json.loads(vocab_file.read_text()),
        merges=merges,  # pairs: transformers 5 types them as strings, the BPE wants tuples
        model_max_length=max_length,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=max_length,
            vocab_size=len(tokenizer),
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(folder: Path, max_length: int = 16, seed: int = 0) -> Path:
    """The tiny pipeline saved as a diffusers folder of safetensors weights."""
    pipe = tiny_pipeline(folder.parent / f".{folder.name}-build", max_length, seed)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder
