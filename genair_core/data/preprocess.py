"""From validated interactions to the shared integer indices and leave-one-out sequences.

    tables = split_sequences(interactions, k=5)
    tables.item_index, tables.user_index, tables.sequences, tables.summary

Three decisions every later stage relies on:

- Indices start at 1 (0 is the padding index of every sequence model) and follow the string order
  of the ids, so the same input always gets the same indices, whatever its row order.
- A user's interactions are ordered by (timestamp, item_id, rating with nulls last). Equal
  timestamps are common (ratings entered in one session share a second), and any order the input
  happened to have is not reproducible, so ties are broken by the item_id string and then by the
  rating; rows equal in all of these are identical in the output, so the result does not depend
  on the input row order.
- Leave-one-out: a user's last interaction is "test", the second-to-last "valid", the rest
  "train". A user needs at least 3 interactions for that; with k >= 3 every user has them, and
  with k < 3 a user with 1 or 2 interactions keeps them all in "train" (counted in the summary as
  `users_train_only`): such a user still teaches the model, but has nothing to be evaluated on.

Everything here is vectorised over rows (numpy / pyarrow compute); the only Python loop is over
k-core passes, which end at the fixed point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genair_core.tables import INTERACTIONS, ITEM_INDEX, SEQUENCES, USER_INDEX

# Part of the pipeline's cache key: bump it whenever the same input would give different
# tables (k-core, indexing, ordering, split rule), so stored outputs are recomputed.
PREPROCESS_VERSION = 1
TRAIN, VALID, TEST = "train", "valid", "test"
SPLITS = (TRAIN, VALID, TEST)  # position in this tuple is the split's code below
MIN_LEAVE_ONE_OUT = 3  # fewer interactions than this: the user's rows all stay in "train"

_REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp", "rating")


@dataclass(frozen=True)
class SplitTables:
    """The output of `split_sequences`; the three tables match genair_core.tables exactly."""

    item_index: pa.Table
    user_index: pa.Table
    sequences: pa.Table
    summary: dict[str, int]  # counts before/after the k-core, k-core passes, rows per split


def kcore_mask(user_codes: np.ndarray, item_codes: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k-core: every surviving user and item has at least k surviving rows.

    Removing a user can push one of its items below k, which can push another user below k, so
    the removal is repeated until nothing changes. The fixed point is the unique largest subset in
    which every degree is >= k, whatever order the removals happen in. Rows are counted, so a
    repeated (user, item) pair counts every time. Codes are non-negative integers, best dense
    (np.bincount sizes its counts by the largest code).
    """
    return _kcore(user_codes, item_codes, k)[0]


def split_sequences(interactions: pa.Table, k: int) -> SplitTables:
    """k-core filter, index users and items, order each user's history and split it.

    `interactions` needs the user_id, item_id, timestamp and rating columns of
    genair_core.tables.INTERACTIONS with exactly those types; other columns are ignored.
    Raises TypeError when one of them has another type, ValueError when one is missing or has
    nulls the schema forbids, and ValueError when the k-core leaves no interaction (an empty
    dataset is never what a run wants).
    """
    _check_interactions(interactions)
    n_rows_before = interactions.num_rows

    user_codes, user_ids = _sorted_codes(interactions.column("user_id"))
    item_codes, item_ids = _sorted_codes(interactions.column("item_id"))
    keep, iterations = _kcore(user_codes, item_codes, k)
    if not keep.any():
        raise ValueError(
            f"the {k}-core of {n_rows_before} interactions is empty: "
            "every user or item has too few interactions (lower preprocess.k_core)"
        )

    rows = np.flatnonzero(keep)
    user_codes, item_codes = user_codes[rows], item_codes[rows]
    user_index, user_idx = _index_table(user_codes, user_ids, USER_INDEX)
    item_index, item_idx = _index_table(item_codes, item_ids, ITEM_INDEX)

    # Total order within a user: timestamp, item_id (codes follow string order), rating. Rating
    # keys: nulls last, then value, then the raw bits (settles -0.0 vs 0.0 and NaN payloads).
    ratings = interactions.column("rating")
    rating_null = ratings.is_null().to_numpy()[rows]
    rating_value = pc.fill_null(ratings, 0.0).to_numpy().astype(np.float32, copy=False)[rows]
    seconds = pc.cast(interactions.column("timestamp"), pa.int64()).to_numpy()[rows]
    order = np.lexsort(
        (rating_value.view(np.uint32), rating_value, rating_null, item_codes, seconds, user_idx)
    )
    user_idx, item_idx = user_idx[order], item_idx[order]
    source_rows = pa.array(rows[order])

    # Group offsets of the sorted users give each row its position and its user's length.
    lengths = np.bincount(user_idx, minlength=user_index.num_rows + 1)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(order), dtype=np.int64) - starts[user_idx]
    length = lengths[user_idx]
    from_end = length - 1 - position
    split_code = np.zeros(len(order), dtype=np.int32)
    has_holdout = length >= MIN_LEAVE_ONE_OUT
    split_code[has_holdout & (from_end == 1)] = SPLITS.index(VALID)
    split_code[has_holdout & (from_end == 0)] = SPLITS.index(TEST)

    sequences = pa.Table.from_arrays(
        [
            pa.array(user_idx, pa.int32()),
            pa.array(position, pa.int32()),
            pa.array(item_idx, pa.int32()),
            interactions.column("timestamp").take(source_rows),
            ratings.take(source_rows),
            pa.array(SPLITS, pa.string()).take(pa.array(split_code)),
        ],
        schema=SEQUENCES,
    )

    split_rows = np.bincount(split_code, minlength=len(SPLITS))
    summary = {
        "k": k,
        "users_before": len(user_ids),
        "items_before": len(item_ids),
        "interactions_before": n_rows_before,
        "kcore_iterations": iterations,
        "users_after": user_index.num_rows,
        "items_after": item_index.num_rows,
        "interactions_after": sequences.num_rows,
        **{f"{name}_rows": int(n) for name, n in zip(SPLITS, split_rows, strict=True)},
        "users_train_only": int(np.count_nonzero(lengths[1:] < MIN_LEAVE_ONE_OUT)),
    }
    return SplitTables(item_index, user_index, sequences, summary)


