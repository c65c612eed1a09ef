"""The recommender stages under Prefect on the real MovieLens-100K split and co-occurrence."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import genair_core.recommenders.training
from flows.pipeline import genair_full
from genair_core.tables import to_fixed_list
from storage.schemas import item_embeddings_schema
from storage.sql import connect
from storage.store import MissingTableError, Store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

EPOCHS = 12
SETTINGS = f"""
[preprocess]
k_core = 5
[recommenders]
backbones = ["sasrec"]
variants = ["id", "genair"]
seeds = [44]
[recommenders.training]
loss = "bce"
batch_size = 128
patience = 20
max_epochs = {EPOCHS}
[recommenders.per_backbone.sasrec.training]
loss = "ce"
[prefect]
retry_delay_s = 0
"""


def write_stand_in_vectors(store: Store) -> None:
    """768-d vectors for every catalog item. The real ones need all 1,682 archetypes from the LLM
    (20 min here); docs/results.md has the runs on those. These are random but fixed, which is
    enough to exercise the genair variant's adapter and calibration on the real co-occurrence."""
    items = store.read_table("items", columns=["item_id", "content_hash"])
    vectors = np.random.default_rng(0).standard_normal((items.num_rows, 768)).astype(np.float32)
    n = items.num_rows
    table = pa.table(
        {
            "item_id": items["item_id"],
            "content_hash": items["content_hash"],
            "model_id": pa.array(["stand-in"] * n),
            "prompt_version": pa.array(["-"] * n),
            "settings_id": pa.array(["-"] * n),
            "basis_id": pa.array(["-"] * n),
            "vector": to_fixed_list(vectors),
        },
        schema=item_embeddings_schema(768),
    )
    store.write_table("item_embeddings", table)


@pytest.fixture(scope="module")
def trained(ml100k_config):
    config = ml100k_config("recommenders", SETTINGS)
    genair_full(config_path=str(config), until="cooccurrence")
    store = Store(config.parent / "data")
    write_stand_in_vectors(store)
    summary = genair_full(config_path=str(config), start="negatives")
    return config, store, summary


def metric(store, run, name, protocol="full", group="all", split="test"):
    table = store.read_parts("metrics", run)
    rows = table.filter(
        (pc.field("metric") == name)
        & (pc.field("protocol") == protocol)
        & (pc.field("group") == group)
        & (pc.field("split") == split)
    )
    assert rows.num_rows == 1
    return rows["value"][0].as_py()


def test_a_short_sasrec_run_beats_popularity_on_full_ranking(trained):
    """12 epochs with softmax cross-entropy (with BCE, SASRec needs ~20 epochs here)."""
    _, store, summary = trained
    assert summary["recommenders"]["trained"] == 2
    report = store.report_path("recommenders").read_text()
    assert "Popularity" in report
    assert "sasrec trains with its own settings: loss = ce." in report
    for name in ("hr@10", "ndcg@10"):
        assert metric(store, "sasrec-id-ce-s44", name) > metric(store, "popularity", name)


def test_metrics_table_has_every_protocol_split_group_and_metric(trained):
    _, store, _ = trained
    table = store.read_parts("metrics", "sasrec-genair-ce-s44")
    assert set(table["protocol"].to_pylist()) == {"full", "sampled"}
    assert set(table["split"].to_pylist()) == {"valid", "test"}
    assert set(table["group"].to_pylist()) == {"all", "tail", "head", "short", "long"}
    assert set(table["metric"].to_pylist()) == {
        f"{m}@{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)
    }
    assert table.num_rows == 2 * 2 * 5 * 6
    users = {
        g: u for g, u in zip(table["group"].to_pylist(), table["users"].to_pylist(), strict=True)
    }
    assert users["all"] == 943
    assert users["tail"] + users["head"] == users["short"] + users["long"] == 943
    ranks = store.read_parts("eval_ranks", "sasrec-genair-ce-s44")
    assert ranks.num_rows == 2 * 943
    log = store.read_parts("training_log", "sasrec-genair-ce-s44")
    assert log["epoch"].to_pylist() == list(range(1, EPOCHS + 1))
    assert all(v < 0 for v in log["cal_loss"].to_pylist())  # the calibration term ran
    assert (store.recommender_dir("sasrec-genair-ce-s44") / "best.safetensors").is_file()


