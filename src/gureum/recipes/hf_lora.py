"""Fine-tuning a Hugging Face causal LM from a local folder with LoRA adapters (peft).

Models are only ever read from a local folder (``local_files_only``; ``HF_HUB_OFFLINE`` set):
the platform materialises registered models (``gureum models import``) into folders, and a job
must never reach for a hub. The fine-tuned model folder keeps the adapter and the tokenizer and
names its base; ``export`` merges the adapter into the base for a self-contained copy.

This module imports transformers and peft (several seconds, and optional packages), so the
text-generator recipe imports it only when a ``base_model`` is given.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from gureum.recipes.base import RecipeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import transformers
from transformers.pytorch_utils import Conv1D

transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
MERGED_DIR = "hf"


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the deprecation notices transformers and peft raise about each other."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft)\b")
        yield


def load_base(path: str | Path, device: torch.device) -> tuple[nn.Module, Any]:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise RecipeError(
            f"base_model must be a local Hugging Face model folder (config.json, weights, "
            f"tokenizer); {folder} is not one"
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


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings cover, when it has a limit."""
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) else None


def window_loss(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    with quiet():
        out = model(input_ids=window, labels=window)
    return cast(torch.Tensor, out.loss)


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    with quiet():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


Steps = Generator[tuple[str, int], None, str]


@torch.no_grad()
def stream(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new: int,
    temperature: float,
    seed: int,
    device: torch.device,
) -> Steps:
    """Sample token by token with the key/value cache, yielding ``(text, tokens)`` and returning
    the finish reason ("stop" at end-of-text, else "length").

    Our own loop rather than ``model.generate`` with a streamer: that needs a thread per request
    and the global RNG, where this draws from a per-request CPU generator, so one seed gives one
    text on any device and concurrent requests do not disturb each other. Sampling is plain
    temperature sampling (no top-k/top-p), as for the byte-level GPT.
    """
    ids = encode(tokenizer, prompt).to(device).unsqueeze(0)
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.eos_token_id]], device=device)
    limit = max_positions(model)
    if limit is not None:
        ids = ids[:, -(limit - 1) :]
        max_new = max(1, min(max_new, limit - ids.shape[1]))
    gen = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    new: list[int] = []
    shown, past, step_ids, reason = "", None, ids, "length"
    for _ in range(max_new):
        with quiet():
            out = cast(Any, model)(input_ids=step_ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float().cpu()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        if nxt == eos:
            reason = "stop"
            break
        new.append(nxt)
        # Decode everything so far and show the new suffix once it is whole: one token may hold
        # half a character (byte-level BPE) or change how the previous one reads.
        text = _decode(tokenizer, new)
        piece = ""
        if text.startswith(shown) and not text.endswith("\ufffd"):
            piece, shown = text[len(shown) :], text
        yield piece, 1
        step_ids = torch.tensor([[nxt]], device=device)
    text = _decode(tokenizer, new)
    if text.startswith(shown) and len(text) > len(shown):
        yield text[len(shown) :], 0
    return reason


def _decode(tokenizer: Any, ids: list[int]) -> str:
    with quiet():
        return cast(str, tokenizer.decode(ids, skip_special_tokens=True))


def save(model: nn.Module, tokenizer: Any, model_dir: Path) -> None:
    with quiet():
        cast(Any, model).save_pretrained(model_dir / ADAPTER_DIR)
        tokenizer.save_pretrained(model_dir / TOKENIZER_DIR)


def load_finetuned(model_dir: Path, base: str, device: torch.device) -> tuple[nn.Module, Any]:
    model, _ = load_base(base, device)
    with quiet():
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            model_dir / TOKENIZER_DIR, local_files_only=True
        )
        tuned = peft.PeftModel.from_pretrained(model, model_dir / ADAPTER_DIR)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return cast(nn.Module, tuned).to(device).eval(), tokenizer


def export_merged(model_dir: Path, base: str, dest: Path) -> list[Path]:
    """The base with the adapter merged in, saved as a plain Hugging Face folder."""
    tuned, tokenizer = load_finetuned(model_dir, base, torch.device("cpu"))
    out = dest / MERGED_DIR
    with quiet():
        merged = cast(Any, tuned).merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return sorted(p for p in out.rglob("*") if p.is_file())
