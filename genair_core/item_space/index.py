"""Cosine nearest neighbours over item vectors with FAISS: build, search, the GPU move.

Cosine similarity is the inner product of L2-normalised vectors, so every vector is normalised
once when it is added and every query when it is asked; scores are cosines in [-1, 1].

    built = build_item_index(vectors_table, item_index, IndexConfig())
    scores, ids = search(built.index, queries, k=10)       # (Q, k) cosines and FAISS ids
    feed = all_neighbours(built.index, built.ids, k=20, space="calibrated")  # every item's k

Which index (docs/benchmarks.md, "FAISS index"):
- up to `exact_max_items` items, `IndexFlatIP`: exact, no parameters, nothing to tune;
- above it, `IndexHNSWFlat` (inner product) with `m`, `ef_construction` and `ef_search`: one
  query visits O(log N) nodes instead of all N, at a recall below 1 that the benchmark measures.

FAISS ids are the items' `item_idx` (item_index, from 1), wrapped in an `IndexIDMap2` so that a
search returns them directly and `reconstruct(id)` gives an item's stored (normalised) vector
back. Items with a vector but no item_idx (outside the k-core: new or rarely seen items) get ids
after the largest item_idx, in item_id order; `ids` maps every FAISS id back to its item_id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genair_core.config import IndexConfig
from genair_core.tables import SIMILAR_ITEMS, to_matrix

INDEX_VERSION = 1  # bump when what a built index holds changes (ids, normalisation, types)
IDS = pa.schema(
    [
        pa.field("faiss_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
    ]
)
Kind = Literal["flat", "hnsw"]


class ItemLookupError(LookupError):
    """ITEM matches no item (`candidates` empty) or several (`candidates` lists them)."""

    def __init__(self, message: str, candidates: list[tuple[str, str | None]]) -> None:
        super().__init__(message)
        self.candidates = candidates


@dataclass(frozen=True)
class BuiltIndex:
    index: faiss.Index  # IndexIDMap2 over IndexFlatIP or IndexHNSWFlat, on the CPU
    ids: pa.Table  # IDS: faiss_id -> item_id, one row per vector, in faiss_id order
    params: dict[str, object]  # type, metric and the build parameters (index_params)
    versions: list[str]  # the vector table's own version column values (adapter / PCA basis)
    seconds: float  # wall time of the build (normalise + add)


def index_kind(n_items: int, cfg: IndexConfig) -> Kind:
    return "flat" if n_items <= cfg.exact_max_items else "hnsw"


def build_params(cfg: IndexConfig) -> dict[str, object]:
    """The settings a built index depends on (its step fingerprint): not ef_search or gpu,
    which are applied when an index is searched."""
    return cfg.model_dump(include={"exact_max_items", "m", "ef_construction"})


def faiss_ids(item_ids: pa.Array | pa.ChunkedArray, item_index: pa.Table) -> np.ndarray:
    """(N,) int64 FAISS ids for the vector rows' item_ids: item_idx where item_index has one,
    else ids after the largest item_idx in item_id order."""
    item_ids = pa.chunked_array([item_ids]) if isinstance(item_ids, pa.Array) else item_ids
    ids = item_ids.to_pylist()
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dupes = sorted({i for i in ids if i in seen or seen.add(i)})
        raise ValueError(f"item_id repeats in the vector table: {dupes[:5]}")
    known = dict(
        zip(
            item_index.column("item_id").to_pylist(),
            item_index.column("item_idx").to_pylist(),
            strict=True,
        )
    )
    start = max(known.values(), default=0) + 1
    extra = {item: start + n for n, item in enumerate(sorted(i for i in ids if i not in known))}
    return np.array([known.get(i, extra.get(i)) for i in ids], dtype=np.int64)


def normalized(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """(N, D) float32 rows scaled to unit length; an error names `what` and the bad rows."""
    vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if vectors.ndim != 2:
        raise ValueError(f"{what}: expected an (N, D) matrix, got shape {vectors.shape}")
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise ValueError(f"{what}: {bad.size} rows hold NaN or inf (rows {bad[:5].tolist()})")
    norms = np.linalg.norm(vectors, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(f"{what}: {zero.size} rows are zero vectors (rows {zero[:5].tolist()})")
    vectors /= norms[:, None]
    return vectors


def new_index(dim: int, kind: Kind, cfg: IndexConfig) -> faiss.Index:
    """An empty index of `kind` for `dim`-d normalised vectors, with item ids."""
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    else:
        inner = faiss.IndexHNSWFlat(dim, cfg.m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = cfg.ef_construction
        inner.hnsw.efSearch = cfg.ef_search
    return faiss.IndexIDMap2(inner)  # the Python wrapper keeps `inner` alive with it


def build_index(
    vectors: np.ndarray, ids: np.ndarray, cfg: IndexConfig, what: str = "vectors"
) -> faiss.Index:
    """An index holding the (N, D) `vectors` normalised, under the (N,) int64 `ids`."""
    unit = normalized(vectors, what)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (len(unit),):
        raise ValueError(f"{what}: {len(unit)} vectors but {ids.shape} ids")
    index = new_index(unit.shape[1], index_kind(len(unit), cfg), cfg)
    index.add_with_ids(unit, ids)
    return index


def build_item_index(
    vectors: pa.Table, item_index: pa.Table, cfg: IndexConfig, table: str = "vectors"
) -> BuiltIndex:
    """The index over a vector table's rows (item_id, vector[, version | basis_id]) with FAISS
    ids from `item_index` (item_id, item_idx). Errors name `table` and the column at fault."""
    for column in ("item_id", "vector"):
        if column not in vectors.column_names:
            raise ValueError(f"{table} has no column {column!r}")
    if vectors.num_rows == 0:
        raise ValueError(f"{table} is empty: there is nothing to index")
    started = time.perf_counter()
    ids = faiss_ids(vectors.column("item_id"), item_index)
    index = build_index(to_matrix(vectors.column("vector")), ids, cfg, f"{table}.vector")
    seconds = time.perf_counter() - started
    order = np.argsort(ids)
    id_table = pa.table(
        {"faiss_id": ids[order], "item_id": vectors.column("item_id").take(order)}, schema=IDS
    )
    version_column = next((c for c in ("version", "basis_id") if c in vectors.column_names), None)
    versions = sorted(set(vectors.column(version_column).to_pylist())) if version_column else []
    return BuiltIndex(index, id_table, index_params(index), versions, seconds)


def index_params(index: faiss.Index) -> dict[str, object]:
    """What kind of index this is and how it was built: recorded in the index's manifest."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    metric = "inner_product" if inner.metric_type == faiss.METRIC_INNER_PRODUCT else "other"
    if isinstance(inner, faiss.IndexHNSW):
        return {
            "type": "IndexHNSWFlat",
            "metric": metric,
            "m": int(inner.hnsw.nb_neighbors(1)),  # level 0 holds 2·m, the levels above m
            "ef_construction": int(inner.hnsw.efConstruction),
            "ef_search": int(inner.hnsw.efSearch),
        }
    return {"type": type(inner).__name__, "metric": metric}


