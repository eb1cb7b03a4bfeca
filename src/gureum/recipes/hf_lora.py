"""Fine-tuning a Hugging Face causal LM with LoRA adapters (peft).

Models are only ever read from a local folder (``local_files_only``; ``HF_HUB_OFFLINE`` set)
that the platform materialised from the job's own workspace registry (``gureum models
import``); a job never reaches for a hub or a folder a parameter names. The fine-tuned model
folder keeps the adapter, the tokenizer and a copy of its base (hard links where possible);
``export`` merges the adapter into the base for a plain Hugging Face folder.

This module imports transformers and peft (several seconds, and optional packages), so the
text-generator recipe imports it only when a ``base_model`` is given.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from gureum.recipes.base import RecipeError
from gureum.recipes.hf_generate import quiet

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import transformers
from transformers.pytorch_utils import Conv1D

ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
MERGED_DIR = "hf"


def load_base(folder: Path, device: torch.device) -> tuple[nn.Module, Any]:
    if not (folder / "config.json").is_file():
        raise RecipeError(
            "the base model is not a Hugging Face model folder (config.json, weights, "
            "tokenizer at its root)"
        )
    with quiet():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return cast(nn.Module, model).to(device), tokenizer


def add_lora(model: nn.Module, r: int, alpha: int, dropout: float) -> nn.Module:
    """Wrap ``model`` with LoRA adapters; only they are trained."""
    # GPT-2 style models keep their projections in Conv1D, whose weights are transposed.
    fan_in_fan_out = any(isinstance(m, Conv1D) for m in model.modules())

    def config(targets: str | None) -> peft.LoraConfig:
        return peft.LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            fan_in_fan_out=fan_in_fan_out,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )

    with quiet():
        try:  # peft knows the attention projections of common architectures
            wrapped = peft.get_peft_model(model, config(None))
        except ValueError:
            wrapped = peft.get_peft_model(model, config("all-linear"))
    return cast(nn.Module, wrapped)


def save(model: nn.Module, tokenizer: Any, model_dir: Path) -> None:
    with quiet():
        cast(Any, model).save_pretrained(model_dir / ADAPTER_DIR)
        tokenizer.save_pretrained(model_dir / TOKENIZER_DIR)


def link_folder(src: Path, dest: Path) -> None:
    """``dest`` as a copy of ``src``, hard-linked file by file where the filesystem allows (the
    base model's files are not duplicated on disk, nor in the store, which is by content)."""
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)


def load_finetuned(model_dir: Path, base: Path, device: torch.device) -> tuple[nn.Module, Any]:
    model, _ = load_base(base, device)
    with quiet():
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            model_dir / TOKENIZER_DIR, local_files_only=True
        )
        tuned = peft.PeftModel.from_pretrained(model, model_dir / ADAPTER_DIR)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return cast(nn.Module, tuned).to(device).eval(), tokenizer


def export_merged(model_dir: Path, base: Path, dest: Path) -> list[Path]:
    """The base with the adapter merged in, saved as a plain Hugging Face folder."""
    tuned, tokenizer = load_finetuned(model_dir, base, torch.device("cpu"))
    out = dest / MERGED_DIR
    with quiet():
        merged = cast(Any, tuned).merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return sorted(p for p in out.rglob("*") if p.is_file())
