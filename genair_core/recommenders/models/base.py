"""The contract every backbone honours, so one trainer and one evaluator serve them all.

Sequences are left-padded with 0: the most recent item is always in the last column, whatever
the user's history length. A backbone

- `forward(inputs)` (B, L) → (B, L, h): a representation at every position;
- `training_pairs(window, generator)` turns a (B, L + 1) window of a user's training items into
  (inputs (B, L), targets (B, L)): the item each position must predict, 0 where none;
- `user_vectors(history)` (B, L) → (B, h): what the next item is scored against;
- `encoder`: the item representation, `encoder.all_items()` (n_items + 1, h) the candidates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from genair_core.config import ModelConfig
from genair_core.recommenders.models.item_encoders import AdapterEncoder, IdEncoder


class SequentialRecommender(nn.Module, ABC):
    def __init__(self, config: ModelConfig, encoder: IdEncoder | AdapterEncoder) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder

    @abstractmethod
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item indices → (B, L, h)."""

    def training_pairs(
        self, window: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-item prediction at every position (SASRec, GRU4Rec)."""
        inputs, targets = window[:, :-1], window[:, 1:]
        return inputs, targets * (inputs != 0)

    def user_vectors(self, history: torch.Tensor) -> torch.Tensor:
        return self(history)[:, -1]
