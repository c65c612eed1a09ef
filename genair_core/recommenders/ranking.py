"""Each user's top-K unseen candidates by inner product: exact in blocks, or FAISS HNSW.

A score is the inner product of a user vector (U, h) and a candidate row (N, h), not normalised
(the models score next items this way). A user's list holds the K best candidates the user has
not interacted with, best first; equal scores are ordered by the smaller candidate index, and
candidates are ordered by item id, so ties follow item ids and a rerun writes the same lists.
A user with fewer than K unseen candidates gets a shorter list, padded with index -1 and score
-inf. The seen items come as CSR: user u's are `seen_items[seen_ptr[u]:seen_ptr[u + 1]]`,
candidate indices that may repeat.

- `top_k_unseen` (exact): a block of users is scored against every candidate with one matmul in
  the candidates' dtype (Spark MLlib's `recommendForAllUsers` shape), the block's seen items are
  set to -inf (Microsoft Recommenders' `remove_seen`, before the top-K), then `torch.topk` takes
  K + TIE_MARGIN and a stable sort orders them by (score desc, index asc). torch.topk does not
  say which of equal scores it keeps, so where the K-th score's tie run reaches the end of the
  margin the row is redone from its full score row: everything above the K-th score, then the
  smallest indices that equal it. Memory: one (batch_size, N) score block.
- `ApproximateTopK`: FAISS `IndexHNSWFlat` with the inner-product metric over the candidates. A
  FAISS search cannot exclude different ids for different queries in one call (an ID selector
  applies to the whole call), so each user is asked for K + (its seen count) and the seen ones
  are dropped afterwards; whatever HNSW found beyond them is ordered by the same rule. Users are
  searched in blocks sorted by seen count, so a block asks for about what its users need.
  The extra is not capped below the seen count: a trained model ranks a user's own items high,
  so they tend to fill the top of the search and a smaller over-fetch would shorten the lists.
- `choose_search`: exact up to `exact_max_items` candidates, FAISS above (docs/benchmarks.md,
  "Recommendation lists: exact vs FAISS", measures where and why).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import faiss
import numpy as np
import torch

TIE_MARGIN = 16  # candidates topk keeps beyond K, so that a tie at the K-th rarely needs a redo
Search = Literal["exact", "faiss"]


def choose_search(n_items: int, exact_max_items: int) -> Search:
    """`"exact"` for a catalog of at most `exact_max_items` candidates, `"faiss"` above."""
    if n_items < 0 or exact_max_items < 0:
        raise ValueError(
            f"n_items ({n_items}) and exact_max_items ({exact_max_items}) must be >= 0"
        )
    return "exact" if n_items <= exact_max_items else "faiss"


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over users of |found[:, :k] ∩ exact[:, :k]| / (the exact list's length within k):
    the share of each exact list an approximate search recovers. -1 (padding) is no item; users
    whose exact list is empty are left out (their recall is undefined)."""
    if found.shape != exact.shape or found.ndim != 2:
        raise ValueError(
            f"found and exact must be (users, k) lists of the same shape, got {found.shape} "
            f"and {exact.shape}"
        )
    shares = []
    for got, want in zip(found[:, :k], exact[:, :k], strict=True):
        want = set(want[want >= 0].tolist())
        if want:
            shares.append(len(want & set(got.tolist())) / len(want))
    return float(np.mean(shares)) if shares else float("nan")


