"""A small GPT over bytes: the text generator a team trains from scratch on its own text.

Byte tokens (vocabulary 256) need no tokenizer file and never meet an unknown symbol, at the
price of longer sequences; for the few hundred kilobytes a small team has, that is the right
trade. Pre-norm blocks, learned positions, causal attention through PyTorch's fused kernel,
output weights tied to the token embedding.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 256


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd)
        )
        self.dropout = dropout
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, c)))
        out: torch.Tensor = x + self.drop(self.mlp(self.ln2(x)))
        return out


class TinyGPT(nn.Module):
    def __init__(
        self, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError("n_embd must be a multiple of n_head")
        self.block_size = block_size
        self.tok = nn.Embedding(VOCAB, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, VOCAB, bias=False)
        self.head.weight = self.tok.weight
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.head(self.ln_f(x))
        return out

    @torch.no_grad()
    def sample(
        self,
        prompt: torch.Tensor,
        max_new: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Iterator[int]:
        """Up to ``max_new`` bytes sampled after ``prompt`` (1-D), one at a time, so a caller can
        stream them or stop early; temperature 0 is greedy. Sampling draws on the CPU so one
        seed gives one text on any device."""
        seq = prompt.clone()
        for _ in range(max_new):
            ctx = seq[-self.block_size :].unsqueeze(0)
            logits = self(ctx)[0, -1].float().cpu()
            if temperature <= 0:
                nxt = logits.argmax().view(1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            seq = torch.cat([seq, nxt.to(seq.device)])
            yield int(nxt)

    def generate(
        self,
        prompt: torch.Tensor,
        max_new: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``prompt`` followed by ``max_new`` sampled bytes (what ``sample`` yields)."""
        new = list(self.sample(prompt, max_new, temperature, generator))
        return torch.cat([prompt, torch.tensor(new, dtype=prompt.dtype, device=prompt.device)])


def encode(text: str) -> torch.Tensor:
    data = text.encode("utf-8")
    if not data:  # frombuffer refuses an empty buffer
        return torch.zeros(0, dtype=torch.long)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def decode(ids: torch.Tensor) -> str:
    return bytes(ids.to(torch.uint8).cpu().tolist()).decode("utf-8", errors="replace")