def prepare_for_search(index: faiss.Index, cfg: IndexConfig) -> faiss.Index:
    """The index as searches should use it: HNSW's ef_search from the settings; an exact index
    moved to the GPU when `cfg.gpu` and FAISS sees one (the CPU build has no GPU and is kept)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = max(cfg.ef_search, 1)
        return index
    if cfg.gpu and gpu_count() > 0:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def gpu_count() -> int:
    """GPUs FAISS can use: 0 with faiss-cpu, whose module lacks the GPU functions."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) cosines, best first, and the FAISS ids they belong to (-1 where the index holds
    fewer than k items, with score -inf)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    unit = normalized(np.atleast_2d(queries), "queries")
    if unit.shape[1] != index.d:
        raise ValueError(f"queries have {unit.shape[1]} dimensions, the index {index.d}")
    scores, ids = index.search(unit, k)
    return scores, ids


def neighbours(
    index: faiss.Index, ids: pa.Table, item_id: str, k: int, search_index: faiss.Index | None = None
) -> list[tuple[str, float]]:
    """The `k` items most similar to `item_id` (itself excluded) as (item_id, cosine), best
    first. The query is the item's own vector as the index stores it, so the answer depends on
    nothing but the index. `search_index` is the same index prepared for search (a GPU copy)."""
    faiss_id = _faiss_id(ids, item_id)
    query = index.reconstruct(faiss_id).reshape(1, -1)
    scores, found = search(search_index or index, query, min(k + 1, index.ntotal))
    item_of = dict(
        zip(ids.column("faiss_id").to_pylist(), ids.column("item_id").to_pylist(), strict=True)
    )
    hits = [
        (item_of[int(i)], float(s))
        for s, i in zip(scores[0], found[0], strict=True)
        if i >= 0 and int(i) != faiss_id
    ]
    return hits[:k]


# How many items' neighbours one FAISS call searches: enough queries for its BLAS path.
NEIGHBOUR_BLOCK = 4096
NEIGHBOURS_VERSION = 1  # bump when what all_neighbours returns changes


