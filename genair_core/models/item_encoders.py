"""Item representations a backbone embeds its input with and scores candidates against.

Every encoder maps item indices to (…, h) vectors with the padding index 0 giving a zero vector,
and exposes `all_items()` — the (n_items + 1, h) table the model's outputs are scored against
(row 0 is padding and never a candidate).

- `id`: a trainable embedding per item, the baseline.
- `llm`, `genair`, `input-only`, `gen-only`: the frozen pooled item vectors (768-d: PCA of
  input_emb ‖ PCA of gen_emb; the ablations keep one half) through a trainable adapter
  Linear(d → 2h) → LayerNorm → GELU → Linear(2h → h). `genair` and its ablations add the
  behavioural calibration loss on the adapter outputs (genair_core.losses).

The frozen table is indexed by item index: row i holds item i's vector and row 0 is zeros. The
reference pads its table with `insert at -1`, which shifts the rows and gives the last item a
zero vector; `test_models.py` checks that every real item keeps its own vector here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genair_core.models.registry import UnknownNameError

INPUT_HALF, GEN_HALF = "input", "gen"


@dataclass(frozen=True)
class Variant:
    name: str
    frozen: bool  # frozen LLM vectors through an adapter, or trainable ids
    half: str | None  # which half of the vector ablations keep
    calibrated: bool  # adds the behavioural calibration loss


VARIANTS: dict[str, Variant] = {
    "id": Variant("id", frozen=False, half=None, calibrated=False),
    "llm": Variant("llm", frozen=True, half=None, calibrated=False),
    "genair": Variant("genair", frozen=True, half=None, calibrated=True),
    "input-only": Variant("input-only", frozen=True, half=INPUT_HALF, calibrated=True),
    "gen-only": Variant("gen-only", frozen=True, half=GEN_HALF, calibrated=True),
}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise UnknownNameError("variant", name, VARIANTS)
    return VARIANTS[name]


class IdEncoder(nn.Module):
    """Trainable item embeddings (n_items + 1, h); row 0 is the padding vector, kept at zero."""

    def __init__(self, n_items: int, hidden: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.embedding = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.embedding(items)

    def all_items(self) -> torch.Tensor:
        return self.embedding.weight


class AdapterEncoder(nn.Module):
    """Frozen item vectors (n_items + 1, d) through Linear(d→2h) → LayerNorm → GELU → Linear(2h→h).

    The table is a buffer: it is saved with checkpoints, never trained. Padding maps to zero
    rather than to adapter(0), which would be the biases."""

    def __init__(self, table: torch.Tensor, hidden: int) -> None:
        super().__init__()
        if table.dim() != 2 or not torch.all(table[0] == 0):
            raise ValueError("the frozen table must be (n_items + 1, d) with row 0 all zeros")
        self.n_items = table.shape[0] - 1
        self.register_buffer("table", table.to(torch.float32), persistent=True)
        dim = table.shape[1]
        self.adapter = nn.Sequential(
            nn.Linear(dim, 2 * hidden),
            nn.LayerNorm(2 * hidden),
            nn.GELU(),
            nn.Linear(2 * hidden, hidden),
        )

    def adapt(self, items: torch.Tensor) -> torch.Tensor:
        """Adapter outputs of real items (no padding handling): what calibration spreads apart."""
        return self.adapter(self.table[items])

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # Each distinct item goes through the adapter once: a batch holds ~12k positions but far
        # fewer distinct items, and the adapter is most of a frozen variant's compute otherwise.
        distinct, where = torch.unique(items, return_inverse=True)
        vectors = self.adapt(distinct)[where]
        return vectors * (items != 0).unsqueeze(-1)

    def all_items(self) -> torch.Tensor:
        vectors = self.adapter(self.table)
        return torch.cat([torch.zeros_like(vectors[:1]), vectors[1:]])


def frozen_half(table: torch.Tensor, half: str | None, input_dims: int) -> torch.Tensor:
    """The part of the pooled vectors a variant keeps: all, the input half or the gen half."""
    if half is None:
        return table
    return table[:, :input_dims] if half == INPUT_HALF else table[:, input_dims:]


def make_encoder(
    variant: Variant, n_items: int, hidden: int, table: torch.Tensor | None, input_dims: int
) -> IdEncoder | AdapterEncoder:
    if not variant.frozen:
        return IdEncoder(n_items, hidden)
    if table is None:
        raise ValueError(f"variant {variant.name!r} needs the item_embeddings table")
    if table.shape[0] != n_items + 1:
        raise ValueError(
            f"the frozen table has {table.shape[0]} rows; {n_items} items and padding "
            f"need {n_items + 1}"
        )
    return AdapterEncoder(frozen_half(table, variant.half, input_dims), hidden)


def frozen_table(
    item_ids_by_index: list[str], vector_item_ids: list[str], vectors: np.ndarray
) -> torch.Tensor:
    """The (n_items + 1, d) frozen table: row i is the vector of the item with item_idx i (the
    ids in `item_ids_by_index` are in index order, from 1), row 0 zeros. Every indexed item must
    have a vector; a missing one is an error naming it, never a zero row."""
    position = {item_id: row for row, item_id in enumerate(vector_item_ids)}
    missing = [item_id for item_id in item_ids_by_index if item_id not in position]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(item_ids_by_index)} items have no item vector (first: "
            f"{', '.join(missing[:5])}); run the archetypes and pooling stages on them first"
        )
    rows = np.array([position[item_id] for item_id in item_ids_by_index], dtype=np.int64)
    table = np.zeros((len(item_ids_by_index) + 1, vectors.shape[1]), dtype=np.float32)
    table[1:] = vectors[rows]
    return torch.from_numpy(table)
