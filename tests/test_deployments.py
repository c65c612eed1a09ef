"""prefect.yaml: every deployment points at a real flow with parameters it accepts."""

import inspect
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).parents[1]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_entrypoint_and_parameters(deployment, monkeypatch):
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(deployment["parameters"]) <= accepted
    assert deployment["concurrency_limit"]["limit"] == 1
    assert deployment["work_pool"]["name"] in {"genair", "genair-gpu"}


def test_nightly_schedule():
    (nightly,) = [d for d in DEPLOYMENTS if d["name"] == "nightly-catalog-refresh"]
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True}]
