"""The pre-LayerNorm self-attention block SASRec and BERT4Rec share."""

from __future__ import annotations

import math

import torch
from torch import nn


class Dropout(nn.Module):
    """Inverted dropout drawing its mask with torch.rand from the run's own generator.

    On the CPU, nn.Dropout's bernoulli_ sampler is ~4× slower and took half of a SASRec training
    step. The generator (set by `use_generator`) keeps runs that train side by side in one process
    deterministic: the global RNG would interleave their draws."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        draw = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        return x * (draw >= self.p) * (1.0 / (1.0 - self.p))


def use_generator(model: nn.Module, generator: torch.Generator) -> None:
    """Make every Dropout of `model` draw from `generator`."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.generator = generator


class Block(nn.Module):
    """x + Attn(LN(x)), then x + FFN(LN(x)), FFN = Linear(h→h) → GELU → Linear(h→h) (SASRec)."""

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % n_heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.attention_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.attention_dropout = Dropout(dropout)
        self.residual_dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """x (B, L, h); attend (B, 1, L, L) bool, True where a query may see a key."""
        batch, length, hidden = x.shape
        q, k, v = (
            self.qkv(self.attention_norm(x))
            .view(batch, length, 3, self.n_heads, hidden // self.n_heads)
            .permute(2, 0, 3, 1, 4)
        )  # 3 × (B, heads, L, h / heads)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, heads, L, L)
        weights = torch.softmax(scores.masked_fill(~attend, -torch.inf), dim=-1)
        attended = self.attention_dropout(weights) @ v
        x = x + self.residual_dropout(self.out(attended.transpose(1, 2).reshape(x.shape)))
        return x + self.residual_dropout(self.ffn(self.ffn_norm(x)))


def attention_mask(inputs: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, 1, L, L) bool: keys that are real items (and, if causal, not later than the query).

    Every position may also see itself, so a padding query never has an empty row (its output is
    ignored, but an all-masked row would be NaN and NaN poisons the gradients)."""
    length = inputs.shape[1]
    allowed = (inputs != 0)[:, None, None, :]  # (B, 1, 1, L)
    if causal:
        allowed = (
            allowed & torch.ones(length, length, dtype=torch.bool, device=inputs.device).tril()
        )
    return allowed | torch.eye(length, dtype=torch.bool, device=inputs.device)
