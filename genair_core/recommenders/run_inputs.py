"""What a recommender run reads, from the tables storage hands over to the tensors and arrays it
trains and is evaluated on; and the sampled protocol's negatives, drawn once for every run.

    tables = read_run_tables(store, run.tables)  # storage.recommenders
    inputs = RunInputs.from_tables(tables)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from genair_core.data.sequences import UserSequences
from genair_core.losses import CooccurrenceLookup
from genair_core.metrics import sample_negatives
from genair_core.recommenders.models.item_encoders import frozen_table


class RunTables(Protocol):
    """What a run reads from its tables, as storage.recommenders hands it over (Arrow tables,
    numpy arrays); the fields of the tables it does not read are None."""

    n_items: int
    sequences: pa.Table  # user_idx, position, item_idx, split
    negative_users: np.ndarray | None  # (U,) the user_idx of each row of `negatives`
    negatives: np.ndarray | None  # (U, m) eval_negatives
    item_ids: list[str] | None  # item_id by item_idx, from 1
    vector_item_ids: list[str] | None  # the item of each row of `vectors`
    vectors: np.ndarray | None  # (N, d) item_embeddings
    pairs: pa.Table | None  # cooccurrence i, j, s


@dataclass(frozen=True)
class RunInputs:
    data: UserSequences
    negatives: np.ndarray | None  # (n_users, m) by row of `data`
    table: torch.Tensor | None  # (n_items + 1, d) frozen item vectors by item index
    lookup: CooccurrenceLookup | None

    @classmethod
    def from_tables(cls, tables: RunTables) -> RunInputs:
        """A missing or unreadable co-occurrence table fails before this (the reference silently
        trains with w = 1 instead)."""
        data = UserSequences.from_table(tables.sequences, tables.n_items)
        negatives = None
        if tables.negatives is not None:
            negatives = negatives_by_row(data, tables.negative_users, tables.negatives)
        table = None
        if tables.vectors is not None:
            table = frozen_table(tables.item_ids, tables.vector_item_ids, tables.vectors)
        lookup = None
        if tables.pairs is not None:
            pairs = tables.pairs
            lookup = CooccurrenceLookup.from_pairs(
                pairs["i"].to_numpy(), pairs["j"].to_numpy(), pairs["s"].to_numpy(), data.n_items
            )
        return cls(data, negatives, table, lookup)


def negatives_by_row(data: UserSequences, users: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """(n_users, m) the rows of `negatives` (one per user in `users`) in the row order of
    `data`."""
    by_user = dict(zip(users.tolist(), range(len(users)), strict=True))
    missing = [int(u) for u in data.user_idx if int(u) not in by_user]
    if missing:
        raise ValueError(
            f"eval_negatives has no row for {len(missing)} users (first: {missing[:5]}); "
            "rerun the negatives stage"
        )
    return negatives[np.array([by_user[int(u)] for u in data.user_idx])]


def eval_negatives(data: UserSequences, n: int, seed: int) -> pa.Table:
    """The sampled protocol's candidates: `n` items per user that the user never had, drawn once
    and shared by every run (an EVAL_NEGATIVES table)."""
    ptr, items = data.all_items_csr()
    negatives = sample_negatives(ptr, items, data.n_items, n, seed)
    return pa.table(
        {
            "user_idx": pa.array(data.user_idx, pa.int32()),
            "negatives": pa.array(list(negatives), pa.list_(pa.int32())),
        }
    )
