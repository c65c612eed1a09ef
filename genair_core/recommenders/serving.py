"""A trained recommender serving today's catalog: every user's top-K list, new items included.

    served = ServedRun(name, run_id, "sasrec", "genair", model_config, input_dims, weights, ids)
    model, items = serving_model(served, catalog_ids, catalog_vectors)
    lists = recommend(model, items, user_histories(interactions, items.item_ids), k=50)

Why new items can be served: a frozen variant's item table is the LLM vectors through the trained
adapter, so an item that arrived after training is scored from its vector like any other. The
served model is rebuilt over today's candidates, every catalog item with a vector, in item-id
order (candidate i is row i + 1 of its table): the trained weights are loaded unchanged, and the
per-item parts the checkpoint holds in the trained run's own item order (the frozen table, the
`genair-id` ID embeddings and the `id` embeddings) are rebuilt by item id. Nothing is trained:
the weights are copied, never updated. The served item table is computed once and the forward
pass looks items up in it, instead of running the adapter again for every batch of users.

- `genair-id`: an item the run never trained on has no ID part and is its LLM view alone, as in
  training (`DualEncoder`).
- `id`: an item the run never trained on has no representation; it is no candidate, and the
  caller warns that new items cannot appear.
- A user's state is the model's forward pass over the last `max_len` interactions of the user's
  current history, those ingested since training included; items the model cannot represent
  (removed from the catalog, or new to an `id` model) are left out of it. A user none of whose
  items the model can represent gets the popularity list (interactions per candidate), marked.
- Every item a user has interacted with is excluded from the user's list; ties are broken by
  item id (genair_core.recommenders.ranking).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from genair_core.config import ModelConfig
from genair_core.recommenders.models import SequentialRecommender, build_model, get_variant
from genair_core.recommenders.ranking import (
    ApproximateTopK,
    choose_search,
    recall_at_k,
    top_k_unseen,
)
from genair_core.tables import RECOMMENDATIONS

# State-dict entries that hold one row per trained item, in the trained run's item order.
PER_ITEM = ("encoder.table", "encoder.trained", "encoder.ids.weight", "encoder.embedding.weight")
USER_BATCH = 256  # users per forward pass
RECALL_AT = 10


@dataclass(frozen=True)
class ServedRun:
    """A finished recommender run as stored: its settings, best weights and item order."""

    name: str
    run_id: str
    backbone: str
    variant: str
    model: ModelConfig
    input_dims: int
    weights: Mapping[str, torch.Tensor]
    item_ids: Sequence[str]  # the trained tables' item of each row, item_idx 1..n

    @property
    def serves_new_items(self) -> bool:
        return get_variant(self.variant).frozen


@dataclass(frozen=True)
class ServingItems:
    """The candidates, in item-id order: candidate i is row i + 1 of the served model's table."""

    item_ids: list[str]
    is_new: np.ndarray  # (N,) bool: the served run never trained on the item


def serving_model(
    run: ServedRun, catalog_ids: Sequence[str], vectors: np.ndarray | None
) -> tuple[SequentialRecommender, ServingItems]:
    """`run`'s model over today's candidates. `catalog_ids` (N,) and `vectors` (N, d): every
    catalog item with a pooled vector (unused by `id`, whose candidates are the catalog items it
    trained on)."""
    variant = get_variant(run.variant)
    trained_row = {item_id: row for row, item_id in enumerate(run.item_ids, start=1)}
    if variant.frozen:
        if vectors is None or len(vectors) != len(catalog_ids):
            raise ValueError(f"{run.name} serves item vectors: one per catalog item is needed")
        order = np.argsort(np.asarray(catalog_ids, dtype=object), kind="stable")
        item_ids = [catalog_ids[i] for i in order]
        table = np.zeros((len(item_ids) + 1, vectors.shape[1]), dtype=np.float32)
        table[1:] = vectors[order]
    else:
        item_ids = sorted(set(catalog_ids) & trained_row.keys())
        table = None
    is_new = np.array([item_id not in trained_row for item_id in item_ids], dtype=bool)
    # Row of each candidate (and padding) in the trained run's per-item tensors; 0: none.
    source = torch.tensor([0, *(trained_row.get(i, 0) for i in item_ids)], dtype=torch.long)
    weights = dict(run.weights)
    model = build_model(
        run.backbone,
        run.variant,
        run.model,
        len(item_ids),
        None if table is None else torch.from_numpy(table),
        input_dims=run.input_dims,
        adapter_weights=_prefixed(weights, "encoder.adapter.") if variant.warm else None,
        trained_items=torch.from_numpy(np.concatenate([[False], ~is_new])),
    )
    served = {name: value for name, value in weights.items() if name not in PER_ITEM}
    missing, unexpected = model.load_state_dict(served, strict=False)
    if unexpected or set(missing) - set(PER_ITEM):
        raise ValueError(
            f"{run.name}'s weights do not fit a {run.backbone}-{run.variant} model of these "
            f"settings (missing {sorted(set(missing) - set(PER_ITEM))}, unexpected "
            f"{sorted(unexpected)}): was it trained with other recommenders.model settings?"
        )
    with torch.no_grad():
        for name in ("encoder.ids.weight", "encoder.embedding.weight"):
            if name in weights:
                rows = weights[name][source] * (source != 0).unsqueeze(-1)
                model.get_parameter(name).copy_(rows)
    model.eval()
    model.encoder = PrecomputedItems(model.encoder)
    return model, ServingItems(item_ids, is_new)


