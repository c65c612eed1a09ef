"""Serving a trained model on today's catalog (genair_core.recommenders.serving): the model rebuilt
over the current items, new ones included, with the trained weights unchanged; and the lists."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
import torch

from genair_core.config import ModelConfig
from genair_core.recommenders.models import build_model
from genair_core.recommenders.serving import (
    ServedRun,
    choose_served_run,
    recommend,
    recommendation_table,
    serving_model,
    user_histories,
)
from genair_core.tables import RECOMMENDATIONS

DIM, HIDDEN = 8, 4
CONFIG = ModelConfig(hidden=HIDDEN, max_len=6, dropout=0.0)
TRAINED = ["b", "d", "a", "c"]  # the trained tables' rows 1..4: not in id order


def vectors(ids: list[str]) -> np.ndarray:
    """A fixed vector per item id, whatever table it is in."""
    return np.stack([np.random.default_rng(ord(item[0])).normal(size=DIM) for item in ids]).astype(
        np.float32
    )


def trained_run(variant: str, backbone: str = "sasrec") -> ServedRun:
    table = torch.from_numpy(np.concatenate([np.zeros((1, DIM), np.float32), vectors(TRAINED)]))
    torch.manual_seed(0)
    # genair-warm's weights are genair's, its adapter started elsewhere.
    built = "genair" if variant == "genair-warm" else variant
    model = build_model(backbone, built, CONFIG, len(TRAINED), table, input_dims=DIM // 2)
    with torch.no_grad():  # trained ID parts, so that carrying them across is visible
        for name, weight in model.named_parameters():
            if name.startswith(("encoder.ids", "encoder.embedding")):
                weight.normal_()
                weight[0] = 0
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    return ServedRun("run", "r1", backbone, variant, CONFIG, DIM // 2, weights, TRAINED)


def parameter_hash(weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode() + weights[name].numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("variant", ["genair", "llm", "genair-id", "genair-warm"])
def test_a_new_item_gets_its_own_vector_and_trained_items_keep_theirs(variant):
    run = trained_run(variant)
    before = parameter_hash(run.weights)
    original = build_model(
        "sasrec",
        variant,
        CONFIG,
        len(TRAINED),
        run.weights["encoder.table"],
        input_dims=DIM // 2,
        adapter_weights={
            k.removeprefix("encoder.adapter."): v
            for k, v in run.weights.items()
            if k.startswith("encoder.adapter.")
        },
    )
    original.load_state_dict(run.weights)
    catalog = ["e", "c", "a", "b", "d"]  # "e" arrived after training
    model, items = serving_model(run, catalog, vectors(catalog))
    assert items.item_ids == ["a", "b", "c", "d", "e"]
    assert items.is_new.tolist() == [False, False, False, False, True]
    served = model.encoder.all_items().detach()
    trained = original.encoder.all_items().detach()
    for row, item in enumerate(items.item_ids[:4], start=1):
        torch.testing.assert_close(served[row], trained[TRAINED.index(item) + 1])
    new = served[5]
    assert new.abs().sum() > 0
    assert all(not torch.allclose(new, served[row]) for row in range(1, 5))
    assert parameter_hash(run.weights) == before


def test_an_id_model_serves_only_the_items_it_trained_on():
    run = trained_run("id")
    model, items = serving_model(run, ["e", "c", "a"], None)
    assert items.item_ids == ["a", "c"]
    original = run.weights["encoder.embedding.weight"]
    torch.testing.assert_close(model.encoder.all_items()[1], original[TRAINED.index("a") + 1])
    torch.testing.assert_close(model.encoder.all_items()[2], original[TRAINED.index("c") + 1])


def interactions(rows: list[tuple[str, str, int]]) -> pa.Table:
    return pa.table(
        {
            "user_id": [u for u, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "timestamp": pa.array(
                [datetime.fromtimestamp(t, UTC) for _, _, t in rows], pa.timestamp("s", tz="UTC")
            ),
        }
    )


def test_lists_exclude_every_seen_item_and_fall_back_to_popularity():
    run = trained_run("genair")
    catalog = ["a", "b", "c", "d", "e"]
    model, items = serving_model(run, catalog, vectors(catalog))
    log = interactions(
        [
            ("u1", "a", 3),
            ("u1", "e", 1),  # a new item in the history counts
            ("u2", "b", 1),
            ("u2", "b", 2),
            ("u2", "c", 3),
            ("u3", "gone", 1),  # removed from the catalog: nothing the model can represent
        ]
    )
    histories = user_histories(log, items.item_ids)
    assert histories.user_ids == ["u1", "u2", "u3"]
    assert histories.items.tolist() == [5, 1, 2, 2, 3, 0]  # by time within each user
    lists = recommend(model, items, histories, k=4, exact_max_items=1000)
    table = recommendation_table(lists, items, "run", "flow-1")
    assert table.schema == RECOMMENDATIONS
    rows = table.to_pylist()
    listed = {u: [r["item_id"] for r in rows if r["user_id"] == u] for u in ("u1", "u2", "u3")}
    assert sorted(listed["u1"]) == ["b", "c", "d"]  # three unseen: the list is shorter than k
    assert sorted(listed["u2"]) == ["a", "d", "e"]
    # u3: interactions per candidate, ties by item id: b (2), then a, c, e (1), d (0).
    assert listed["u3"] == ["b", "a", "c", "e"]
    assert [r["is_popularity_list"] for r in rows if r["user_id"] == "u3"] == [True] * 4
    assert not any(r["is_popularity_list"] for r in rows if r["user_id"] != "u3")
    assert [r["is_new_item"] for r in rows if r["item_id"] == "e"] == [True, True]
    scores = [r["score"] for r in rows if r["user_id"] == "u1"]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in rows if r["user_id"] == "u1"] == [1, 2, 3]
    again = recommend(model, items, histories, k=4, exact_max_items=1000)
    assert recommendation_table(again, items, "run", "flow-1").equals(table)


def test_auto_serves_the_best_run_that_can_score_new_items():
    scored = {
        "sasrec-id-ce-s44": {"variant": "id", "value": 0.9},
        "sasrec-genair-ce-s44": {"variant": "genair", "value": 0.3},
        "gru4rec-genair-ce-s44": {"variant": "genair", "value": 0.4},
    }
    assert choose_served_run("auto", scored) == "gru4rec-genair-ce-s44"
    assert choose_served_run("sasrec-id-ce-s44", scored) == "sasrec-id-ce-s44"
    assert choose_served_run("auto", {"sasrec-id-ce-s44": scored["sasrec-id-ce-s44"]}) is None
    with pytest.raises(ValueError, match=r"recommend\.serve names 'nope', no finished run"):
        choose_served_run("nope", scored)


def test_above_exact_max_items_faiss_ranks_and_its_recall_is_measured():
    run = trained_run("genair")
    catalog = ["a", "b", "c", "d", "e"]
    model, items = serving_model(run, catalog, vectors(catalog))
    log = interactions([("u1", "a", 1), ("u2", "b", 1), ("u2", "e", 2)])
    histories = user_histories(log, items.item_ids)
    exact = recommend(model, items, histories, k=3, exact_max_items=5)
    approximate = recommend(model, items, histories, k=3, exact_max_items=4)
    assert (exact.search, exact.recall) == ("exact", 1.0)
    assert approximate.search == "faiss-hnsw"
    assert approximate.recall == 1.0  # five items: HNSW finds them all
    np.testing.assert_array_equal(approximate.items, exact.items)
    assert approximate.summary(items)["recall@10"] == 1.0
