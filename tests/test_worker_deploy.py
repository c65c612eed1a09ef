"""The deployments for real: a `prefect server start` on localhost, a process work pool made with
the CLI, `prefect deploy` (through scripts/deploy) of prefect.yaml's process-pool deployments,
a `prefect worker start` subprocess, runs triggered through the API and run by the worker to
Completed, and the tables they wrote. The real default model through the transformers engine on
the small dataset."""

import subprocess
import time
from pathlib import Path

import pytest
from prefect_server import BIN, Server, prefect_server
from small_dataset import write_small_dataset

from storage.sql import connect
from storage.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]
ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# Small enough for 4 items: an 8-wide adapter, and a collapse guard that lets 4 vectors be close.
SETTINGS = """\
[llm]
engine = "transformers"
max_new_tokens = 32
[calibration]
pairs_per_epoch = 1024
epochs = 2
hidden = 8
max_mean_cosine = 0.95
"""


def run(args: list, server: Server, **kwargs) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def wait_for(server: Server, flow_run_id: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        flow_run = server.get(f"/flow_runs/{flow_run_id}")
        if flow_run["state_type"] in TERMINAL:
            return flow_run
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} not finished in {timeout_s} s: {flow_run['state_type']}")


def trigger(server: Server, deployment: dict, **parameters: object) -> dict:
    flow_run = server.create_flow_run(deployment["id"], **parameters)
    done = wait_for(server, flow_run["id"])
    worker_log = server.processes.log("worker")[-4000:]
    assert done["state_type"] == "COMPLETED", f"{done['state']}\n{worker_log}"
    return done


def test_a_worker_runs_the_deployed_flows(tmp_path, test_cache_dir):
    config = write_small_dataset(tmp_path)
    zone = '[prefect]\nschedule_timezone = "Europe/Berlin"\n'
    config.write_text(config.read_text().replace("[prefect]\n", zone) + SETTINGS)
    with prefect_server(tmp_path) as server:
        run([BIN / "prefect", "work-pool", "create", "genair", "--type", "process"], server)
        names = ["nightly-refresh", "full", "backfill"]
        deploy = [BIN / "python", ROOT / "scripts" / "deploy", "--config", config]
        run([*deploy, *(arg for name in names for arg in ("--name", name))], server, cwd=ROOT)

        deployments = {d["name"]: d for d in server.post("/deployments/filter")}
        assert sorted(deployments) == sorted(names)
        for deployment in deployments.values():
            assert deployment["work_pool_name"] == "genair"
            assert deployment["global_concurrency_limit"]["limit"] == 1
            assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        (nightly,) = deployments["nightly-refresh"]["schedules"]
        assert (nightly["schedule"]["cron"], nightly["schedule"]["timezone"]) == (
            "0 2 * * *",
            "Europe/Berlin",
        )
        assert nightly["active"]
        assert deployments["full"]["schedules"] == deployments["backfill"]["schedules"] == []

        worker_env = {
            **server.env,
            "GENAIR_HOME": str(ROOT),  # prefect.yaml's pull step: the checkout to run in
            "GENAIR_STORAGE__CACHE_DIR": str(test_cache_dir),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        }
        worker = [BIN / "prefect", "worker", "start", "--pool", "genair", "--type", "process"]
        server.processes.start("worker", worker, worker_env)

        full = trigger(server, deployments["full"], config_path=str(config), until="pooling")
        store = Store(config.parent / "data")
        before = dict(connect(store).sql("SELECT item_id, created_at FROM archetypes").fetchall())
        assert sorted(before) == ["A", "B", "C", "D"]

        backfill = trigger(
            server,
            deployments["backfill"],
            config_path=str(config),
            items=["B", "D"],
            recommenders="never",
        )

    assert full["work_pool_name"] == backfill["work_pool_name"] == "genair"
    after = dict(connect(store).sql("SELECT item_id, created_at FROM archetypes").fetchall())
    assert sorted(after) == ["A", "B", "C", "D"]  # B and D replaced, not duplicated
    assert {item for item in after if after[item] != before[item]} == {"B", "D"}
    assert store.read_table("item_embeddings").num_rows == 4
    assert store.read_table("calibrated_embeddings").num_rows == 4
    runs = connect(store).sql("SELECT run_id, flow, state FROM runs ORDER BY started_at")
    assert runs.fetchall() == [
        (full["id"], "genair-full", "Completed"),
        (backfill["id"], "genair-backfill", "Completed"),
    ]