def test_sampled_negatives_are_fixed_and_exclude_the_users_items(trained):
    config, store, _ = trained
    before = store.table_info("eval_negatives").sha256
    genair_full(config_path=str(config), start="negatives", until="negatives", force=True)
    assert store.table_info("eval_negatives").sha256 == before
    negatives = store.read_table("eval_negatives")
    sequences = store.read_table("sequences", columns=["user_idx", "item_idx"])
    first = negatives["negatives"][0].as_py()
    user = negatives["user_idx"][0].as_py()
    own = set(sequences.filter(pc.field("user_idx") == user)["item_idx"].to_pylist())
    assert len(first) == len(set(first)) == 100
    assert not own & set(first)


def test_a_rerun_with_unchanged_inputs_trains_nothing(trained):
    config, _, _ = trained
    again = genair_full(config_path=str(config), start="negatives")
    assert again["recommenders"]["trained"] == 0


def test_a_retried_task_resumes_from_its_last_checkpoint(trained, monkeypatch):
    config, store, _ = trained
    monkeypatch.setenv("GENAIR_RECOMMENDERS__VARIANTS", '["id"]')
    real_epoch = genair_core.recommenders.training._train_epoch
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args[4])  # the epoch number
        if len(calls) == 3:
            raise ConnectionError("the disk went away")  # transient: Prefect retries the task
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(genair_core.recommenders.training, "_train_epoch", flaky)
    before = metric(store, "sasrec-id-ce-s44", "ndcg@10")
    genair_full(config_path=str(config), start="negatives", force=True)
    # The forced rerun starts over (epoch 1), fails in epoch 3 and is retried by Prefect from
    # epoch 3, not from epoch 1; with the same seed it ends with the same metrics as the first run.
    assert calls == [1, 2, 3, *range(3, EPOCHS + 1)]
    assert metric(store, "sasrec-id-ce-s44", "ndcg@10") == before


def test_a_missing_cooccurrence_table_is_an_error(trained, monkeypatch):
    config, store, _ = trained
    monkeypatch.setenv("GENAIR_RECOMMENDERS__VARIANTS", '["genair"]')
    store.table_path("cooccurrence").rename(store.root / "moved.parquet")
    try:
        with pytest.raises(MissingTableError, match="cooccurrence"):
            genair_full(config_path=str(config), start="recommenders", force=True)
    finally:
        (store.root / "moved.parquet").rename(store.table_path("cooccurrence"))


def test_a_tagged_grid_keeps_its_results_beside_the_untagged_one(trained, monkeypatch):
    config, store, _ = trained
    before = metric(store, "sasrec-id-ce-s44", "ndcg@10")
    monkeypatch.setenv("GENAIR_RECOMMENDERS__VARIANTS", '["id"]')
    monkeypatch.setenv("GENAIR_RECOMMENDERS__TAG", "b64")
    monkeypatch.setenv("GENAIR_RECOMMENDERS__TRAINING__BATCH_SIZE", "64")
    assert genair_full(config_path=str(config), start="negatives")["recommenders"]["trained"] == 1
    assert metric(store, "sasrec-id-ce-s44-b64", "ndcg@10") != before
    assert metric(store, "sasrec-id-ce-s44", "ndcg@10") == before  # not replaced

    monkeypatch.delenv("GENAIR_RECOMMENDERS__TAG")
    monkeypatch.delenv("GENAIR_RECOMMENDERS__TRAINING__BATCH_SIZE")
    assert genair_full(config_path=str(config), start="negatives")["recommenders"]["trained"] == 0
    runs = connect(store).sql("SELECT DISTINCT run FROM metrics WHERE run LIKE 'sasrec-id%'")
    assert sorted(runs.fetchall()) == [("sasrec-id-ce-s44",), ("sasrec-id-ce-s44-b64",)]