def _kcore(user_codes: np.ndarray, item_codes: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """`kcore_mask` plus the number of passes that removed rows (0: already a k-core)."""
    user_codes, item_codes = np.asarray(user_codes), np.asarray(item_codes)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if user_codes.ndim != 1 or user_codes.shape != item_codes.shape:
        raise ValueError(
            f"user_codes and item_codes must be 1-D of equal length, "
            f"got shapes {user_codes.shape} and {item_codes.shape}"
        )
    for name, codes in (("user_codes", user_codes), ("item_codes", item_codes)):
        if not np.issubdtype(codes.dtype, np.integer):
            raise TypeError(f"{name} must be integers, got dtype {codes.dtype}")
        if codes.size and codes.min() < 0:
            raise ValueError(f"{name} must be >= 0")
    if user_codes.size == 0:
        return np.zeros(0, dtype=bool), 0

    n_users, n_items = int(user_codes.max()) + 1, int(item_codes.max()) + 1
    # Each pass works on the survivors only, so later passes get cheaper.
    rows = np.arange(user_codes.size)
    users, items = user_codes, item_codes
    iterations = 0
    while True:
        user_low = np.bincount(users, minlength=n_users) < k
        item_low = np.bincount(items, minlength=n_items) < k
        survive = ~(user_low[users] | item_low[items])
        if survive.all():
            break
        rows, users, items = rows[survive], users[survive], items[survive]
        iterations += 1

    mask = np.zeros(user_codes.size, dtype=bool)
    mask[rows] = True
    return mask, iterations


def _check_interactions(interactions: pa.Table) -> None:
    for name in _REQUIRED_COLUMNS:
        if name not in interactions.column_names:
            raise ValueError(f"interactions table has no {name!r} column")
        expected = INTERACTIONS.field(name)
        actual = interactions.schema.field(name).type
        if actual != expected.type:
            raise TypeError(f"interactions.{name} must be {expected.type}, got {actual}")
        nulls = interactions.column(name).null_count
        if not expected.nullable and nulls:
            raise ValueError(f"interactions.{name} has {nulls} nulls; the schema forbids them")


def _sorted_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Code every value by its rank among the distinct values, which are sorted as strings.

    Arrow compares strings by their UTF-8 bytes, which is code point order, the same as Python's.
    """
    distinct = pc.unique(column)
    distinct = distinct.take(pc.sort_indices(distinct))
    codes = pc.index_in(column, value_set=distinct).to_numpy()
    return codes.astype(np.int64, copy=False), distinct


def _index_table(
    codes: np.ndarray, ids: pa.Array, schema: pa.Schema
) -> tuple[pa.Table, np.ndarray]:
    """The index table of the ids that still occur in `codes`, and each row's new 1-based index.

    Dropping absent codes keeps the order, so the new indices still follow the id string order.
    """
    counts = np.bincount(codes, minlength=len(ids))
    present = counts > 0
    new_idx = np.cumsum(present) * present  # 1-based for present codes, 0 for dropped ones
    table = pa.Table.from_arrays(
        [
            pa.array(np.arange(1, np.count_nonzero(present) + 1), pa.int32()),
            ids.filter(pa.array(present)),
            pa.array(counts[present], pa.int32()),
        ],
        schema=schema,
    )
    return table, new_idx[codes]