def _prefixed(weights: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class Histories:
    """Every user's interactions in time order, as candidate indices (1..N; 0: no candidate)."""

    user_ids: list[str]
    ptr: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # int64, by user then time


def user_histories(interactions: pa.Table, candidate_ids: Sequence[str]) -> Histories:
    """Each user's interactions (user_id, item_id, timestamp), ordered by time as the split
    orders them (timestamp, then item id), with each item as its candidate index."""
    users, user_codes = np.unique(
        interactions["user_id"].to_numpy(zero_copy_only=False), return_inverse=True
    )
    item_ids = interactions["item_id"].to_numpy(zero_copy_only=False)
    seconds = pc.cast(interactions["timestamp"], pa.int64()).to_numpy()
    order = np.lexsort((item_ids, seconds, user_codes))
    index = pc.index_in(interactions["item_id"], pa.array(candidate_ids, pa.string()))
    candidates = pc.fill_null(index, -1).to_numpy().astype(np.int64) + 1
    ptr = np.searchsorted(user_codes[order], np.arange(len(users) + 1)).astype(np.int64)
    return Histories(users.tolist(), ptr, candidates[order])


@dataclass(frozen=True)
class Lists:
    """Each user's top K: (U, K) candidate indices from 0 (-1: no more candidates) and scores."""

    user_ids: list[str]
    items: np.ndarray
    scores: np.ndarray
    popularity: np.ndarray  # (U,) bool: the popularity list, for a user the model cannot represent
    search: str  # "exact" or "faiss-hnsw"
    # FAISS's recall@10 against exact scoring, seen items excluded, on the shortest histories'
    # batch of users; 1.0 for exact scoring.
    recall: float

    def summary(self, items: ServingItems) -> dict[str, object]:
        """Users, rows, and how many lists hold a new item or are popularity lists."""
        found = self.items >= 0
        new = np.zeros_like(found)
        new[found] = items.is_new[self.items[found]]
        return {
            "users": len(self.user_ids),
            "rows": int(found.sum()),
            "new_items": int(items.is_new.sum()),
            "lists_with_a_new_item": float(new.any(axis=1).mean()) if len(self.user_ids) else 0.0,
            "popularity_lists": int(self.popularity.sum()),
            "search": self.search,
            "recall@10": self.recall,
        }


@torch.no_grad()
def recommend(
    model: SequentialRecommender,
    items: ServingItems,
    histories: Histories,
    k: int,
    exact_max_items: int,
    ef_search: int = 128,
) -> Lists:
    """Every user's top `k` unseen candidates by the model's scores, or the popularity list for a
    user none of whose items it can represent (such a user has seen no candidate). Every
    candidate is scored up to `exact_max_items` candidates; above, FAISS HNSW finds them
    (`ef_search`: its search-time list)."""
    table = model.encoder.all_items()[1:]  # (N, h)
    approximate = None
    if choose_search(table.shape[0], exact_max_items) == "faiss":
        approximate = ApproximateTopK(table, ef_search=ef_search)
    ptr, seen = _candidates_only(histories)
    lengths = np.diff(ptr)
    recall = 1.0
    n_users = len(histories.user_ids)
    top = np.full((n_users, k), -1, dtype=np.int64)
    scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    # Users by history length, each batch as wide as its longest history plus one column
    # (BERT4Rec's [MASK]), as in evaluation (training.rank_users).
    modelled = np.flatnonzero(lengths > 0)
    modelled = modelled[np.argsort(lengths[modelled], kind="stable")]
    for start in range(0, modelled.size, USER_BATCH):
        batch = modelled[start : start + USER_BATCH]
        width = min(int(lengths[batch].max()) + 1, model.config.max_len)
        history = torch.from_numpy(left_padded(seen, ptr[batch], ptr[batch + 1], width))
        vectors = model.user_vectors(history)  # (B, h)
        batch_ptr, batch_seen = gather(seen, ptr[batch], ptr[batch + 1])
        if approximate is not None:
            found = approximate.search(vectors, batch_ptr, batch_seen - 1, k)
            if start == 0:  # the first batch's exact lists: what the approximate search costs
                exact = top_k_unseen(vectors, table, batch_ptr, batch_seen - 1, k)
                recall = recall_at_k(found[0], exact[0], min(k, RECALL_AT))
        else:
            found = top_k_unseen(vectors, table, batch_ptr, batch_seen - 1, k)
        top[batch], scores[batch] = found
    popularity = lengths == 0
    if popularity.any():
        counts = np.bincount(seen, minlength=len(items.item_ids) + 1)[1:].astype(np.float32)
        by_count = torch.from_numpy(counts)[:, None]  # (N, 1): one "user" whose score is 1 x count
        nothing_seen = (np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int64))
        popular = top_k_unseen(torch.ones(1, 1), by_count, *nothing_seen, k)
        top[popularity], scores[popularity] = popular[0][0], popular[1][0]
    search = "exact" if approximate is None else "faiss-hnsw"
    return Lists(histories.user_ids, top, scores, popularity, search, recall)


