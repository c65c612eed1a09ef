"""The pipeline flow under Prefect, on the hand-made dataset of small_dataset.py."""

import json

import pytest
from prefect.utilities.callables import parameter_schema
from small_dataset import write_small_dataset

import tasks.cooccurrence
import tasks.preprocess
from flows.pipeline import genair_pipeline
from storage.store import Store

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def config(tmp_path):
    return write_small_dataset(tmp_path)


def hashes(store: Store) -> dict[str, str]:
    return {name: store.table_info(name).sha256 for name in store.existing_tables()}


def test_the_deployed_flow_takes_plain_json_parameters_only():
    schema = parameter_schema(genair_pipeline.fn).model_dump()
    assert list(schema["properties"]) == ["config_path", "force", "until", "start"]
    json.dumps(schema)  # the UI builds its run form from this


@pytest.mark.parametrize(
    ("start", "until", "error"),
    [("ingest", "everything", "unknown stage 'everything'"), ("pooling", "split", "comes after")],
)
def test_a_stage_range_that_does_not_exist_is_refused(config, start, until, error):
    with pytest.raises(ValueError, match=error):
        genair_pipeline(config_path=str(config), start=start, until=until)


def test_pipeline_writes_every_table_and_a_second_run_skips(config):
    summary = genair_pipeline(config_path=str(config), until="cooccurrence")
    store = Store(config.parent / "data")
    assert summary["ingest"]["rows"] == {"items": 4, "interactions": 13, "rejects": 1}
    assert summary["ingest"]["rejects_by_reason"] == {"interactions/unknown_item": 1}
    assert store.read_table("user_index")["user_id"].to_pylist() == ["u1", "u2", "u3"]
    assert store.read_table("sequences").num_rows == 12
    # Training prefixes: u1 {A, B}, u2 {B, A}, u3 {C, A}.
    pairs = store.read_table("cooccurrence").to_pylist()
    assert [(p["i"], p["j"], p["count"]) for p in pairs] == [(1, 2, 2), (1, 3, 1)]
    assert not any(step["skipped"] for step in summary.values())

    before = hashes(store)
    again = genair_pipeline(config_path=str(config), until="cooccurrence")
    assert all(step["skipped"] for step in again.values())
    assert hashes(store) == before


def test_changed_setting_reruns_only_downstream_steps(config, monkeypatch):
    genair_pipeline(config_path=str(config), until="cooccurrence")
    monkeypatch.setenv("GENAIR_PREPROCESS__K_CORE", "1")
    summary = genair_pipeline(config_path=str(config), until="cooccurrence")
    assert summary["ingest"]["skipped"] is True
    assert summary["split"]["skipped"] is False
    assert Store(config.parent / "data").read_table("user_index").num_rows == 4


def test_transient_failure_is_retried(config, monkeypatch):
    real = tasks.cooccurrence.cooccurrence
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("storage hiccup")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.cooccurrence, "cooccurrence", flaky)
    summary = genair_pipeline(config_path=str(config), until="cooccurrence")
    assert len(calls) == 2
    assert summary["cooccurrence"]["pairs"] == 2


def test_bad_input_file_fails_at_once_without_retry(config, monkeypatch):
    (config.parent / "catalog.csv").write_text("sku,name\n1,x\n")
    with pytest.raises(ValueError, match=r"catalog\.csv"):
        genair_pipeline(config_path=str(config), until="cooccurrence")
    assert not Store(config.parent / "data").exists("items")


def test_crash_mid_run_loses_nothing_and_rerun_finishes(config, monkeypatch, tmp_path_factory):
    clean = write_small_dataset(tmp_path_factory.mktemp("clean"))
    genair_pipeline(config_path=str(clean), until="cooccurrence")

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(tasks.preprocess, "split_sequences", crash)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        genair_pipeline(config_path=str(config), until="cooccurrence")
    store = Store(config.parent / "data")
    assert store.existing_tables() == ["items", "interactions", "rejects"]

    monkeypatch.undo()
    summary = genair_pipeline(config_path=str(config), until="cooccurrence")
    assert summary["ingest"]["skipped"] is True
    assert summary["split"]["skipped"] is False
    reference = Store(clean.parent / "data")
    for name in ("item_index", "user_index", "sequences", "cooccurrence"):
        assert store.table_info(name).sha256 == reference.table_info(name).sha256, name
    for name in ("items", "interactions", "rejects"):  # `source` names the other folder
        assert (
            store.read_table(name)
            .drop_columns(["source"])
            .equals(reference.read_table(name).drop_columns(["source"]))
        ), name
