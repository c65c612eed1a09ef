"""Training-prefix item co-occurrence: the sparse fast path against hand counts and the loop."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from genair_core.data.cooccurrence import cooccurrence, cooccurrence_reference, cooccurrence_summary
from genair_core.data.preprocess import split_sequences
from genair_core.tables import COOCCURRENCE, INTERACTIONS, SEQUENCES

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def sequences(users: dict[int, list[tuple[int, str]]]) -> pa.Table:
    """A SEQUENCES table from {user_idx: [(item_idx, split), ...]} in chronological order."""
    rows = [(u, p, i, s) for u, seq in users.items() for p, (i, s) in enumerate(seq)]
    return pa.Table.from_pydict(
        {
            "user_idx": [r[0] for r in rows],
            "position": [r[1] for r in rows],
            "item_idx": [r[2] for r in rows],
            "timestamp": [T0 + timedelta(seconds=r[1]) for r in rows],
            "rating": [None] * len(rows),
            "split": [r[3] for r in rows],
        },
        schema=SEQUENCES,
    )


HAND = sequences(
    {
        # train {1, 2, 3} (item 1 twice: still one co-occurrence per pair); 4 and 5 are held out
        1: [(1, "train"), (2, "train"), (1, "train"), (3, "train"), (4, "valid"), (5, "test")],
        # train {3, 2}: pair (2, 3) again, so its count is 2; (1, 4) would count if held-out did
        2: [(3, "train"), (2, "train"), (1, "valid"), (4, "test")],
        # one training item: no pair, and its held-out items 2 and 3 do not add to (2, 3)
        3: [(4, "train"), (2, "valid"), (3, "test")],
        # one item twice: no self-pair (5, 5)
        4: [(5, "train"), (5, "train"), (1, "valid"), (2, "test")],
    }
)


def test_hand_counted_example():
    got = cooccurrence(HAND, n_items=5)
    assert got.schema.equals(COOCCURRENCE)
    assert got.column("i").to_pylist() == [1, 1, 2]
    assert got.column("j").to_pylist() == [2, 3, 3]
    assert got.column("count").to_pylist() == [1, 1, 2]
    ratio = math.log1p(1) / math.log1p(2)
    assert got.column("s").to_pylist() == pytest.approx([ratio, ratio, 1.0], rel=1e-7)


def test_reference_loop_agrees_on_the_hand_example():
    assert cooccurrence_reference(HAND, n_items=5).equals(cooccurrence(HAND, n_items=5))


def test_no_user_with_two_training_items_gives_an_empty_table():
    got = cooccurrence(sequences({1: [(1, "train"), (2, "valid"), (3, "test")]}), n_items=3)
    assert got.num_rows == 0
    assert got.schema.equals(COOCCURRENCE)


def test_fast_path_matches_the_reference_loop_on_random_data():
    rng = np.random.default_rng(11)
    n_users, n_items, n_rows = 300, 120, 9_000
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, size=n_rows, p=popularity / popularity.sum())  # with repeats
    table = pa.Table.from_pydict(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, n_users, n_rows)],
            "item_id": [f"i{i}" for i in items],
            "timestamp": [T0 + timedelta(seconds=int(t)) for t in rng.integers(0, 10**6, n_rows)],
            "rating": [None] * n_rows,
            "source": ["random"] * n_rows,
            "line": list(range(1, n_rows + 1)),
        },
        schema=INTERACTIONS,
    )
    split = split_sequences(table, 5)
    n = split.item_index.num_rows

    fast = cooccurrence(split.sequences, n)
    slow = cooccurrence_reference(split.sequences, n)
    assert fast.num_rows > 1000
    assert fast.select(["i", "j", "count"]).equals(slow.select(["i", "j", "count"]))
    np.testing.assert_allclose(fast["s"].to_numpy(), slow["s"].to_numpy(), rtol=1e-6)

    i, j = fast["i"].to_numpy(), fast["j"].to_numpy()
    assert (i < j).all()
    assert (np.lexsort((j, i)) == np.arange(len(i))).all()
    assert fast["s"].to_numpy().max() == 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"item_idx must lie in \[1, 4\]"):
        cooccurrence(HAND, n_items=4)
    odd_split = HAND.set_column(5, "split", pa.array(["train"] * (HAND.num_rows - 1) + ["dev"]))
    with pytest.raises(ValueError, match="dev"):
        cooccurrence(odd_split, n_items=5)
    with pytest.raises(ValueError, match="no 'split' column"):
        cooccurrence(HAND.drop_columns(["split"]), n_items=5)


def test_summary_counts_pairs_and_the_largest_count():
    seqs = sequences(
        {
            1: [(1, "train"), (2, "train"), (3, "valid"), (4, "test")],
            2: [(2, "train"), (1, "train"), (3, "train"), (4, "test")],
        }
    )
    assert cooccurrence_summary(cooccurrence(seqs, n_items=4)) == {"pairs": 3, "max_count": 2}
    assert cooccurrence_summary(COOCCURRENCE.empty_table()) == {"pairs": 0, "max_count": 0}