def _check_inputs(
    user_vectors: torch.Tensor | np.ndarray,
    n_items: int,
    dim: int,
    seen_ptr: np.ndarray,
    seen_items: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (seen_ptr, seen_items) as int64; errors name the problem."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if user_vectors.ndim != 2 or user_vectors.shape[1] != dim:
        raise ValueError(
            f"user_vectors must be (users, {dim}) like the candidates, got shape "
            f"{tuple(user_vectors.shape)}"
        )
    n_users = user_vectors.shape[0]
    ptr = np.asarray(seen_ptr)
    seen = np.asarray(seen_items)
    if ptr.shape != (n_users + 1,):
        raise ValueError(f"seen_ptr must be ({n_users + 1},) for {n_users} users, got {ptr.shape}")
    if not (np.issubdtype(ptr.dtype, np.integer) and np.issubdtype(seen.dtype, np.integer)):
        raise ValueError(
            f"seen_ptr and seen_items must hold integers, got {ptr.dtype} and {seen.dtype}"
        )
    if seen.ndim != 1:
        raise ValueError(f"seen_items must be one-dimensional, got shape {seen.shape}")
    if n_users and (ptr[0] < 0 or ptr[-1] > seen.size or np.any(np.diff(ptr) < 0)):
        raise ValueError(
            f"seen_ptr must be non-decreasing within 0..{seen.size} (the length of seen_items)"
        )
    used = seen[ptr[0] : ptr[-1]] if n_users else seen[:0]
    if used.size and (used.min() < 0 or used.max() >= n_items):
        bad = used[(used < 0) | (used >= n_items)]
        raise ValueError(
            f"seen_items must be candidate indices in 0..{n_items - 1}, got {bad[:5].tolist()}"
        )
    return ptr.astype(np.int64, copy=False), seen.astype(np.int64, copy=False)


def _check_finite(vectors: torch.Tensor, what: str) -> None:
    bad = torch.nonzero(~torch.isfinite(vectors).all(dim=1)).flatten()
    if bad.numel():
        raise ValueError(f"{what}: {bad.numel()} rows hold NaN or inf (rows {bad[:5].tolist()})")


def _order_by_score_then_index(
    scores: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of (scores, index) (B, F) reordered by score descending, then index ascending."""
    by_index = torch.argsort(index, dim=1)
    scores, index = scores.gather(1, by_index), index.gather(1, by_index)
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return scores.gather(1, by_score), index.gather(1, by_score)


@torch.inference_mode()
def top_k_unseen(
    user_vectors: torch.Tensor,
    items: torch.Tensor,
    seen_ptr: np.ndarray,
    seen_items: np.ndarray,
    k: int,
    *,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k unseen candidates of every user: ((U, k) int64 indices, (U, k) float32 scores).

    user_vectors (U, h); items (N, h), row i = candidate i, in the dtype to score in (the users
    are cast to it); seen CSR as in the module docstring. Scores are computed batch_size users at
    a time, so memory holds one (batch_size, N) block of scores in the items' dtype, and a
    transposed copy of the items. The order within a row is exact for the scores as computed;
    BLAS may round a row's scores differently for another batch size, which can swap two
    candidates whose scores differ in the last bit.
    """
    if items.ndim != 2:
        raise ValueError(f"items must be (candidates, h), got shape {tuple(items.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_items, dim = items.shape
    ptr, seen = _check_inputs(user_vectors, n_items, dim, seen_ptr, seen_items, k)
    _check_finite(items, "items")
    _check_finite(user_vectors, "user_vectors")
    n_users = user_vectors.shape[0]
    out_index = np.full((n_users, k), -1, dtype=np.int64)
    out_scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    if n_items == 0:
        return out_index, out_scores
    keep = min(k, n_items)
    fetch = min(n_items, k + TIE_MARGIN)
    users = user_vectors.to(device=items.device, dtype=items.dtype)
    candidates_t = items.T.contiguous()  # (h, N): MKL multiplies it faster than the items.T view
    # One block of scores reused: a fresh (B, N) tensor each block is page-faulted in anew, which
    # at 1M candidates cost a third of the matmul's rate (docs/benchmarks.md).
    block = torch.empty((min(batch_size, n_users), n_items), dtype=items.dtype, device=items.device)
    for start in range(0, n_users, batch_size):
        stop = min(start + batch_size, n_users)
        scores = torch.matmul(users[start:stop], candidates_t, out=block[: stop - start])
        lengths = torch.from_numpy(np.diff(ptr[start : stop + 1]))
        owners = torch.repeat_interleave(torch.arange(stop - start), lengths)
        seen_here = torch.from_numpy(seen[ptr[start] : ptr[stop]])
        scores.view(-1)[(owners * n_items + seen_here).to(scores.device)] = -torch.inf
        top_scores, top_index = torch.topk(scores, fetch, dim=1)
        top_scores, top_index = _order_by_score_then_index(top_scores, top_index)
        kth = top_scores[:, keep - 1]
        # A tie run at the K-th score that reaches the last fetched score may go on beyond it.
        redo = torch.nonzero((top_scores[:, -1] == kth) & (kth > -torch.inf)).flatten()
        if fetch == n_items:
            redo = redo[:0]
        rows_scores, rows_index = top_scores[:, :keep].clone(), top_index[:, :keep].clone()
        for row in redo.tolist():
            above = int((top_scores[row] > kth[row]).sum())
            tied = torch.nonzero(scores[row] == kth[row]).flatten()[: keep - above]
            rows_index[row, above:] = tied
            rows_scores[row, above:] = kth[row]
        rows_scores = rows_scores.to(torch.float32)
        unseen = rows_scores > -torch.inf
        out_index[start:stop, :keep] = torch.where(unseen, rows_index, -1).cpu().numpy()
        out_scores[start:stop, :keep] = rows_scores.cpu().numpy()
    return out_index, out_scores


class ApproximateTopK:
    """FAISS HNSW over the candidates (inner product, not normalised); `search` gives each user's
    top-k unseen candidates among those the graph finds, in `top_k_unseen`'s form and order.

    m, ef_construction: the graph (built once here); ef_search: the breadth of a search, raised
    to the number of results asked for where that is larger (FAISS does so). `threads`: FAISS's
    OpenMP threads for the build and each search (None: FAISS's current setting)."""

    def __init__(
        self,
        items: torch.Tensor | np.ndarray,
        *,
        m: int = 32,
        ef_construction: int = 100,
        ef_search: int = 128,
        threads: int | None = None,
    ) -> None:
        vectors = np.ascontiguousarray(
            items.detach().cpu().float().numpy() if isinstance(items, torch.Tensor) else items,
            dtype=np.float32,
        )
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise ValueError(
                f"items must be a non-empty (candidates, h) matrix, got {vectors.shape}"
            )
        _check_finite(torch.from_numpy(vectors), "items")
        if m < 2 or ef_construction < 1 or ef_search < 1:
            raise ValueError(
                f"m must be >= 2, ef_construction and ef_search >= 1 (got {m}, "
                f"{ef_construction}, {ef_search})"
            )
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.n_items, self.dim = vectors.shape
        self.ef_search = ef_search
        self.threads = threads
        self.index = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        with _omp_threads(threads):
            self.index.add(vectors)

    def search(
        self,
        user_vectors: torch.Tensor | np.ndarray,
        seen_ptr: np.ndarray,
        seen_items: np.ndarray,
        k: int,
        *,
        batch_size: int = 1024,
    ) -> tuple[np.ndarray, np.ndarray]:
        """((U, k) int64 indices, (U, k) float32 scores), best first, -1 / -inf padded."""
        queries = np.ascontiguousarray(
            user_vectors.detach().cpu().float().numpy()
            if isinstance(user_vectors, torch.Tensor)
            else user_vectors,
            dtype=np.float32,
        )
        ptr, seen = _check_inputs(queries, self.n_items, self.dim, seen_ptr, seen_items, k)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _check_finite(torch.from_numpy(queries), "user_vectors")
        n_users = queries.shape[0]
        out_index = np.full((n_users, k), -1, dtype=np.int64)
        out_scores = np.full((n_users, k), -np.inf, dtype=np.float32)
        counts = np.diff(ptr)
        order = np.argsort(counts, kind="stable")
        with _omp_threads(self.threads):
            for start in range(0, n_users, batch_size):
                users = order[start : start + batch_size]
                fetch = int(min(self.n_items, k + counts[users].max()))
                params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, fetch))
                found_scores, found = self.index.search(queries[users], fetch, params=params)
                index, scores = _drop_seen(found, found_scores, users, ptr, seen, self.n_items, k)
                out_index[users, : index.shape[1]] = index
                out_scores[users, : index.shape[1]] = scores
        return out_index, out_scores


def _drop_seen(
    found: np.ndarray,
    found_scores: np.ndarray,
    users: np.ndarray,
    ptr: np.ndarray,
    seen: np.ndarray,
    n_items: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The first k of each row of a FAISS result (B, F) that are neither -1 (not found) nor seen
    by the row's user, ordered by score desc, index asc: ((B, ≤k) indices, scores)."""
    rows = np.arange(users.size, dtype=np.int64)
    lengths = ptr[users + 1] - ptr[users]
    owner = np.repeat(rows, lengths)
    gather = np.repeat(ptr[users] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    seen_keys = owner * n_items + seen[gather + np.arange(lengths.sum())]
    found_keys = rows[:, None] * n_items + found
    drop = (found < 0) | np.isin(found_keys, seen_keys)
    scores = np.where(drop, -np.inf, found_scores).astype(np.float32)
    index = np.where(drop, np.iinfo(np.int64).max, found)
    by = np.lexsort((index, -scores), axis=-1)[:, :k]
    index = np.take_along_axis(index, by, axis=1)
    scores = np.take_along_axis(scores, by, axis=1)
    return np.where(scores > -np.inf, index, -1), scores


@contextmanager
def _omp_threads(threads: int | None) -> Iterator[None]:
    """FAISS's OpenMP thread count set for a block and restored after (None: left alone)."""
    if threads is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


__all__ = [
    "TIE_MARGIN",
    "ApproximateTopK",
    "Search",
    "choose_search",
    "recall_at_k",
    "top_k_unseen",
]
