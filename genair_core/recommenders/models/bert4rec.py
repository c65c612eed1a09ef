"""BERT4Rec (Sun et al., CIKM 2019): bidirectional self-attention trained as a cloze task.

Each real position of the training window is replaced by a [MASK] token with probability
`mask_prob` (0.6, the reference's value) and must recover its item; the next item is predicted by
appending [MASK] after the history. With `mask_last_prob` > 0 that share of the sequences instead
has only its last item masked, the task the model is evaluated on (the original code's "masked
last" instances; RecBole's `ft_ratio`); the reference has none (0). [MASK] has its own trainable
vector in the model's hidden space, so frozen-vector variants need no row for it in their table.
Deviation from the paper: no output projection or item bias; positions are scored by dot product
with the item vectors, as in the GenAIR reference.
"""

from __future__ import annotations

import torch
from torch import nn

from genair_core.config import ModelConfig
from genair_core.recommenders.models.item_encoders import AdapterEncoder, IdEncoder
from genair_core.recommenders.models.sasrec import SASRec


class BERT4Rec(SASRec):
    causal = False

    def __init__(self, config: ModelConfig, encoder: IdEncoder | AdapterEncoder) -> None:
        super().__init__(config, encoder)
        self.mask_index = encoder.n_items + 1
        self.mask_embedding = nn.Parameter(torch.randn(config.hidden) * 0.02)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        masked = inputs == self.mask_index
        vectors = self.encoder(inputs.masked_fill(masked, 0))
        return torch.where(masked.unsqueeze(-1), self.mask_embedding, vectors)

    def training_pairs(
        self, window: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        items = window[:, 1:]
        draw = torch.rand(items.shape, generator=generator, device=generator.device)
        masked = (draw.to(items.device) < self.config.mask_prob) & (items != 0)
        if self.config.mask_last_prob > 0:
            draw = torch.rand(items.shape[0], generator=generator, device=generator.device)
            last_only = draw.to(items.device).unsqueeze(1) < self.config.mask_last_prob
            is_last = torch.zeros_like(masked)
            is_last[:, -1] = True
            masked = torch.where(last_only, is_last, masked)
        return items.masked_fill(masked, self.mask_index), items * masked

    def user_vectors(self, history: torch.Tensor) -> torch.Tensor:
        query = torch.full_like(history[:, :1], self.mask_index)
        return self(torch.cat([history[:, 1:], query], dim=1))[:, -1]
