"""Leave-one-out ranking metrics: full and sampled ranks, HR@k / NDCG@k, and user groups.

Each test user has one held-out target item; a model scores every item and the target's rank
decides the metrics. Item indices are 1..n_items and column 0 of a score matrix is padding, never a
candidate. Users are the row positions 0..U-1 of the arrays given.

Ranks are 0-based and honest: the rank is the number of *other* candidates scored >= the target,
so a tie counts against the model (a model scoring everything alike ranks last, not first), and a
NaN score, the target's or a candidate's, counts against it too. In the full ranking, the items of
the user's history are not candidates (the usual protocol: recommending what the user already
consumed is neither rewarded nor punished), except the target itself when it is a repeat.

Sampled ranking (target against 100 sampled negatives) is kept for comparison with papers that
report it; it overstates quality and can reorder models (Krichene & Rendle, KDD 2020), so the full
ranking is what results should be read on. A user's negatives come from a random stream seeded by
(seed, user index) alone, so adding users never changes the negatives of the existing ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KS = (5, 10, 20)


def full_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude_ptr: torch.Tensor,
    exclude_items: torch.Tensor,
) -> torch.Tensor:
    """0-based rank (U,) int64 of each user's target among all items, history masked.

    scores (U, n_items + 1) float, column 0 padding; targets (U,) item indices in 1..n_items;
    user u's masked items are exclude_items[exclude_ptr[u]:exclude_ptr[u + 1]] (CSR, U + 1
    pointers). The rank counts the candidates other than the target whose score is >= the
    target's, a candidate being any item in 1..n_items not masked for the user; the target is
    never masked. Runs on the device of `scores` with one boolean (U, n_items + 1) mask beside it:
    batch the users for a large catalog.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (users, n_items + 1), got shape {tuple(scores.shape)}")
    n_users, n_cols = scores.shape
    if targets.shape != (n_users,):
        raise ValueError(f"targets must be ({n_users},), got shape {tuple(targets.shape)}")
    if exclude_ptr.shape != (n_users + 1,):
        raise ValueError(f"exclude_ptr must be ({n_users + 1},), got {tuple(exclude_ptr.shape)}")
    device = scores.device
    rows = torch.arange(n_users, device=device)
    targets = targets.to(device=device, dtype=torch.long)
    ptr = exclude_ptr.to(device=device, dtype=torch.long)
    items = exclude_items.to(device=device, dtype=torch.long)[ptr[0] : ptr[-1]]

    candidate = torch.ones((n_users, n_cols), dtype=torch.bool, device=device)
    candidate[:, 0] = False
    owner = torch.repeat_interleave(rows, ptr[1:] - ptr[:-1], output_size=items.numel())
    candidate[owner, items] = False
    # The target is not a candidate against itself, masked in the history or not.
    candidate[rows, targets] = False

    target_scores = scores[rows, targets].unsqueeze(1)
    # not (s < t) is s >= t, and also true when either side is NaN: undefined counts against.
    at_or_above = ~(scores < target_scores)
    return (at_or_above & candidate).sum(dim=1, dtype=torch.int64)


def sampled_ranks(target_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """0-based rank (U,) int64 of each target among its m negatives: negatives scored >= it."""
    if negative_scores.ndim != 2 or target_scores.shape != negative_scores.shape[:1]:
        raise ValueError(
            f"expected target_scores (U,) and negative_scores (U, m), got "
            f"{tuple(target_scores.shape)} and {tuple(negative_scores.shape)}"
        )
    return (~(negative_scores < target_scores.unsqueeze(1))).sum(dim=1, dtype=torch.int64)


def rank_metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, np.ndarray]:
    """Per-user float64 "hr@k" (rank < k) and "ndcg@k" (1 / log2(rank + 2) if rank < k, else 0).

    With a single relevant item the ideal DCG is 1, so NDCG@k is the discounted gain alone. Keys in
    the order hr@k, ndcg@k for each k in `ks`.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 1:
        raise ValueError(f"ranks must be one-dimensional, got shape {ranks.shape}")
    if ranks.size and ranks.min() < 0:
        raise ValueError("ranks are 0-based and cannot be negative")
    gain = 1.0 / np.log2(ranks.astype(np.float64) + 2.0)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, gain, 0.0)
    return out


def sample_negatives(
    user_items_ptr: np.ndarray,
    user_items: np.ndarray,
    n_items: int,
    n: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """(U, n) int32 negatives per user, uniform without replacement over the items it never had.

    user u's interacted items are user_items[user_items_ptr[u]:user_items_ptr[u + 1]] (CSR, all
    splits: a negative must be no item the user ever consumed). Row u depends only on (seed, u),
    u's items, n_items and n. Raises ValueError naming the user if it has fewer than n candidates.
    """
    ptr = np.asarray(user_items_ptr, dtype=np.int64)
    items = np.asarray(user_items, dtype=np.int64)
    n_users = ptr.size - 1
    out = np.empty((n_users, n), dtype=np.int32)
    for u in range(n_users):
        owned = np.unique(items[ptr[u] : ptr[u + 1]])
        owned = owned[(owned >= 1) & (owned <= n_items)]
        n_candidates = n_items - owned.size
        if n_candidates < n:
            raise ValueError(
                f"user {u} has {n_candidates} candidate items (of {n_items}, "
                f"{owned.size} interacted), fewer than the {n} negatives asked for"
            )
        rng = np.random.default_rng([seed, u])
        if 2 * n <= n_candidates and 2 * owned.size <= n_items:
            out[u] = _rejection_sample(rng, owned, n_items, n, n_candidates)
        else:
            # Dense user or n close to the candidate count: rejection would mostly reject.
            complement = np.setdiff1d(np.arange(1, n_items + 1), owned, assume_unique=True)
            out[u] = rng.choice(complement, size=n, replace=False)
    return out


def _rejection_sample(
    rng: np.random.Generator, owned: np.ndarray, n_items: int, n: int, n_candidates: int
) -> np.ndarray:
    """n distinct items of 1..n_items outside the sorted `owned`, uniformly, in order of drawing.

    Keeping the first n distinct accepted draws of a uniform stream gives a uniform n-subset: each
    newly kept item is uniform over the candidates not kept yet. Under the caller's conditions
    (at most half the catalog owned, n at most half the candidates) one batch almost always does.
    """
    kept = np.zeros(0, dtype=np.int64)
    batch = math.ceil(1.5 * n * n_items / n_candidates) + 16
    while kept.size < n:
        draws = rng.integers(1, n_items + 1, size=batch)
        draws = draws[~np.isin(draws, owned)]
        stream = np.concatenate([kept, draws])
        _, first = np.unique(stream, return_index=True)
        kept = stream[np.sort(first)][:n]
    return kept


def tail_items(train_counts: np.ndarray, share: float) -> np.ndarray:
    """Bool mask (n_items + 1,) of the long-tail items; index 0 (padding) is never tail.

    Sort the items 1..n_items by training interactions ascending, ties by item index ascending
    (deterministic); the tail is the longest prefix of that order whose cumulative count is at most
    `share` of all training interactions. So the tail items together hold at most `share` (20%) of
    the training interactions, every item never seen in training is tail, and items with equal
    counts at the boundary are split by index. The rest (items 1..n_items) is the head.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must lie in [0, 1], got {share}")
    counts = np.asarray(train_counts, dtype=np.int64)[1:]
    if counts.size and counts.min() < 0:
        raise ValueError("train_counts cannot be negative")
    order = np.lexsort((np.arange(counts.size), counts))
    cumulative = np.cumsum(counts[order])
    total = int(cumulative[-1]) if cumulative.size else 0
    mask = np.zeros(counts.size + 1, dtype=bool)
    if total == 0:
        mask[1:] = True
        return mask
    # cum / total <= share rather than cum <= share * total: the division is exact whenever the
    # fraction equals `share`, while the product can round below it (0.57 * 100 < 57).
    mask[order[cumulative / total <= share] + 1] = True
    return mask


