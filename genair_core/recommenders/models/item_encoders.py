"""Item representations a backbone embeds its input with and scores candidates against.

Every encoder maps item indices to (…, h) vectors with the padding index 0 giving a zero vector,
and exposes `all_items()` — the (n_items + 1, h) table the model's outputs are scored against
(row 0 is padding and never a candidate).

- `id`: a trainable embedding per item, the baseline.
- `llm`, `genair`, `input-only`, `gen-only`: the frozen pooled item vectors (768-d: PCA of
  input_emb ‖ PCA of gen_emb; the ablations keep one half) through a trainable adapter
  Linear(d → 2h) → LayerNorm → GELU → Linear(2h → h). `genair` and its ablations add the
  behavioural calibration loss on the adapter outputs (genair_core.losses).
- `genair-warm`: `genair` whose adapter starts from the calibration job's trained weights
  (genair_core.item_space.calibration) instead of a random initialisation.
- `genair-id`: `genair`'s LLM view plus a trainable ID embedding per item, summed (`DualEncoder`,
  the dual view of LLM-ESR, Liu et al., NeurIPS 2024); the calibration loss stays on the LLM view.

The frozen table is indexed by item index: row i holds item i's vector and row 0 is zeros. The
reference pads its table with `insert at -1`, which shifts the rows and gives the last item a
zero vector; `test_models.py` checks that every real item keeps its own vector here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genair_core.recommenders.models.registry import UnknownNameError

INPUT_HALF, GEN_HALF = "input", "gen"


@dataclass(frozen=True)
class Variant:
    name: str
    frozen: bool  # frozen LLM vectors through an adapter, or trainable ids
    half: str | None  # which half of the vector ablations keep
    calibrated: bool  # adds the behavioural calibration loss
    warm: bool = False  # the adapter starts from the calibration job's weights
    ids: bool = False  # a trainable ID embedding per item is added to the LLM view


VARIANTS: dict[str, Variant] = {
    "id": Variant("id", frozen=False, half=None, calibrated=False),
    "llm": Variant("llm", frozen=True, half=None, calibrated=False),
    "genair": Variant("genair", frozen=True, half=None, calibrated=True),
    "genair-warm": Variant("genair-warm", frozen=True, half=None, calibrated=True, warm=True),
    "genair-id": Variant("genair-id", frozen=True, half=None, calibrated=True, ids=True),
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
    rather than to adapter(0), which would be the biases. `dropout`: on the hidden layer, while
    training (each distinct item of a batch gets one mask)."""

    def __init__(self, table: torch.Tensor, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
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
        return self._through_adapter(self.table[items])

    def _through_adapter(self, vectors: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.dropout):
            return self.adapter(vectors)
        hidden = nn.functional.dropout(self.adapter[:-1](vectors), self.dropout, training=True)
        return self.adapter[-1](hidden)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # Each distinct item goes through the adapter once: a batch holds ~12k positions but far
        # fewer distinct items, and the adapter is most of a frozen variant's compute otherwise.
        distinct, where = torch.unique(items, return_inverse=True)
        vectors = self.adapt(distinct)[where]
        return vectors * (items != 0).unsqueeze(-1)

    def all_items(self) -> torch.Tensor:
        vectors = self._through_adapter(self.table)
        return torch.cat([torch.zeros_like(vectors[:1]), vectors[1:]])


class DualEncoder(AdapterEncoder):
    """The LLM view (frozen vectors through the adapter, as AdapterEncoder) plus a trainable ID
    embedding per item: e_i = adapter(x_i) + id_i.

    Why a sum and not a gate: LLM-ESR scores an item by the sum of its two views' dot products,
    and a sum per item is that in one encoder; it adds no gate network whose output for an item
    seen in no training sequence would be a guess; and with the ID table starting at zero the
    variant starts as `genair` exactly, the IDs learning only what the LLM view misses.

    `trained` (n_items + 1,) says which items occur in training sequences. The others (and
    padding) keep an ID part of zero — masked, so no gradient ever moves it (the softmax over all
    items would otherwise push never-seen items around) — and are represented by their LLM view
    alone. `adapt` stays the LLM view: the calibration loss spreads that view, not the IDs."""

    def __init__(
        self, table: torch.Tensor, hidden: int, trained: torch.Tensor, dropout: float = 0.0
    ) -> None:
        super().__init__(table, hidden, dropout)
        if trained.shape != (self.n_items + 1,):
            raise ValueError(
                f"`trained` must have one flag per item and padding ({self.n_items + 1}), "
                f"got shape {tuple(trained.shape)}"
            )
        self.ids = nn.Embedding(self.n_items + 1, hidden, padding_idx=0)
        nn.init.zeros_(self.ids.weight)
        mask = trained.to(torch.float32).clone()
        mask[0] = 0
        self.register_buffer("trained", mask.unsqueeze(-1), persistent=True)

    def id_part(self, items: torch.Tensor) -> torch.Tensor:
        return self.ids(items) * self.trained[items]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return super().forward(items) + self.id_part(items)

    def all_items(self) -> torch.Tensor:
        return super().all_items() + self.ids.weight * self.trained


def warm_start(encoder: AdapterEncoder, weights: Mapping[str, np.ndarray | torch.Tensor]) -> None:
    """Load the calibration job's adapter weights (the adapter's state dict) into `encoder`."""
    mine = encoder.adapter.state_dict()
    if set(weights) != set(mine):
        raise ValueError(
            f"the calibration adapter holds {sorted(weights)}, the recommender's adapter "
            f"{sorted(mine)}: rerun the calibrate stage"
        )
    loaded = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in weights.items()}
    wrong = [k for k in mine if loaded[k].shape != mine[k].shape]
    if wrong:
        first = wrong[0]
        raise ValueError(
            f"the calibration adapter's {first} is {tuple(loaded[first].shape)}, the "
            f"recommender's {tuple(mine[first].shape)} (item vectors of {encoder.table.shape[1]} "
            f"dims, hidden {encoder.adapter[-1].out_features}): the calibration's hidden size "
            "and input dimension must match the recommender's; rerun the calibrate stage"
        )
    encoder.adapter.load_state_dict(loaded)