class PrecomputedItems(torch.nn.Module):
    """`encoder` with its item table computed once, `block` items at a time (no (N, 2h)
    intermediate of a large catalog): the forward pass looks items up instead of running the
    adapter again for every batch of users."""

    def __init__(self, encoder: torch.nn.Module, block: int = 65_536) -> None:
        super().__init__()
        self.n_items = encoder.n_items
        with torch.no_grad():
            blocks = [
                encoder(torch.arange(start, min(start + block, self.n_items + 1)))
                for start in range(0, self.n_items + 1, block)
            ]
        self.table = torch.cat(blocks)  # (N + 1, h), row 0 the padding's zeros

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.table[items]

    def all_items(self) -> torch.Tensor:
        return self.table


def _candidates_only(histories: Histories) -> tuple[np.ndarray, np.ndarray]:
    """The histories without the items the model cannot represent (CSR)."""
    keep = histories.items > 0
    kept = np.concatenate([[0], np.cumsum(keep)])
    return kept[histories.ptr].astype(np.int64), histories.items[keep]


def gather(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """items[starts[b]:ends[b]] for each b, as CSR (ptr, flat)."""
    lengths = ends - starts
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    offsets = np.arange(ptr[-1]) - np.repeat(ptr[:-1], lengths)
    return ptr, items[np.repeat(starts, lengths) + offsets]


def left_padded(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """(B, width): the last `width` items of each range, left-padded with 0."""
    index = ends[:, None] - width + np.arange(width)[None, :]
    return np.where(index >= starts[:, None], items[np.clip(index, 0, None)], 0)


def choose_served_run(serve: str, scored: Mapping[str, Mapping[str, object]]) -> str | None:
    """The run to serve: `serve` itself, or for "auto" the run of `scored` ({run: its variant and
    validation NDCG@10 `value`}) with the best value among the variants that can score an item
    they never trained on (ties: the first name); None when there is none."""
    if serve != "auto":
        if serve not in scored:
            known = ", ".join(sorted(scored)) or "none"
            raise ValueError(
                f"recommend.serve names {serve!r}, no finished run (finished: {known})"
            )
        return serve
    frozen = [run for run, row in scored.items() if get_variant(str(row["variant"])).frozen]
    if not frozen:
        return None
    return min(frozen, key=lambda run: (-float(scored[run]["value"]), run))


def recommendation_table(
    lists: Lists, items: ServingItems, model_run: str, run_id: str
) -> pa.Table:
    """The `recommendations` rows (genair_core.tables.RECOMMENDATIONS) of `lists`, by user id and
    rank; a list shorter than K (fewer unseen candidates) has fewer rows."""
    found = lists.items >= 0  # (U, K)
    users = np.repeat(np.arange(len(lists.user_ids)), found.sum(axis=1))
    ranks = np.tile(np.arange(1, lists.items.shape[1] + 1), (len(lists.user_ids), 1))[found]
    candidates = lists.items[found]
    user_ids = pa.array(lists.user_ids, pa.string()).take(pa.array(users))
    return pa.table(
        {
            "user_id": user_ids,
            "rank": pa.array(ranks.astype(np.int32)),
            "item_id": pa.array(items.item_ids, pa.string()).take(pa.array(candidates)),
            "score": pa.array(lists.scores[found].astype(np.float32)),
            "is_new_item": pa.array(items.is_new[candidates]),
            "is_popularity_list": pa.array(lists.popularity[users]),
            "model_run": pa.array([model_run] * candidates.size, pa.string()),
            "run_id": pa.array([run_id] * candidates.size, pa.string()),
        },
        schema=RECOMMENDATIONS,
    )
