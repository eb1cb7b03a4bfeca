"""Caption conditioning of image-diffusion (``conditioning=caption``), with nothing downloaded.

The text encoder is tiny and trained with the UNet: the words of the training captions
(lower-cased letters and digits; the ``vocab_size`` most frequent) are the vocabulary, saved
with the model; a caption becomes up to ``max_caption_tokens`` word ids (a longer prompt is
cut, and the answer says so; a word the model never saw is "unknown"). Each id has a
trainable embedding; no position embedding: these captions are bags of words ("a red checked
dress"), and a prompt of the class name alone ("dress") should read like the captions that
hold it. A learned start vector leads every sequence, so the empty caption (all padding: what
classifier-free guidance drops to) is a sequence too.

A ``UNet2DConditionModel`` cross-attends to that sequence at its two lower resolutions (where
attention is cheap) and gets the sequence's masked mean as a class embedding
(``class_embed_type="projection"``): the caption steers both the layout and every block.
``CaptionUNet`` is called like the class-conditional ``UNet2DModel`` (``net(x, t,
class_labels=ids).sample``), so training, EMA and sampling are shared.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

PAD, UNK = 0, 1  # word ids: padding (the empty caption is all padding) and an unknown word
SPECIAL = 2
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def build_vocab(captions: Iterable[str], size: int) -> list[str]:
    """The ``size`` most frequent words of ``captions`` (ties alphabetical: repeatable)."""
    counts = Counter(w for c in captions for w in words(c))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, _ in ranked[:size]]


@dataclass(frozen=True)
class Encoded:
    ids: list[int]  # exactly ``max_tokens`` long, padded with PAD
    truncated: bool  # the text had more words than the model reads
    unknown: list[str]  # words (among those read) the training captions never had


class Vocab:
    """Words -> ids for one model: its vocabulary and caption length."""

    def __init__(self, vocab: Sequence[str], max_tokens: int) -> None:
        self.words = list(vocab)
        self.max_tokens = max_tokens
        self._index = {w: i + SPECIAL for i, w in enumerate(self.words)}

    @property
    def size(self) -> int:
        return len(self.words) + SPECIAL

    def encode(self, text: str) -> Encoded:
        found = words(text)
        kept = found[: self.max_tokens]
        ids = [self._index.get(w, UNK) for w in kept]
        unknown = [w for w in kept if w not in self._index]
        return Encoded(ids + [PAD] * (self.max_tokens - len(ids)), len(found) > len(kept), unknown)

    def tensor(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, max_tokens) word ids of ``texts``."""
        rows = [self.encode(t).ids for t in texts]
        return torch.tensor(rows, dtype=torch.long).view(len(rows), self.max_tokens)


def caption_unet_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The UNet's shape: the class-conditional one's levels, cross-attention at the two lowest
    resolutions and in the middle block."""
    width, size = int(params["width"]), int(params["image_size"])
    dim = int(params["text_dim"])
    mults = (1, 2, 2, 2) if size >= 64 else (1, 2, 2)
    plain = len(mults) - 2
    return {
        "sample_size": size,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": tuple(width * m for m in mults),
        "down_block_types": ("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * 2,
        "up_block_types": ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",) * plain,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": int(params["layers_per_block"]),
        "cross_attention_dim": dim,
        "attention_head_dim": 4,  # diffusers reads this as the number of heads
        "norm_num_groups": 8,
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": dim,
    }


class CaptionUNet(nn.Module):
    """The token embedding and the UNet, one module: the EMA and the checkpoints cover both."""

    def __init__(self, params: Mapping[str, Any], n_tokens: int) -> None:
        super().__init__()
        dim = int(params["text_dim"])
        self.tokens = nn.Embedding(n_tokens, dim)
        self.start = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.unet = UNet2DConditionModel(**caption_unet_config(params))

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sequence the UNet attends to, its mask (padding out) and its masked mean."""
        emb = self.tokens(ids)
        seq = self.norm(torch.cat([self.start.expand(len(ids), -1, -1), emb], 1))
        ones = torch.ones((len(ids), 1), device=ids.device)
        mask = torch.cat([ones, (ids != PAD).float()], 1)
        pooled = (seq * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return seq, mask, pooled

    def forward(self, sample: torch.Tensor, timestep: Any, class_labels: torch.Tensor) -> Any:
        seq, mask, pooled = self.encode(class_labels)
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=seq,
            class_labels=pooled,
            encoder_attention_mask=mask,
        )
