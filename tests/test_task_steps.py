"""The table-building tasks through `.fn()`: one step each on the hand-made small dataset, no
flow around them (test_flow.py runs them as a flow)."""

import pytest
from prefect.logging import disable_run_logger
from small_dataset import write_small_dataset

from storage.store import MissingTableError, Store
from tasks.cooccurrence import build_cooccurrence
from tasks.ingest import ingest_dataset
from tasks.preprocess import split_interactions
from tasks.settings import load_settings


@pytest.fixture
def settings(tmp_path):
    with disable_run_logger():
        yield load_settings(write_small_dataset(tmp_path))


def test_ingest_writes_the_validated_tables_once(settings):
    summary = ingest_dataset.fn(settings)
    assert summary == {
        "dataset": "files",
        "rows": {"items": 4, "interactions": 13, "rejects": 1},
        "rejects_by_reason": {"interactions/unknown_item": 1},
        "skipped": False,
    }
    store = Store(settings.storage.root)
    assert store.read_table("items")["item_id"].to_pylist() == ["A", "B", "C", "D"]
    assert ingest_dataset.fn(settings)["skipped"] is True
    assert ingest_dataset.fn(settings, force=True)["skipped"] is False


def test_split_needs_the_ingested_interactions(settings):
    with pytest.raises(MissingTableError):
        split_interactions.fn(settings)


def test_split_writes_indexes_and_sequences_and_reruns_on_a_new_setting(settings):
    ingest_dataset.fn(settings)
    assert split_interactions.fn(settings)["skipped"] is False
    store = Store(settings.storage.root)
    assert store.read_table("user_index")["user_id"].to_pylist() == ["u1", "u2", "u3"]
    assert store.read_table("sequences").num_rows == 12
    assert split_interactions.fn(settings)["skipped"] is True

    kept_all = settings.model_copy(
        update={"preprocess": settings.preprocess.model_copy(update={"k_core": 1})}
    )
    assert split_interactions.fn(kept_all)["skipped"] is False
    assert store.read_table("user_index").num_rows == 4


def test_cooccurrence_counts_pairs_in_the_training_prefixes(settings):
    ingest_dataset.fn(settings)
    split_interactions.fn(settings)
    summary = build_cooccurrence.fn(settings)
    assert (summary["pairs"], summary["skipped"]) == (2, False)
    pairs = Store(settings.storage.root).read_table("cooccurrence").to_pylist()
    # Training prefixes: u1 {A, B}, u2 {B, A}, u3 {C, A}.
    assert [(p["i"], p["j"], p["count"]) for p in pairs] == [(1, 2, 2), (1, 3, 1)]
    assert build_cooccurrence.fn(settings)["skipped"] is True
