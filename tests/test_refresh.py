"""genair-nightly-refresh on a 24-item catalog with the scripted engine: only new and changed
items go through the LLM, the stored PCA bases and calibration adapter are reused, and the
recommenders policy decides what is trained."""

from datetime import UTC, datetime

import pyarrow as pa
import pytest
from scripted_pipeline import (
    TitleEngines,
    add_item,
    scripted_pipeline,
    scripted_refresh,
    set_title,
    write_catalog_dataset,
)

from flows.params import RefreshParams
from storage.store import Store

pytestmark = pytest.mark.usefixtures("prefect_harness")
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture
def config(tmp_path):
    return write_catalog_dataset(tmp_path)


def refresh(config, engines=None, **params):
    engines = engines or TitleEngines()
    return scripted_refresh(RefreshParams(config_path=str(config), **params), engines)


def age_catalog(store: Store) -> None:
    """Date every stored item LONG_AGO, as if the catalog had been ingested back then."""
    items = store.read_table("items")
    column = items.schema.get_field_index("updated_at")
    dated = pa.array([LONG_AGO] * items.num_rows, items.schema.field(column).type)
    store.write_table("items", items.set_column(column, "updated_at", dated))


def test_refresh_generates_only_new_and_changed_items_and_reuses_bases_and_adapter(config):
    scripted_pipeline(str(config), TitleEngines())
    store = Store(config.parent / "data")
    bases_before = store.read_table("item_embeddings")["basis_id"].unique().to_pylist()
    adapter_before = store.read_table("calibrated_embeddings")["version"].unique().to_pylist()
    age_catalog(store)
    started = datetime.now(UTC).replace(microsecond=0)

    set_title(config, "m03", "Movie 3 remastered")
    add_item(config, "m99", "Movie New")
    engines = TitleEngines()
    summary = refresh(config, engines)

    assert sorted(engines.titles) == ["Movie 3 remastered", "Movie New"]
    assert summary["archetypes"]["generated"] == 2
    assert summary["pooling"]["bases"] == "stored"
    assert summary["calibrate"]["decision"] == "projected"
    assert not summary["index-raw"]["skipped"]  # new vectors, new index
    assert summary["recommenders"]["trained"] == 0  # the id run's inputs did not change

    vectors = store.read_table("item_embeddings")
    assert vectors.num_rows == 25
    assert vectors["basis_id"].unique().to_pylist() == bases_before
    calibrated = store.read_table("calibrated_embeddings")
    assert "m99" in calibrated["item_id"].to_pylist()
    assert calibrated["version"].unique().to_pylist() == adapter_before

    items = store.read_table("items")
    dates = dict(zip(items["item_id"].to_pylist(), items["updated_at"].to_pylist(), strict=True))
    assert min(dates["m03"], dates["m99"]) >= started
    assert {dates[i] for i in dates if i not in ("m03", "m99")} == {LONG_AGO}


def test_a_second_refresh_on_an_unchanged_catalog_generates_and_trains_nothing(config):
    scripted_pipeline(str(config), TitleEngines())
    engines = TitleEngines()
    summary = refresh(config, engines)
    assert engines.titles == []
    assert summary["recommenders"]["trained"] == 0
    steps = [name for name in summary if name not in ("recommenders", "results")]
    assert [name for name in steps if not summary[name]["skipped"]] == []


def test_policy_never_trains_nothing(config):
    scripted_pipeline(str(config), TitleEngines(), until="retrieval")
    summary = refresh(config, recommenders="never")
    assert not {"negatives", "recommenders", "results"} & set(summary)
    store = Store(config.parent / "data")
    assert not store.exists("eval_negatives")
    assert not store.part_paths("training_log")
    assert not store.recommender_dir("sasrec-id-bce-s1").exists()


def test_policy_always_retrains_what_if_inputs_changed_skips(config):
    scripted_pipeline(str(config), TitleEngines())
    assert refresh(config, recommenders="if-inputs-changed")["recommenders"]["trained"] == 0
    store = Store(config.parent / "data")
    trained_at = store.read_manifest("train-sasrec-id-bce-s1").completed_at
    summary = refresh(config, recommenders="always")
    assert summary["recommenders"]["trained"] == 1
    assert summary["negatives"]["skipped"] is False
    assert store.read_manifest("train-sasrec-id-bce-s1").completed_at >= trained_at
    assert refresh(config)["recommenders"]["trained"] == 0  # and the default skips it again


def test_the_policy_setting_is_the_default(config, monkeypatch):
    scripted_pipeline(str(config), TitleEngines(), until="retrieval")
    monkeypatch.setenv("GENAIR_REFRESH__RECOMMENDERS", "never")
    assert "recommenders" not in refresh(config)
    monkeypatch.setenv("GENAIR_REFRESH__RECOMMENDERS", "sometimes")
    with pytest.raises(ValueError, match=r"refresh\.recommenders"):
        refresh(config)
