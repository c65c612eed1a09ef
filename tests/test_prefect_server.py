"""`genair run` against a real `prefect server start` on localhost."""

import subprocess
from pathlib import Path

import pytest
from prefect_server import BIN, prefect_server
from small_dataset import write_small_dataset

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]


@pytest.fixture
def server(tmp_path):
    with prefect_server(tmp_path) as running:
        yield running


def test_genair_run_reports_to_a_prefect_server(server, tmp_path, test_cache_dir):
    api, env = server.api, server.env
    config = write_small_dataset(tmp_path)
    # The pipeline up to the item vectors on 4 items, archetypes by the real default model
    # (transformers engine: the vLLM engine's own end-to-end test is in
    # test_archetypes_ml100k.py). Recommenders need more than 4 items: test_recommenders_ml100k.
    config.write_text(config.read_text() + '[llm]\nengine = "transformers"\nmax_new_tokens = 32\n')
    done = subprocess.run(
        [BIN / "genair", "--config", str(config), "run", "--until", "pooling"],
        env={**env, "PREFECT_API_URL": api, "GENAIR_STORAGE__CACHE_DIR": str(test_cache_dir)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The stage table on the terminal; the full summary (rejects per reason) in the run's log.
    assert "| ingest | ran |" in done.stdout
    [log] = [line[len("log: ") :] for line in done.stdout.splitlines() if line.startswith("log: ")]
    assert "interactions/unknown_item" in Path(log).read_text()

    runs = server.post("/flow_runs/filter")
    assert [run["state_type"] for run in runs] == ["COMPLETED"]
    flows = server.post("/flows/filter")
    assert [flow["name"] for flow in flows] == ["genair-full"]
    task_runs = server.post("/task_runs/filter")
    assert {run["name"].rsplit("-", 1)[0] for run in task_runs} >= {
        "ingest-dataset",
        "split-sequences",
        "cooccurrence",
        "plan-archetypes",
        "generate-archetypes",
        "pool-embeddings",
        "publish-summary",
    }
    artifacts = server.post("/artifacts/filter")
    keys = {a["key"] for a in artifacts}
    assert {"genair-run-summary", "genair-archetypes"} <= keys
    progress = [a for a in artifacts if a["key"] == "genair-archetypes"]
    assert progress[0]["data"] == 100.0
