"""Sequential recommenders: one backbone per file, one contract (base.py), one registry."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from genair_core.config import ModelConfig
from genair_core.recommenders.models.base import SequentialRecommender
from genair_core.recommenders.models.bert4rec import BERT4Rec
from genair_core.recommenders.models.gru4rec import GRU4Rec
from genair_core.recommenders.models.item_encoders import (
    VARIANTS,
    Variant,
    get_variant,
    make_encoder,
)
from genair_core.recommenders.models.registry import UnknownNameError
from genair_core.recommenders.models.sasrec import SASRec

BACKBONES: dict[str, type[SequentialRecommender]] = {
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
    "gru4rec": GRU4Rec,
}


def build_model(
    backbone: str,
    variant: str,
    config: ModelConfig,
    n_items: int,
    table: torch.Tensor | None = None,
    *,
    input_dims: int,
    adapter_weights: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    trained_items: torch.Tensor | None = None,
) -> SequentialRecommender:
    """A backbone with the variant's item encoder over items 1..n_items. `table`
    (n_items + 1, d): the frozen item vectors by item index, row 0 zeros; `input_dims`: how many
    of its columns are the input half (pooling.input_dims); `adapter_weights`: the calibration
    adapter's state dict (`genair-warm`); `trained_items` (n_items + 1,) bool: the items that
    occur in training sequences (`genair-id`: the others get no ID part)."""
    if backbone not in BACKBONES:
        raise UnknownNameError("backbone", backbone, BACKBONES)
    encoder = make_encoder(
        get_variant(variant),
        n_items,
        config.hidden,
        table,
        input_dims,
        adapter_weights=adapter_weights,
        trained_items=trained_items,
        adapter_dropout=config.adapter_dropout,
    )
    return BACKBONES[backbone](config, encoder)


__all__ = [
    "BACKBONES",
    "VARIANTS",
    "ModelConfig",
    "SequentialRecommender",
    "UnknownNameError",
    "Variant",
    "build_model",
    "get_variant",
]