def frozen_half(table: torch.Tensor, half: str | None, input_dims: int) -> torch.Tensor:
    """The part of the pooled vectors a variant keeps: all, the input half or the gen half."""
    if half is None:
        return table
    return table[:, :input_dims] if half == INPUT_HALF else table[:, input_dims:]


def make_encoder(
    variant: Variant,
    n_items: int,
    hidden: int,
    table: torch.Tensor | None,
    input_dims: int,
    *,
    adapter_weights: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    trained_items: torch.Tensor | None = None,
    adapter_dropout: float = 0.0,
) -> IdEncoder | AdapterEncoder:
    """The variant's encoder. `adapter_weights`: the calibration adapter's state dict
    (`genair-warm` only); `trained_items` (n_items + 1,) bool: which items occur in training
    sequences (`genair-id`; default: all); `adapter_dropout`: on the adapter's hidden layer
    while training."""
    if not variant.frozen:
        return IdEncoder(n_items, hidden)
    if table is None:
        raise ValueError(f"variant {variant.name!r} needs the item_embeddings table")
    if table.shape[0] != n_items + 1:
        raise ValueError(
            f"the frozen table has {table.shape[0]} rows; {n_items} items and padding "
            f"need {n_items + 1}"
        )
    vectors = frozen_half(table, variant.half, input_dims)
    if variant.ids:
        if trained_items is None:
            trained_items = torch.ones(n_items + 1, dtype=torch.bool)
        encoder: AdapterEncoder = DualEncoder(vectors, hidden, trained_items, adapter_dropout)
    else:
        encoder = AdapterEncoder(vectors, hidden, adapter_dropout)
    if variant.warm:
        if adapter_weights is None:
            raise ValueError(f"variant {variant.name!r} needs the calibration adapter's weights")
        warm_start(encoder, adapter_weights)
    return encoder


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
