"""GRU4Rec (Hidasi et al., ICLR 2016) as a sequential next-item model.

Item vectors → dropout → GRU (n_layers) → Linear(h → h). Trained on next-item prediction at every
position, which for a recurrent model equals training on every prefix of the sequence (RecBole's
augmentation) at the cost of one pass. The GRU reads each sequence right-aligned (items first,
padding after), so a user's state starts from zero at their first item whatever the padding of
the batch, and outputs after the last item are dropped. (Packed sequences give the same outputs,
but their backward pass on the CPU zero-fills a full gradient per time step: docs/benchmarks.md,
"Training seconds per epoch".)
"""

from __future__ import annotations

import torch
from torch import nn

from genair_core.config import ModelConfig
from genair_core.recommenders.models.base import SequentialRecommender
from genair_core.recommenders.models.item_encoders import AdapterEncoder, IdEncoder
from genair_core.recommenders.models.transformer import Dropout


class GRU4Rec(SequentialRecommender):
    def __init__(self, config: ModelConfig, encoder: IdEncoder | AdapterEncoder) -> None:
        super().__init__(config, encoder)
        self.input_dropout = Dropout(config.dropout)
        self.gru = nn.GRU(
            config.hidden, config.hidden, num_layers=config.n_layers, batch_first=True
        )
        self.dense = nn.Linear(config.hidden, config.hidden)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (B, L), left-padded → (B, L, h), zeros at padding."""
        length = inputs.shape[1]
        lengths = (inputs != 0).sum(1).clamp(min=1)
        offset = (length - lengths).unsqueeze(1)  # (B, 1) padding in front of each row
        steps = torch.arange(length, device=inputs.device).unsqueeze(0)
        right_padded = inputs.gather(1, (steps + offset) % length)
        x = self.input_dropout(self.encoder(right_padded))
        out, _ = self.gru(x)  # (B, L, h), right-aligned
        left = out.gather(1, ((steps - offset) % length).unsqueeze(-1).expand_as(out))
        return self.dense(left) * (inputs != 0).unsqueeze(-1)
