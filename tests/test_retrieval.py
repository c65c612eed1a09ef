"""Next-item retrieval in item space (genair_core.item_space.retrieval, tasks.retrieval): exact
ranks on a hand-made case, history masking, the behavioural baselines, the paired test's direction,
the collapse diagnostics, and the stage through `.fn()`."""

import math

import numpy as np
import pyarrow as pa
import pytest
from prefect.logging import disable_run_logger
from small_dataset import write_small_dataset

import genair_core.item_space.retrieval as retrieval
from genair_core.data.sequences import UserSequences
from genair_core.item_space.retrieval import (
    CooccurrenceSpace,
    PopularitySpace,
    Queries,
    RandomSpace,
    VectorSpace,
    render_retrieval_report,
    retrieval_metric_rows,
    space_ranks,
)
from genair_core.metrics import effective_rank, mean_pairwise_cosine
from genair_core.tables import to_fixed_list
from storage.store import Store
from tasks.retrieval import evaluate_retrieval
from tasks.settings import load_settings

ITEM_IDS = ["a", "b", "c", "d", "e"]  # item_idx 1..5
# user_idx: (training items in order, validation item, test item)
USERS = {1: ([1, 2], 3, 4), 2: ([3, 1, 5], 2, 4), 3: ([4], 5, 1)}
VECTORS = {
    "a": [1.0, 0.0],
    "b": [1.0, 1.0],
    "c": [0.0, 1.0],
    "d": [-1.0, 0.0],
    "e": [1.0, 0.2],
}
# Hand-made co-occurrence counts (i < j), deliberately not those of USERS, so each rank below
# follows from the counts written here.
PAIRS = {(1, 2): 3, (2, 3): 1, (2, 5): 2, (1, 5): 4, (4, 5): 1}


def sequences_table(users: dict = USERS) -> pa.Table:
    rows = []
    for user, (train, valid, test) in users.items():
        items = [*train, valid, test]
        splits = ["train"] * len(train) + ["valid", "test"]
        for position, (item, split) in enumerate(zip(items, splits, strict=True)):
            rows.append({"user_idx": user, "position": position, "item_idx": item, "split": split})
    return pa.Table.from_pylist(rows)


def queries() -> Queries:
    return Queries.from_sequences(UserSequences.from_table(sequences_table(), len(ITEM_IDS)))


def vector_space(vectors: dict = VECTORS) -> VectorSpace:
    ids = list(vectors)
    return VectorSpace.from_vectors(ITEM_IDS, ids, np.array(list(vectors.values())), "test")


def cooccurrence_space() -> CooccurrenceSpace:
    i, j = (np.array([pair[k] for pair in PAIRS]) for k in (0, 1))
    return CooccurrenceSpace.from_pairs(i, j, np.array(list(PAIRS.values())), len(ITEM_IDS))


def reference_ranks(score, split: str) -> list[int]:
    """Plain loops: the candidates are all items but the masked history and the target; the
    rank counts those scored >= the target."""
    ranks = []
    for user, (train, valid, test) in USERS.items():
        query = train[-1]
        target = valid if split == "valid" else test
        masked = set(train) | ({valid} if split == "test" else set())
        candidates = [i for i in range(1, len(ITEM_IDS) + 1) if i not in masked and i != target]
        ranks.append(sum(score(user, query, c) >= score(user, query, target) for c in candidates))
    return ranks


def cosine(user: int, query: int, item: int) -> float:
    a, b = (np.array(VECTORS[ITEM_IDS[k - 1]]) for k in (query, item))
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_queries_are_the_last_training_items_and_the_masks_the_histories():
    q = queries()
    assert q.query.tolist() == [2, 5, 4]
    assert q.targets["valid"].tolist() == [3, 2, 5]
    assert q.targets["test"].tolist() == [4, 4, 1]
    ptr, items = q.history["test"]
    assert [items[ptr[u] : ptr[u + 1]].tolist() for u in range(3)] == [
        [1, 2, 3],
        [3, 1, 5, 2],
        [4, 5],
    ]


