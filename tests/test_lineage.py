"""Lineage: every row a run writes names the run (`run_id`), which `runs` records with its
flow, parameters, inputs, versions and how it ended; and the run id is in no step's fingerprint,
so a rerun with nothing changed is up to date."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect import flow
from scripted_pipeline import TitleEngines, scripted_pipeline, write_catalog_dataset

from flows.cli import main as genair
from genair_core.llm.prompts import PROMPT_VERSION
from storage.runs import COMPLETED, CRASHED, FAILED, RUNNING, RunRecord, read_run, write_run
from storage.sql import query
from storage.store import Store
from tasks.common import config_hash, exclusive_run
from tasks.settings import load_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, list]:
    """The whole pipeline on a small catalog with a scripted engine, then again unchanged."""
    config = write_catalog_dataset(tmp_path_factory.mktemp("lineage"))
    states = [scripted_pipeline(str(config), TitleEngines(), return_state=True) for _ in range(2)]
    return config, states


def every_table(store: Store) -> list[str]:
    return [*store.existing_tables(), *store.existing_datasets()]


def test_runs_records_each_flow_run_under_its_prefect_id(two_runs):
    config, states = two_runs
    store = Store(config.parent / "data")
    ids = [str(state.state_details.flow_run_id) for state in states]
    for state, run_id in zip(states, ids, strict=True):
        assert state.is_completed()
        record = read_run(store, run_id)
        assert record.state == COMPLETED
        assert record.ended_at > record.started_at
        assert record.parameters["until"] == "recommend"  # the last stage
        assert record.model_id.startswith("scripted-model@")
        assert record.prompt_version == PROMPT_VERSION
        assert record.code_version
        assert record.config_hash == config_hash(load_settings(config))
        assert record.inputs["source files"]
    # The second run started from the tables the first one left.
    second = read_run(store, ids[1])
    assert {"table items", "table sequences", "dataset archetypes"} <= set(second.inputs)
    assert query(store, "SELECT count(*) FROM runs").fetchall() == [(2,)]


def test_every_row_joins_the_run_that_wrote_it_through_genair_sql(two_runs, capsys):
    config, states = two_runs
    store = Store(config.parent / "data")
    assert len(every_table(store)) >= 12
    written = 0
    for name in every_table(store):
        capsys.readouterr()
        sql = (
            f'SELECT count(*) AS n, count(r.run_id) AS joined FROM "{name}" t '
            "LEFT JOIN runs r USING (run_id)"
        )
        assert genair(["--config", str(config), "sql", sql, "--csv"]) == 0
        n, joined = capsys.readouterr().out.splitlines()[1].split(",")
        assert joined == n, f"{name}: rows whose run_id is null or not in runs"
        written += int(n) > 0
    assert written >= len(every_table(store)) - 1  # rejects may be empty
    first = str(states[0].state_details.flow_run_id)
    written = query(store, "SELECT DISTINCT run_id FROM items").fetchall()
    assert written == [(first,)]  # the second run rewrote nothing


def test_a_rerun_with_nothing_changed_reruns_no_step(two_runs):
    config, states = two_runs
    store = Store(config.parent / "data")
    first, second = (state.result() for state in states)
    stepped = [stage for stage, body in first.items() if body.get("skipped") is False]
    assert {"ingest", "split", "cooccurrence", "pooling", "calibrate", "negatives"} <= set(stepped)
    for stage in stepped:
        assert second[stage]["skipped"] is True, stage
    assert second["recommenders"]["trained"] == 0
    steps = store.runs_dir() / str(states[1].state_details.flow_run_id) / "steps"
    records = [json.loads(p.read_text()) for p in steps.glob("*.json")]
    assert records
    assert all(r["skipped"] for r in records)


def test_the_run_summary_names_the_run_and_counts_each_stage(two_runs):
    _, states = two_runs
    markdown = next(a for a in _artifacts(states[0]) if a.key == "genair-run-summary").data
    run_id = str(states[0].state_details.flow_run_id)
    assert f"| run_id | {run_id} |" in markdown
    assert f"| prompt_version | {PROMPT_VERSION} |" in markdown
    assert "| stage | state | seconds | rows in | rows out | rejected | skipped |" in markdown
    ingest = next(line for line in markdown.splitlines() if line.startswith("| ingest | ran |"))
    cells = [c.strip() for c in ingest.strip("|").split("|")]
    rows_in, rows_out, rejected = (int(c.replace(",", "")) for c in cells[3:6])
    assert rows_in == rows_out + rejected
    assert float(cells[2]) > 0
    assert "| train-sasrec-id-bce-s1 | ran |" in markdown


def test_training_publishes_progress_and_the_metrics_table(two_runs):
    _, states = two_runs
    keys = {a.key: a for a in _artifacts(states[0])}
    metrics = json.loads(keys["genair-metrics"].data)
    assert [(m["backbone"], m["variant"], m["seed"]) for m in metrics] == [("sasrec", "id", 1)]
    assert 0 <= metrics[0]["test ndcg@10"] <= 1
    assert _training_progress() == {100.0}


@flow(name="lineage-failing")
def _failing(config: str, error: type[BaseException]) -> str:
    settings = load_settings(Path(config))
    with pytest.raises(error), exclusive_run(settings, "lineage-failing", {"why": "test"}) as run:
        raise error("the catalog is gone")
    return run.run_id


def test_a_failed_or_interrupted_run_is_recorded_as_such(tmp_path):
    config = tmp_path / "genair.toml"
    config.write_text('[storage]\nroot = "data"\n')
    store = Store(tmp_path / "data")
    failed = read_run(store, _failing(str(config), ValueError))
    assert (failed.state, failed.error) == (FAILED, "ValueError: the catalog is gone")
    assert failed.parameters == {"why": "test"}
    assert failed.ended_at is not None
    crashed = read_run(store, _failing(str(config), KeyboardInterrupt))
    assert crashed.state == CRASHED


def test_the_next_run_marks_a_killed_runs_row_crashed(tmp_path):
    config = tmp_path / "genair.toml"
    config.write_text('[storage]\nroot = "data"\n')
    store = Store(tmp_path / "data")
    killed = RunRecord(
        run_id="killed",
        flow="genair-full",
        parameters={},
        state=RUNNING,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        pid=2**22 + 1,  # above Linux's largest pid: no such process
    )
    write_run(store, killed)
    _failing(str(config), ValueError)
    assert read_run(store, "killed").state == CRASHED
    assert "abandoned" in read_run(store, "killed").error


def _artifacts(state) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )


def _training_progress() -> set[float]:
    """The values the training progress artifacts (one per sub-flow run) ended at."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["genair-training"]))
        )
    return {a.data for a in found}