def short_history(history_lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """Bool mask of users whose history length is <= the median, and that threshold.

    The threshold is the median rounded down (lengths are integers, so the mask is the same).
    """
    lengths = np.asarray(history_lengths)
    if lengths.size == 0:
        raise ValueError("no users: the median history length is undefined")
    threshold = math.floor(float(np.median(lengths)))
    return lengths <= threshold, threshold


def group_metrics(
    ranks: np.ndarray,
    groups: dict[str, np.ndarray],
    ks: tuple[int, ...] = KS,
) -> dict[str, dict[str, float]]:
    """Mean metrics over all users and over each boolean user mask in `groups`.

    {"all": {"users": U, "hr@5": ..., "ndcg@5": ..., ...}, name: {...}, ...}, groups in the order
    given. An empty group has users 0 and NaN metrics.
    """
    per_user = rank_metrics(ranks, ks)
    n_users = np.asarray(ranks).size
    if "all" in groups:
        raise ValueError('"all" is reserved for the whole user set')
    masks = {"all": np.ones(n_users, dtype=bool)}
    for name, mask in groups.items():
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (n_users,):
            raise ValueError(f"group {name!r} must be a bool mask of shape ({n_users},)")
        masks[name] = mask
    out: dict[str, dict[str, float]] = {}
    for name, mask in masks.items():
        size = int(mask.sum())
        row: dict[str, float] = {"users": size}
        for metric, values in per_user.items():
            row[metric] = float(values[mask].mean()) if size else math.nan
        out[name] = row
    return out


def mean_pairwise_cosine(x: np.ndarray) -> float:
    """Mean cosine similarity over all pairs i != j of the rows of x (n, d), n >= 2.

    Computed without the (n, n) matrix: with unit rows u_i, sum over all ordered pairs i != j of
    u_i . u_j is |sum_i u_i|^2 - n. 1 when every row points the same way (a collapsed space), about
    0 for rows spread evenly around the origin. A zero row has no direction: ValueError.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a matrix of at least two rows, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    if not np.all(norms > 0) or not np.all(np.isfinite(norms)):
        bad = int(np.flatnonzero(~(norms > 0) | ~np.isfinite(norms))[0])
        raise ValueError(f"row {bad} is zero or not finite: its cosine is undefined")
    n = x.shape[0]
    total = np.square((x / norms[:, None]).sum(axis=0)).sum()
    return float((total - n) / (n * (n - 1)))


def effective_rank(x: np.ndarray) -> float:
    """Effective rank of x (n, d): exp of the Shannon entropy of its normalised singular values.

    Roy & Vetterli (2007): p_k = s_k / sum(s), erank = exp(-sum p_k log p_k), between 1 (all rows on
    one line, e.g. identical vectors) and min(n, d) (all singular values equal, e.g. orthonormal
    rows). The rows are taken as given, not centred: a space that collapsed towards one direction
    has one dominant singular value, which centring would hide, and identical rows give 1 rather
    than 0/0. The singular values are the square roots of the eigenvalues of the smaller Gram
    matrix, (d, d) for a tall x: memory and time grow with n only through one product.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"need a non-empty matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("matrix holds NaN or inf values")
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    s = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None))
    if s.sum() <= 0:
        raise ValueError("all-zero matrix: the effective rank is undefined")
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))
