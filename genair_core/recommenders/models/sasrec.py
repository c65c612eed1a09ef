"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the user's item sequence.

Item vectors are scaled by √h and added to learned position embeddings, then N pre-LN blocks
and a final LayerNorm. Deviation from the GenAIR reference code: its causal mask is commented
out, so during training a position sees the items it must predict; here a position attends to
itself and earlier positions only (tests/test_models.py checks that changing later items never
changes earlier outputs).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genair_core.config import ModelConfig
from genair_core.recommenders.models.base import SequentialRecommender
from genair_core.recommenders.models.item_encoders import AdapterEncoder, IdEncoder
from genair_core.recommenders.models.transformer import Block, Dropout, attention_mask


class SASRec(SequentialRecommender):
    causal = True

    def __init__(self, config: ModelConfig, encoder: IdEncoder | AdapterEncoder) -> None:
        super().__init__(config, encoder)
        self.positions = nn.Embedding(config.max_len, config.hidden)
        self.input_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config.hidden, config.n_heads, config.dropout) for _ in range(config.n_layers)
        )
        self.final_norm = nn.LayerNorm(config.hidden)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(inputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (B, L ≤ max_len), left-padded → (B, L, h)."""
        length = inputs.shape[1]
        # Position max_len - 1 is always the most recent item, however short the window.
        position = torch.arange(
            self.config.max_len - length, self.config.max_len, device=inputs.device
        )
        x = self.embed(inputs) * math.sqrt(self.config.hidden) + self.positions(position)
        x = self.input_dropout(x) * (inputs != 0).unsqueeze(-1)
        attend = attention_mask(inputs, causal=self.causal)
        for block in self.blocks:
            x = block(x, attend)
        return self.final_norm(x)
