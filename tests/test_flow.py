"""The pipeline flow under Prefect, on the hand-made dataset of small_dataset.py."""

import json

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema
from small_dataset import write_small_dataset

import tasks.cooccurrence
import tasks.preprocess
from flows.backfill import genair_backfill
from flows.params import BackfillParams, FullParams, RefreshParams
from flows.pipeline import genair_full
from flows.refresh import genair_nightly_refresh
from flows.stages import STAGES
from storage.schemas import TABLES
from storage.store import Store

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def config(tmp_path):
    return write_small_dataset(tmp_path)


def hashes(store: Store) -> dict[str, str]:
    return {name: store.table_info(name).sha256 for name in store.existing_tables()}


@pytest.mark.parametrize(
    ("deployed", "model"),
    [
        (genair_full, FullParams),
        (genair_nightly_refresh, RefreshParams),
        (genair_backfill, BackfillParams),
    ],
)
def test_each_deployed_flow_takes_its_models_fields_as_plain_json(deployed, model):
    schema = parameter_schema(deployed.fn).model_dump()
    assert list(schema["properties"]) == list(model.model_fields)
    for name, field in model.model_fields.items():
        default = schema["properties"][name].get("default")
        assert default == field.get_default(call_default_factory=True) or (
            default is None and not field.get_default(call_default_factory=True)
        ), name
        assert schema["properties"][name].get("description"), name  # help text in the UI form
    json.dumps(schema)  # the UI builds its run form from this


def test_the_forms_offer_the_stages_and_the_policies_as_choices():
    full = parameter_schema(genair_full.fn).model_dump()
    assert full["properties"]["until"]["enum"] == list(STAGES)
    refresh = parameter_schema(genair_nightly_refresh.fn).model_dump()
    policy = refresh["properties"]["recommenders"]["anyOf"][0]
    assert policy["enum"] == ["never", "if-inputs-changed", "always"]
    backfill = parameter_schema(genair_backfill.fn).model_dump()
    assert backfill["properties"]["since"]["anyOf"][0] == {"format": "date", "type": "string"}


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: genair_full(config_path=c, until="everything"), "until: Input should be"),
        (
            lambda c: genair_nightly_refresh(config_path=c, recommenders="sometimes"),
            "recommenders: Input should be 'never', 'if-inputs-changed' or 'always'",
        ),
        (lambda c: genair_backfill(config_path=c, since="last tuesday"), "since: Input should"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_before_the_run(config, call, error):
    with pytest.raises(ParameterTypeError, match=error):
        call(str(config))
    assert not (config.parent / "data").exists()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (
            lambda c: genair_full(config_path=c, start="pooling", until="split"),
            "stage 'pooling' comes after 'split'",
        ),
        (lambda c: genair_backfill(config_path=c), r"exactly one of items, since or all_items"),
        (
            lambda c: genair_backfill(config_path=c, items=["A"], all_items=True),
            r"got items and all_items",
        ),
        (lambda c: genair_backfill(config_path=c, items=[" "]), "empty item id"),
    ],
)
def test_a_combination_that_makes_no_sense_is_refused_with_one_line(config, call, error):
    with pytest.raises(ValueError, match=error) as caught:
        call(str(config))
    assert "\n" not in str(caught.value)
    assert not (config.parent / "data").exists()


def test_pipeline_writes_every_table_and_a_second_run_skips(config):
    summary = genair_full(config_path=str(config), until="cooccurrence")
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
    again = genair_full(config_path=str(config), until="cooccurrence")
    assert all(step["skipped"] for step in again.values())
    assert hashes(store) == before


def test_changed_setting_reruns_only_downstream_steps(config, monkeypatch):
    genair_full(config_path=str(config), until="cooccurrence")
    monkeypatch.setenv("GENAIR_PREPROCESS__K_CORE", "1")
    summary = genair_full(config_path=str(config), until="cooccurrence")
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
    summary = genair_full(config_path=str(config), until="cooccurrence")
    assert len(calls) == 2
    assert summary["cooccurrence"]["pairs"] == 2


def test_bad_input_file_fails_at_once_without_retry(config, monkeypatch):
    (config.parent / "catalog.csv").write_text("sku,name\n1,x\n")
    with pytest.raises(ValueError, match=r"catalog\.csv"):
        genair_full(config_path=str(config), until="cooccurrence")
    assert not Store(config.parent / "data").exists("items")


def test_crash_mid_run_loses_nothing_and_rerun_finishes(config, monkeypatch, tmp_path_factory):
    clean = write_small_dataset(tmp_path_factory.mktemp("clean"))
    genair_full(config_path=str(clean), until="cooccurrence")

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(tasks.preprocess, "split_sequences", crash)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        genair_full(config_path=str(config), until="cooccurrence")
    store = Store(config.parent / "data")
    assert store.existing_tables() == ["items", "interactions", "rejects"]

    monkeypatch.undo()
    summary = genair_full(config_path=str(config), until="cooccurrence")
    assert summary["ingest"]["skipped"] is True
    assert summary["split"]["skipped"] is False
    reference = Store(clean.parent / "data")
    for name in ("item_index", "user_index", "sequences", "cooccurrence"):
        assert store.table_info(name).sha256 == reference.table_info(name).sha256, name
    # `source` names the other folder; `updated_at` is when each run first saw the items.
    for name in ("items", "interactions", "rejects"):
        volatile = [c for c in ("source", "updated_at") if c in TABLES[name].names]
        assert (
            store.read_table(name)
            .drop_columns(volatile)
            .equals(reference.read_table(name).drop_columns(volatile))
        ), name