def test_cosine_ranks_are_exact_on_a_hand_made_case():
    space = vector_space()
    # u1 queries b: valid c is beaten by e (0.83 > 0.71), a and b masked; test d by e.
    # u2 queries e: valid b faces d alone (a, c, e masked); test d faces nothing.
    # u3 queries d: valid e (-0.98) is beaten by b (-0.71) and c (0); test a (-1) by b and c.
    assert space_ranks(space, queries(), "valid").tolist() == [1, 0, 2]
    assert space_ranks(space, queries(), "test").tolist() == [1, 0, 2]
    for split in ("valid", "test"):
        assert space_ranks(space, queries(), split).tolist() == reference_ranks(cosine, split)


def test_history_items_are_never_candidates():
    # Make every training item the query's twin: were history not masked, it would outrank all.
    twins = dict(VECTORS, a=[1.0, 1.0])  # a == b, the query of u1, and a is u1's history
    assert space_ranks(vector_space(twins), queries(), "valid").tolist()[0] == 1
    # The validation item is masked for the test target: u1's valid item c, made the query's
    # twin, would outrank d if it were a candidate; d still faces e alone.
    near = dict(VECTORS, c=[1.0, 1.0])
    assert space_ranks(vector_space(near), queries(), "test").tolist()[0] == 1


def test_items_without_a_vector_score_minus_infinity():
    missing_c = {k: v for k, v in VECTORS.items() if k != "c"}
    space = vector_space(missing_c)
    assert space.coverage() == 4
    # u1's valid target c has no vector: behind every candidate (d, e), a miss.
    # u3's valid target e is beaten by b alone now that c has no vector.
    assert space_ranks(space, queries(), "valid").tolist() == [2, 0, 1]
    missing_query = {k: v for k, v in VECTORS.items() if k != "b"}
    # u1's query b has no vector: its target ranks behind all its candidates.
    assert space_ranks(vector_space(missing_query), queries(), "valid").tolist()[0] == 2


def test_vector_table_errors_name_the_table():
    with pytest.raises(ValueError, match=r"calibrated_embeddings\.item_id"):
        VectorSpace.from_vectors(ITEM_IDS, ["a", "a"], np.ones((2, 2)), "calibrated_embeddings")
    with pytest.raises(ValueError, match=r"item_embeddings\.vector of item 'b' is all zeros"):
        VectorSpace.from_vectors(
            ITEM_IDS, ["a", "b"], np.array([[1, 0], [0, 0]]), "item_embeddings"
        )
    with pytest.raises(ValueError, match="NaN"):
        VectorSpace.from_vectors(ITEM_IDS, ["a"], np.array([[np.nan, 1.0]]), "item_embeddings")


def test_cooccurrence_scores_are_the_pair_counts_both_ways():
    space = cooccurrence_space()
    scores = space.scores(np.arange(6), np.zeros(6))
    expected = np.zeros((6, 6))
    for (i, j), count in PAIRS.items():
        expected[i, j] = expected[j, i] = count
    np.testing.assert_array_equal(scores, expected)
    assert space.coverage() == 5

    def count(user: int, query: int, item: int) -> int:
        return PAIRS.get((min(query, item), max(query, item)), 0)

    # u3's test item a never co-occurred with its query d: tied at 0 with b and c, ranked last.
    assert space_ranks(space, queries(), "test").tolist() == [1, 0, 2]
    for split in ("valid", "test"):
        assert space_ranks(space, queries(), split).tolist() == reference_ranks(count, split)
    with pytest.raises(ValueError, match="i < j"):
        CooccurrenceSpace.from_pairs(np.array([2]), np.array([1]), np.array([1]), 5)


