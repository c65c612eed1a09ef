"""prefect.yaml: every deployment points at one of the three flows with parameters it accepts,
queues its runs, and runs on a pool whose image the docker/ folder builds; the nightly refresh
is the one active schedule. Deployed for real in test_worker_deploy.py."""

import inspect
import re
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.templating import apply_values

ROOT = Path(__file__).parents[1]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
FLOWS = {
    "flows/pipeline.py:genair_full": "genair-full",
    "flows/refresh.py:genair_nightly_refresh": "genair-nightly-refresh",
    "flows/backfill.py:genair_backfill": "genair-backfill",
}
POOLS = {"genair", "genair-docker", "genair-gpu"}


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_entrypoint_parameters_and_queueing(deployment, monkeypatch):
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    assert flow.name == FLOWS[deployment["entrypoint"]]
    assert set(deployment["parameters"]) <= set(inspect.signature(flow.fn).parameters)
    assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert deployment["work_pool"]["name"] in POOLS


def test_every_flow_on_the_process_and_docker_pools_and_full_and_backfill_on_gpu():
    placed = {(d["work_pool"]["name"], d["entrypoint"]) for d in DEPLOYMENTS}
    full, _, backfill = FLOWS
    expected = {(pool, flow) for pool in ("genair", "genair-docker") for flow in FLOWS}
    assert placed == expected | {("genair-gpu", full), ("genair-gpu", backfill)}
    assert len({d["name"] for d in DEPLOYMENTS}) == len(DEPLOYMENTS)


def test_the_nightly_refresh_is_the_one_active_schedule_at_two_in_the_set_zone(monkeypatch):
    active = [
        (d["name"], s) for d in DEPLOYMENTS for s in d.get("schedules", []) if s.get("active")
    ]
    assert [name for name, _ in active] == ["nightly-refresh"]
    (_, schedule) = active[0]
    # What `prefect deploy` does with the template; scripts/deploy sets the variable from
    # `[prefect] schedule_timezone`.
    monkeypatch.setenv("GENAIR_PREFECT__SCHEDULE_TIMEZONE", "Europe/Berlin")
    assert apply_values(schedule, {}) == {
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "active": True,
    }
    docker_schedules = [
        s for d in DEPLOYMENTS if d["name"] != "nightly-refresh" for s in d.get("schedules", [])
    ]
    assert [s["cron"] for s in docker_schedules] == ["0 2 * * *"]  # the docker pool's, paused


@pytest.mark.parametrize("pool", ["genair-docker", "genair-gpu"])
def test_docker_pools_use_images_the_docker_folder_builds(pool):
    images = {
        d["work_pool"]["job_variables"]["image"]
        for d in DEPLOYMENTS
        if d["work_pool"]["name"] == pool
    }
    (image,) = images
    built = {
        tag: name
        for dockerfile in (ROOT / "docker").glob("Dockerfile*")
        for name, tag in re.findall(
            r"docker build -f docker/(\S+) .*-t (\S+) \.", dockerfile.read_text()
        )
        if name == dockerfile.name
    }
    assert image in built, f"{image} is built by none of docker/Dockerfile*: {built}"
