"""image-lora's light half: its parameters, dataset check, request schema and what a diffusers
(Stable-Diffusion-format) folder is, read from ``model_index.json`` and file names alone.

The server reads these at import (``gureum models import`` of a diffusers folder) and at job
submission, so this module imports pydantic and the platform's light modules only, never
torch, diffusers or peft (``recipes.image_lora`` does).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gureum.recipes.base import DatasetMismatch, RecipeParams
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.hf_folder import PICKLED, NotHuggingFace
from gureum.recipes.io_schemas import INT64_MAX, INT64_MIN, MAX_BUDGET_S
from gureum.recipes.params import MAX_GUIDANCE, MAX_SAMPLE_STEPS, lora_base

NAME = "image-lora"
MODEL_INDEX = "model_index.json"
# The components a text-to-image pipeline needs, and those whose weights must be safetensors.
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder")
CAPTION_FILES = ("metadata.jsonl", "captions.jsonl")  # as diffusers' ImageFolder reads them
MIN_SIZE, MAX_SIZE, SIZE_STEP = 16, 1024, 8  # width/height of a served picture, in pixels
MAX_PROMPT_CHARS = 4000  # the encoder reads a few dozen tokens; longer text is not kept
MAX_LORA_IMAGES = 8  # pictures one input may ask for


def diffusers_problem(index: Mapping[str, Any], paths: Iterable[str]) -> str | None:
    """Why a folder with this ``model_index.json`` and these file paths is not a
    Stable-Diffusion-format folder served without code; None when it is one."""
    if not isinstance(index.get("_class_name"), str):
        return f'{MODEL_INDEX} names no "_class_name" (not saved by a diffusers pipeline)'
    missing = [c for c in COMPONENTS if not isinstance(index.get(c), list)]
    if missing:
        return (
            f"{MODEL_INDEX} lists no {', '.join(missing)}: image-lora needs a text-to-image "
            f"pipeline with {', '.join(COMPONENTS)}"
        )
    names = [p.strip("/").lower() for p in paths]
    pickled = sorted(p for p in names if p.endswith(PICKLED))
    if pickled:
        return (
            f"pickle weights ({', '.join(pickled[:5])}) run code when loaded; only safetensors "
            "weights are accepted (save with safe_serialization=True)"
        )
    unweighted = [
        c
        for c in WEIGHTED
        if not any(n.startswith(f"{c}/") and n.endswith(".safetensors") for n in names)
    ]
    if unweighted:
        return f"no .safetensors weights in {', '.join(f'{c}/' for c in unweighted)}"
    return None


def check_diffusers(index: Mapping[str, Any], paths: Iterable[str]) -> str:
    """The recipe that serves a diffusers folder (image-lora, without an adapter), or
    ``NotHuggingFace`` saying why it is not one."""
    problem = diffusers_problem(index, paths)
    if problem is not None:
        raise NotHuggingFace(problem)
    return NAME


def named_base(config: Mapping[str, Any]) -> str | None:
    """The base model an image-lora ``config.json`` names (a registry reference, checked)."""
    if config.get("recipe") != NAME:
        return None
    return lora_base({"mode": "lora", "base_model": config.get("base_model")})


class ImageLoraParams(RecipeParams):
    """LoRA adapters on the base's UNet attention projections; everything else stays frozen."""

    base_model: str = Field(
        ...,
        description="a diffusers (Stable-Diffusion-format) folder of this workspace's registry, "
        "NAME or NAME:VERSION (`gureum models import NAME FOLDER`), never a path",
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}(:([1-9][0-9]{0,9}|latest|production))?$",
    )
    epochs: int = Field(5, ge=1, le=10_000)
    batch_size: int = Field(4, ge=1, le=256)
    lr: float = Field(1e-3, gt=0, le=1)
    resolution: int = Field(
        32, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=SIZE_STEP, description="training picture side"
    )
    max_steps: int = Field(0, ge=0, le=1_000_000, description="stop after these steps; 0: all")
    lora_r: int = Field(4, ge=1, le=256)
    lora_alpha: int = Field(4, ge=1, le=1024)
    sample_steps: int = Field(25, ge=1, le=MAX_SAMPLE_STEPS, description="default steps")
    guidance: float = Field(5.0, ge=0, le=MAX_GUIDANCE, description="default guidance scale")
    time_budget_s: float = Field(
        60.0, gt=0, le=MAX_BUDGET_S, description="longest one served generation may take"
    )


def check_lora_dataset(ds: LocalDataset, params: ImageLoraParams | None = None) -> None:
    """Pictures in the train split; captions come from caption files or class folders."""
    if not ds.select("image", "train"):
        raise DatasetMismatch(
            f"{NAME} needs pictures (with a metadata.jsonl/captions.jsonl of "
            f'{{"file_name", "text"}} rows, or in class folders); got {ds.describe()}'
        )


class TextToImageRequest(BaseModel):
    """One generation; ``steps``, ``guidance`` and ``time_budget_s`` default to the model's,
    width and height to its training resolution. A prompt longer than the text encoder reads
    is truncated, and the output says so (``truncated``)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    count: int = Field(1, ge=1, le=MAX_LORA_IMAGES)
    seed: int = Field(0, ge=INT64_MIN, le=INT64_MAX)
    steps: int | None = Field(None, ge=1, le=MAX_SAMPLE_STEPS, description="denoising steps")
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE, description="CFG scale")
    width: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=SIZE_STEP)
    height: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=SIZE_STEP)
    time_budget_s: float | None = Field(
        None, gt=0, le=MAX_BUDGET_S, description="at most the model's; over it: 504, not billed"
    )


class TextToImages(BaseModel):
    prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    truncated: bool = Field(description="the prompt was cut to the text encoder's length")
    warning: str | None = None
    format: str = "png"
    images: list[str] = Field(description="base64 PNG files")


LIMITS = {
    "prompt": f"a string of at most {MAX_PROMPT_CHARS} characters",
    "negative_prompt": f"a string of at most {MAX_PROMPT_CHARS} characters",
    "count": f"an integer from 1 to {MAX_LORA_IMAGES}",
    "seed": "a 64-bit integer",
    "steps": f"an integer from 1 to {MAX_SAMPLE_STEPS}",
    "guidance": f"a number from 0 to {MAX_GUIDANCE:g}",
    "width": f"a multiple of {SIZE_STEP} from {MIN_SIZE} to {MAX_SIZE}",
    "height": f"a multiple of {SIZE_STEP} from {MIN_SIZE} to {MAX_SIZE}",
    "time_budget_s": f"a number of seconds over 0, at most {MAX_BUDGET_S:g}",
}