def all_neighbours(
    index: faiss.Index,
    ids: pa.Table,
    k: int,
    space: str,
    search_index: faiss.Index | None = None,
) -> pa.Table:
    """Every indexed item's `k` most similar items, itself excluded: SIMILAR_ITEMS rows without
    run_id (item_id, rank 1..k, neighbour_id, score as cosine, space), by item_id then rank.

    Each query is the item's vector as the index stores it, as in `neighbours`; the index is
    searched for k + 1 (itself among them) in blocks of NEIGHBOUR_BLOCK items. Equal scores rank
    by neighbour_id (which of a tie across the k-th place is kept is FAISS's choice). An index
    of k items or fewer gives each item the others only. `search_index` is the same index
    prepared for search (a GPU copy)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    faiss_ids = ids.column("faiss_id").to_numpy()  # (N,) ascending, as IDS keeps them
    item_ids = ids.column("item_id")
    fetch = min(k + 1, index.ntotal)
    by_name = np.empty(len(faiss_ids), dtype=np.int64)  # each row's place in item_id order
    by_name[pc.sort_indices(item_ids).to_numpy()] = np.arange(len(faiss_ids))
    items, neighbours_, scores_ = [], [], []
    for start in range(0, len(faiss_ids), NEIGHBOUR_BLOCK):
        query_ids = faiss_ids[start : start + NEIGHBOUR_BLOCK]
        queries = index.reconstruct_batch(query_ids)  # (B, D)
        scores, found = search(search_index or index, queries, fetch)  # (B, fetch)
        rows = np.searchsorted(faiss_ids, found)  # (B, fetch) rows of `ids`; -1 masked below
        valid = (found >= 0) & (found != query_ids[:, None])
        query = np.repeat(np.arange(len(query_ids)), fetch)
        # Per query: the valid hits first, by score descending, then by neighbour_id.
        order = np.lexsort(
            (
                by_name[np.where(valid, rows, 0)].ravel(),
                -scores.ravel(),
                ~valid.ravel(),
                query,
            )
        ).reshape(len(query_ids), fetch)[:, : fetch - 1 if fetch > k else fetch]
        take = valid.ravel()[order]  # (B, k') the kept hits
        items.append((start + query.reshape(-1, fetch)[:, : order.shape[1]])[take])
        neighbours_.append(rows.ravel()[order][take])
        scores_.append(scores.ravel()[order][take])
    item_rows = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    table = pa.table(
        {
            "item_id": item_ids.take(item_rows),
            "rank": pa.array(_ranks(item_rows), pa.int32()),
            "neighbour_id": item_ids.take(np.concatenate(neighbours_) if items else item_rows),
            "score": pa.array(np.concatenate(scores_) if items else np.zeros(0), pa.float32()),
            "space": pa.repeat(pa.scalar(space, pa.string()), len(item_rows)),
        }
    )
    schema = SIMILAR_ITEMS.remove(SIMILAR_ITEMS.get_field_index("run_id"))
    return table.cast(schema).sort_by([("item_id", "ascending"), ("rank", "ascending")])


def _ranks(item_rows: np.ndarray) -> np.ndarray:
    """1, 2, ... within each run of equal values of `item_rows` (grouped, in rank order)."""
    if not len(item_rows):
        return np.zeros(0, dtype=np.int32)
    starts = np.flatnonzero(np.r_[True, item_rows[1:] != item_rows[:-1]])
    return np.arange(len(item_rows)) - np.repeat(starts, np.diff(np.r_[starts, len(item_rows)])) + 1


def pick_item(text: str, candidates: list[tuple[str, str | None]]) -> str:
    """The one item `text` names among `candidates` (item_id, title): an exact item_id, else an
    exact title (case-insensitive), else the only candidate. ItemLookupError otherwise."""
    exact_id = [c for c in candidates if c[0] == text]
    if exact_id:
        return exact_id[0][0]
    exact_title = [c for c in candidates if (c[1] or "").casefold() == text.casefold()]
    if len(exact_title) == 1:
        return exact_title[0][0]
    if len(candidates) == 1:
        return candidates[0][0]
    if not candidates:
        raise ItemLookupError(f"no item has the id {text!r} or a title containing it", [])
    raise ItemLookupError(
        f"{len(candidates)} items match {text!r}; give one of their ids", candidates
    )


def _faiss_id(ids: pa.Table, item_id: str) -> int:
    row = pc.index(ids.column("item_id"), item_id).as_py()
    if row < 0:
        raise ItemLookupError(f"item {item_id!r} has no vector in this index", [])
    return int(ids.column("faiss_id")[row].as_py())


@dataclass(frozen=True)
class SimilarItem:
    item_id: str
    title: str | None
    score: float  # cosine
    archetype: str | None  # the first line of the item's archetype, None if it has none


def similar_rows(
    hits: list[tuple[str, float]], titles: dict[str, str | None], archetypes: dict[str, str]
) -> list[SimilarItem]:
    """Neighbours as rows a person reads: title, cosine and the archetype's first line."""
    return [
        SimilarItem(item, titles.get(item), score, _first_line(archetypes.get(item)))
        for item, score in hits
    ]


def _first_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else None