def test_popularity_and_random_baselines():
    data = UserSequences.from_table(sequences_table(), len(ITEM_IDS))
    counts = data.train_counts()
    assert counts.tolist() == [0, 2, 1, 1, 1, 1]
    popularity = PopularitySpace(counts)

    def popular(user: int, query: int, item: int) -> int:
        return int(counts[item])

    for split in ("valid", "test"):
        assert space_ranks(popularity, queries(), split).tolist() == reference_ranks(popular, split)
    random = RandomSpace(len(ITEM_IDS), seed=3)
    one = random.scores(np.array([2, 5]), np.array([1, 2]))
    # A user's scores depend on (seed, user) only: not on the query or on who else is scored.
    np.testing.assert_array_equal(one[1], random.scores(np.array([1]), np.array([2]))[0])
    assert not np.array_equal(one[0], one[1])


def test_ranks_do_not_depend_on_the_chunking(monkeypatch):
    spaces = {
        "raw": vector_space(),
        "cooccurrence": cooccurrence_space(),
        "random": RandomSpace(len(ITEM_IDS)),
    }
    whole = {n: space_ranks(s, queries(), "test").tolist() for n, s in spaces.items()}
    monkeypatch.setattr(retrieval, "CHUNK_CELLS", 7)  # one user per chunk
    assert {n: space_ranks(s, queries(), "test").tolist() for n, s in spaces.items()} == whole


def _per_user(values: dict[str, list[float]]) -> dict:
    return {
        name: {
            split: {"hr@10": (np.array(v) > 0).astype(float), "ndcg@10": np.array(v)}
            for split in ("valid", "test")
        }
        for name, v in values.items()
    }


@pytest.mark.parametrize("calibrated_better", [True, False])
def test_the_paired_test_and_the_report_follow_the_direction(calibrated_better):
    n = 40
    good, bad = [1.0] * 30 + [0.0] * 10, [0.0] * 30 + [0.5] * 10
    per_user = _per_user(
        {
            "raw": bad if calibrated_better else good,
            "calibrated": good if calibrated_better else bad,
            "cooccurrence": [1.0] * n,
        }
    )
    spaces = {
        "raw": vector_space(),
        "calibrated": vector_space(),
        "cooccurrence": cooccurrence_space(),
    }
    rows = retrieval_metric_rows(per_user, spaces, len(ITEM_IDS))
    (row,) = [
        r
        for r in rows
        if (r["space"], r["split"], r["metric"]) == ("calibrated", "test", "ndcg@10")
    ]
    assert row["p_vs_raw"] < 0.05
    assert row["users"] == n
    (raw,) = [
        r for r in rows if (r["space"], r["split"], r["metric"]) == ("raw", "test", "ndcg@10")
    ]
    assert raw["p_vs_raw"] is None
    assert (row["value"] > raw["value"]) == calibrated_better
    report = render_retrieval_report(rows, "toy", n, len(ITEM_IDS), "v1")
    verdict = "Calibrated beats raw" if calibrated_better else "Calibrated does not beat raw"
    assert verdict in report
    assert "significant at 0.05" in report
    assert "Gap to co-occurrence counts" in report
    assert "version `v1`" in report


