"""k-core filtering, index tables, chronological order and the leave-one-out split."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from genair_core.data.preprocess import kcore_mask, split_sequences
from genair_core.tables import INTERACTIONS, ITEM_INDEX, SEQUENCES, USER_INDEX

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def interactions(rows: list[tuple[str, str, int, float | None]]) -> pa.Table:
    """An INTERACTIONS table from (user_id, item_id, seconds after T0, rating) rows."""
    return pa.Table.from_pydict(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [T0 + timedelta(seconds=r[2]) for r in rows],
            "rating": [r[3] for r in rows],
            "source": ["test.csv"] * len(rows),
            "line": list(range(1, len(rows) + 1)),
        },
        schema=INTERACTIONS,
    )


def sequences(rows: list[tuple[int, int, int, int, float | None, str]]) -> pa.Table:
    """A SEQUENCES table from (user_idx, position, item_idx, seconds, rating, split) rows."""
    columns = ("user_idx", "position", "item_idx", "timestamp", "rating", "split")
    data = {name: [r[n] for r in rows] for n, name in enumerate(columns)}
    data["timestamp"] = [T0 + timedelta(seconds=s) for s in data["timestamp"]]
    return pa.Table.from_pydict(data, schema=SEQUENCES)


def random_interactions(seed: int, n_users: int, n_items: int, n_rows: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    items = rng.choice(n_items, size=n_rows, p=popularity / popularity.sum())
    return interactions(
        [
            (f"u{u}", f"i{i}", int(t), float(r))
            for u, i, t, r in zip(
                rng.integers(0, n_users, n_rows),
                items,
                rng.integers(0, 50, n_rows),  # few distinct seconds: many timestamp ties
                rng.integers(1, 6, n_rows),
                strict=True,
            )
        ]
    )


# --- k-core -------------------------------------------------------------------------------------

# k = 2. u0 has one row, so it goes; that leaves item x with one row, so x goes; that leaves u1
# with one row, so u1 goes. y and z keep two rows each from u2 and u3: the 2-core is u2, u3 x y, z.
CHAIN = [("u0", "x"), ("u1", "x"), ("u1", "y"), ("u2", "y"), ("u2", "z"), ("u3", "y"), ("u3", "z")]


def test_kcore_removal_cascades_to_a_fixed_point():
    users = np.array([int(u[1]) for u, _ in CHAIN])
    items = np.array(["xyz".index(i) for _, i in CHAIN])
    assert kcore_mask(users, items, 2).tolist() == [False, False, False, True, True, True, True]

    tables = split_sequences(interactions([(u, i, n, None) for n, (u, i) in enumerate(CHAIN)]), 2)
    assert tables.user_index.column("user_id").to_pylist() == ["u2", "u3"]
    assert tables.item_index.column("item_id").to_pylist() == ["y", "z"]
    assert tables.summary["kcore_iterations"] == 3  # u0, then x, then u1


def test_k1_keeps_everything():
    users = np.array([0, 0, 1, 2])
    items = np.array([3, 1, 1, 0])
    assert kcore_mask(users, items, 1).all()

    tables = split_sequences(interactions([(f"u{u}", f"i{i}", 0, None) for u, i in CHAIN]), 1)
    assert tables.sequences.num_rows == len(CHAIN)
    assert tables.summary["kcore_iterations"] == 0


def _kcore_one_at_a_time(users: list[int], items: list[int], k: int) -> list[bool]:
    """Remove one deficient user or item per step, lowest row first: a different removal order."""
    alive = set(range(len(users)))
    while True:
        user_count = Counter(users[r] for r in alive)
        item_count = Counter(items[r] for r in alive)
        deficient = [
            r for r in sorted(alive) if min(user_count[users[r]], item_count[items[r]]) < k
        ]
        if not deficient:
            return [r in alive for r in range(len(users))]
        r = deficient[0]
        if user_count[users[r]] < k:
            alive -= {s for s in alive if users[s] == users[r]}
        else:
            alive -= {s for s in alive if items[s] == items[r]}


@pytest.mark.parametrize(("seed", "k"), [(0, 2), (1, 3), (4, 4), (2, 5), (3, 6)])
def test_kcore_every_survivor_has_k_rows_and_the_core_is_maximal(seed, k):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, 400)
    items = rng.zipf(1.3, 400) % 60  # skewed popularity: rare items, cascades of 1 to 5 passes
    mask = kcore_mask(users, items, k)

    assert 0 < mask.sum() < len(mask)
    assert np.bincount(users[mask])[np.unique(users[mask])].min() >= k
    assert np.bincount(items[mask])[np.unique(items[mask])].min() >= k
    assert mask.tolist() == _kcore_one_at_a_time(users.tolist(), items.tolist(), k)


def test_kcore_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be >= 1"):
        kcore_mask(np.array([0]), np.array([0]), 0)
    with pytest.raises(ValueError, match="equal length"):
        kcore_mask(np.array([0, 1]), np.array([0]), 1)
    with pytest.raises(TypeError, match="integers"):
        kcore_mask(np.array([0.0]), np.array([0]), 1)


# --- ordering and split -------------------------------------------------------------------------


def test_equal_timestamps_are_ordered_by_item_id_then_rating():
    rows = [
        ("u1", "c", 10, 1.0),
        ("u1", "b", 10, None),
        ("u1", "a", 10, 5.0),
        ("u1", "b", 10, 3.0),
        ("u1", "a", 5, 2.0),
    ]
    got = split_sequences(interactions(rows), 1).sequences
    # a=1, b=2, c=3. At t=10: a, then b (rating 3.0 before the null rating), then c.
    expected = sequences(
        [
            (1, 0, 1, 5, 2.0, "train"),
            (1, 1, 1, 10, 5.0, "train"),
            (1, 2, 2, 10, 3.0, "train"),
            (1, 3, 2, 10, None, "valid"),
            (1, 4, 3, 10, 1.0, "test"),
        ]
    )
    assert got.equals(expected)


def test_output_does_not_depend_on_input_row_order():
    table = random_interactions(seed=7, n_users=30, n_items=20, n_rows=400)
    reference = split_sequences(table, 3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = table.take(rng.permutation(table.num_rows))
        chunked = pa.concat_tables([shuffled.slice(0, 150), shuffled.slice(150)])  # several chunks
        for candidate in (shuffled, chunked):
            got = split_sequences(candidate, 3)
            assert got.sequences.equals(reference.sequences)
            assert got.item_index.equals(reference.item_index)
            assert got.user_index.equals(reference.user_index)
            assert got.summary == reference.summary


def test_leave_one_out_split_and_short_users_with_k1():
    rows = [
        ("alice", "i3", 1, 4.0),
        ("alice", "i1", 2, 3.5),
        ("alice", "i2", 3, None),
        ("alice", "i4", 4, 5.0),
        ("bob", "i2", 5, 1.0),
        ("bob", "i1", 1, 2.0),
        ("bob", "i3", 3, 3.0),
        ("carol", "i1", 7, 4.0),
        ("carol", "i4", 2, 4.5),
        ("dave", "i2", 9, 2.5),
    ]
    tables = split_sequences(interactions(rows), 1)
    # users: alice=1, bob=2, carol=3, dave=4; items: i1=1 .. i4=4
    expected = sequences(
        [
            (1, 0, 3, 1, 4.0, "train"),
            (1, 1, 1, 2, 3.5, "train"),
            (1, 2, 2, 3, None, "valid"),
            (1, 3, 4, 4, 5.0, "test"),
            (2, 0, 1, 1, 2.0, "train"),
            (2, 1, 3, 3, 3.0, "valid"),
            (2, 2, 2, 5, 1.0, "test"),
            (3, 0, 4, 2, 4.5, "train"),  # two interactions: nothing held out
            (3, 1, 1, 7, 4.0, "train"),
            (4, 0, 2, 9, 2.5, "train"),  # one interaction
        ]
    )
    assert tables.sequences.equals(expected)
    assert tables.summary == {
        "k": 1,
        "users_before": 4,
        "items_before": 4,
        "interactions_before": 10,
        "kcore_iterations": 0,
        "users_after": 4,
        "items_after": 4,
        "interactions_after": 10,
        "train_rows": 6,
        "valid_rows": 2,
        "test_rows": 2,
        "users_train_only": 2,
    }


def test_every_user_has_one_valid_and_one_test_row_when_k_is_3():
    tables = split_sequences(random_interactions(seed=3, n_users=40, n_items=25, n_rows=600), 3)
    seq = tables.sequences
    n_users = tables.user_index.num_rows
    for split in ("valid", "test"):
        users = seq.filter(pc.equal(seq["split"], split))["user_idx"].to_pylist()
        assert sorted(users) == list(range(1, n_users + 1))
    assert tables.summary["users_train_only"] == 0
    assert seq.sort_by([("user_idx", "ascending"), ("position", "ascending")]).equals(seq)


# --- index tables -------------------------------------------------------------------------------


def test_index_tables_start_at_1_follow_id_string_order_and_count_after_filtering():
    rows = [
        ("u2", "9", 1, None),
        ("u2", "10", 2, None),
        ("u2", "100", 3, None),
        ("u2", "9", 4, None),
        ("u10", "100", 1, None),
        ("u10", "9", 2, None),
        ("u10", "10", 3, None),
        ("u3", "7", 1, None),  # u3 and item 7 fall out of the 2-core
    ]
    tables = split_sequences(interactions(rows), 2)
    expected_items = pa.Table.from_pydict(
        {"item_idx": [1, 2, 3], "item_id": ["10", "100", "9"], "n_interactions": [2, 2, 3]},
        schema=ITEM_INDEX,
    )
    expected_users = pa.Table.from_pydict(
        {"user_idx": [1, 2], "user_id": ["u10", "u2"], "n_interactions": [3, 4]},
        schema=USER_INDEX,
    )
    assert tables.item_index.equals(expected_items)
    assert tables.user_index.equals(expected_users)
    assert tables.sequences.schema.equals(SEQUENCES)
    assert tables.summary["users_before"] == 3
    assert tables.summary["items_before"] == 4


def test_source_and_line_columns_are_not_needed():
    table = random_interactions(seed=5, n_users=10, n_items=8, n_rows=80)
    full = split_sequences(table, 2)
    bare = split_sequences(table.select(["user_id", "item_id", "timestamp", "rating"]), 2)
    assert bare.sequences.equals(full.sequences)


# --- errors -------------------------------------------------------------------------------------


def test_bad_inputs_are_refused():
    table = interactions([("u1", "a", 0, None), ("u1", "b", 1, None)])
    with pytest.raises(ValueError, match="no 'rating' column"):
        split_sequences(table.drop_columns(["rating"]), 1)
    wrong_unit = table.set_column(
        2, "timestamp", table["timestamp"].cast(pa.timestamp("ms", "UTC"))
    )
    with pytest.raises(TypeError, match="timestamp"):
        split_sequences(wrong_unit, 1)
    nulls = table.set_column(0, "user_id", pa.array(["u1", None], pa.string()))
    with pytest.raises(ValueError, match="user_id has 1 nulls"):
        split_sequences(nulls, 1)
    with pytest.raises(ValueError, match="2-core of 2 interactions is empty"):
        split_sequences(table, 2)
