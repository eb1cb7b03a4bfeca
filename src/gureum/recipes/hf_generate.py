"""Sampling text from a Hugging Face causal LM token by token, with transformers alone.

The one sampling loop of every Hugging Face causal LM we serve, LoRA fine-tunes included
(``hf_lora`` uses it); it never imports peft, which costs several seconds of a replica's cold
start and is not needed to serve an imported model: a
per-request CPU generator (one seed, one text, on any device), the key/value cache, and text
shown only once it is whole. transformers 5 takes the cache as ``cache=`` (and warns on the
old ``past_key_values=``); both are supported.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers

transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

from gureum.recipes.base import BadInput  # noqa: E402 (after the offline switch)

# One step: the text it makes visible (may be empty) and the tokens it sampled; returns why
# generation ended ("stop" at end-of-text, else "length").
Steps = Generator[tuple[str, int], None, str]


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the deprecation notices transformers (and peft, for LoRA models) raise while
    they load and run a model."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft)\b")
        yield


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    with quiet():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def chat_format(tokenizer: Any) -> Callable[[list[dict[str, str]]], str] | None:
    """The tokenizer's chat template as a prompt builder, or None when it has none. The
    template's text carries its own special tokens (``encode`` adds none)."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def build(messages: list[dict[str, str]]) -> str:
        try:
            with quiet():
                text = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
        except Exception as exc:  # the template's own checks (roles must alternate, ...)
            raise BadInput(
                f"the model's chat template refused the messages: {str(exc)[:300]}"
            ) from None
        return str(text)

    return build


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings cover, when it has a limit."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return value if isinstance(value, int) else None


def window_loss(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    """The causal LM's own loss on a window of tokens (labels are the inputs, shifted inside)."""
    with quiet():
        out = cast(Any, model)(input_ids=window, labels=window)
    return cast(torch.Tensor, out.loss)


def _cache_keyword(model: nn.Module) -> str:
    """``cache`` where the model takes it (transformers 5), else ``past_key_values``; a LoRA
    model (peft) passes keywords through to its base model, which decides."""
    base = cast(Any, model).get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(cast(Any, base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


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
    """Sample up to ``max_new`` tokens after ``prompt``, yielding ``(text, tokens)``."""
    ids = encode(tokenizer, prompt).to(device).unsqueeze(0)
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.eos_token_id]], device=device)
    limit = max_positions(model)
    if limit is not None:
        ids = ids[:, -(limit - 1) :]
        max_new = max(1, min(max_new, limit - ids.shape[1]))
    keyword = _cache_keyword(model)
    gen = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    new: list[int] = []
    shown, past, step_ids, reason = "", None, ids, "length"
    for _ in range(max_new):
        with quiet():
            out = cast(Any, model)(input_ids=step_ids, use_cache=True, **{keyword: past})
        past = getattr(out, keyword)
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
        text = decode(tokenizer, new)
        piece = ""
        if text.startswith(shown) and not text.endswith("\ufffd"):
            piece, shown = text[len(shown) :], text
        yield piece, 1
        step_ids = torch.tensor([[nxt]], device=device)
    text = decode(tokenizer, new)
    if text.startswith(shown) and len(text) > len(shown):
        yield text[len(shown) :], 0
    return reason


def decode(tokenizer: Any, ids: list[int]) -> str:
    with quiet():
        return cast(str, tokenizer.decode(ids, skip_special_tokens=True))