def test_identical_vectors_are_collapsed_and_orthonormal_ones_are_not():
    same = np.tile([[0.3, -1.2, 2.0]], (6, 1))
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert effective_rank(same) == pytest.approx(1.0)
    eye = np.eye(5)
    assert mean_pairwise_cosine(eye) == pytest.approx(0.0)
    assert effective_rank(eye) == pytest.approx(5.0)
    rotated = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))[0][:4]  # 4 orthonormal
    assert effective_rank(rotated) == pytest.approx(4.0)
    assert mean_pairwise_cosine(rotated) == pytest.approx(0.0, abs=1e-12)
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine(opposite) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="row 1 is zero"):
        mean_pairwise_cosine(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_mean_pairwise_cosine_matches_the_plain_mean():
    x = np.random.default_rng(1).normal(size=(30, 7))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    gram = unit @ unit.T
    plain = (gram.sum() - np.trace(gram)) / (30 * 29)
    assert mean_pairwise_cosine(x) == pytest.approx(plain)
    assert math.isclose(vector_space().diagnostics()["dimension"], 2)


# -- the stage ---------------------------------------------------------------------------------


def _write_inputs(store: Store) -> None:
    store.write_table(
        "item_index",
        pa.table(
            {
                "item_idx": pa.array(range(1, 6), pa.int32()),
                "item_id": ITEM_IDS,
                "n_interactions": pa.array([3] * 5, pa.int32()),
            }
        ),
    )
    seq = sequences_table()
    n = seq.num_rows
    store.write_table(
        "sequences",
        seq.append_column(
            "timestamp", pa.array([0] * n, pa.timestamp("s", tz="UTC"))
        ).append_column("rating", pa.array([1.0] * n, pa.float32())),
    )
    store.write_table(
        "cooccurrence",
        pa.table(
            {
                "i": pa.array([p[0] for p in PAIRS], pa.int32()),
                "j": pa.array([p[1] for p in PAIRS], pa.int32()),
                "count": pa.array(list(PAIRS.values()), pa.int32()),
                "s": pa.array([0.5] * len(PAIRS), pa.float32()),
            }
        ),
    )
    ids = list(VECTORS)
    store.write_table(
        "item_embeddings",
        pa.table(
            {
                "item_id": ids,
                **{c: ["x"] * 5 for c in ("content_hash", "model_id", "prompt_version")},
                **{c: ["x"] * 5 for c in ("settings_id", "basis_id")},
                "vector": to_fixed_list(np.array(list(VECTORS.values()))),
            }
        ),
    )


@pytest.mark.usefixtures("prefect_harness")
def test_the_stage_writes_metrics_and_report_and_adds_the_calibrated_space(tmp_path):
    settings = load_settings(write_small_dataset(tmp_path))
    store = Store(settings.storage.root)
    _write_inputs(store)
    with disable_run_logger():
        first = evaluate_retrieval.fn(settings)
        assert first["skipped"] is False
        assert first["spaces"] == [
            "raw",
            "cooccurrence",
            "popularity",
            "random",
        ]
        assert evaluate_retrieval.fn(settings)["skipped"] is True
        table = store.read_table("retrieval_metrics").to_pylist()
        ndcg = {
            r["space"]: r["value"]
            for r in table
            if (r["split"], r["metric"]) == ("test", "ndcg@10")
        }
        # Every user's test rank is < 10 among 5 items: NDCG from the exact ranks [1, 0, 2].
        assert ndcg["raw"] == pytest.approx(np.mean([1 / np.log2(3), 1.0, 1 / np.log2(4)]))
        assert "calibrated" not in store.report_path("retrieval").read_text().split("|")

        # Calibrated vectors arrive: the stage reruns and compares them with raw.
        calibrated = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0], [0.8, 0.6]])
        store.write_table(
            "calibrated_embeddings",
            pa.table(
                {
                    "item_id": ITEM_IDS,
                    "vector": to_fixed_list(calibrated),
                    "version": ["v1"] * 5,
                }
            ),
        )
        second = evaluate_retrieval.fn(settings)
    assert second["skipped"] is False
    assert "calibrated" in second["spaces"]
    rows = store.read_table("retrieval_metrics").to_pylist()
    assert {r["space"] for r in rows} == {
        "raw",
        "calibrated",
        "cooccurrence",
        "popularity",
        "random",
    }
    report = store.report_path("retrieval").read_text()
    assert "| calibrated |" in report
    assert "version `v1`" in report
    assert "Collapse diagnostics" in report
    assert (
        "Calibrated beats popularity" in report or "Calibrated does not beat popularity" in report
    )
    calibrated_row = next(
        r for r in rows if (r["space"], r["split"], r["metric"]) == ("calibrated", "test", "hr@10")
    )
    assert None not in (calibrated_row["p_vs_raw"], calibrated_row["p_vs_popularity"])
