"""`genair status`: what the storage root holds, read without starting Prefect, and a run killed
without a chance to record its end shown as crashed."""

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from storage.runs import (
    COMPLETED,
    FAILED,
    RUNNING,
    RunRecord,
    owner_state,
    read_runs,
    storage_status,
    write_run,
)
from storage.store import StepManifest, Store

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def dead_pid() -> int:
    """The id of a process that was killed with SIGKILL (and reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return child.pid


def record(run_id: str, state: str, minutes: int, **fields: object) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        flow=str(fields.pop("flow", "genair-full")),
        parameters={"force": False},
        state=state,
        started_at=T0 + timedelta(minutes=minutes),
        ended_at=None if state == RUNNING else T0 + timedelta(minutes=minutes + 1),
        code_version="abc123",
        config_hash="c0",
        **fields,
    )


@pytest.fixture
def root(tmp_path) -> Path:
    """A storage root with a table, an archetype failure and four runs: completed, failed,
    killed (Running, its process gone), and completed on a flow of its own."""
    root = tmp_path / "data"
    store = Store(root, run_id="run-ok")
    pairs = pa.table(
        {
            "i": pa.array([1, 2], pa.int32()),
            "j": pa.array([2, 3], pa.int32()),
            "count": pa.array([1, 4], pa.int32()),
            "s": pa.array([0.5, 1.0], pa.float32()),
        }
    )
    info = store.write_table("cooccurrence", pairs)
    store.write_manifest(StepManifest("cooccurrence", "f", {"cooccurrence": info}, run_id="run-ok"))
    store.write_part(
        "archetype_failures",
        "m",
        "k",
        [
            {
                "item_id": "A",
                "content_hash": "h",
                "model_id": "m",
                "prompt_version": "p",
                "settings_id": "s",
                "reason": "empty_completion",
                "detail": "d",
                "archetype": "",
                "created_at": T0,
                "run_id": "run-ok",
            }
        ],
    )
    write_run(store, record("run-ok", COMPLETED, 0))
    write_run(store, record("run-failed", FAILED, 10, error="ValueError: bad catalog row 7"))
    write_run(store, record("run-killed", RUNNING, 20, pid=dead_pid()))
    write_run(store, record("run-backfill", COMPLETED, 30, flow="genair-backfill"))
    (tmp_path / "genair.toml").write_text('[storage]\nroot = "data"\n')
    return root


def genair_status(root: Path, *args: str) -> str:
    """`genair status` in a fresh interpreter, which fails if anything imported Prefect."""
    code = (
        "import sys\n"
        "from flows.cli import main\n"
        f"code = main(['--config', {str(root.parent / 'genair.toml')!r}, 'status', *{args!r}])\n"
        "assert not [m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')], "
        "'genair status imported prefect'\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_running_row_whose_process_is_gone_reads_crashed(root):
    runs = {r.run_id: r for r in read_runs(Store(root))}
    assert runs["run-killed"].state == RUNNING
    assert owner_state(runs["run-killed"]) == "Crashed (owner gone)"
    alive = record("run-live", RUNNING, 40, pid=os.getpid())
    assert owner_state(alive) == RUNNING
    elsewhere = record("run-far", RUNNING, 40, pid=1, host=f"not-{socket.gethostname()}")
    assert owner_state(elsewhere).startswith("Running (on not-")


def test_status_lists_tables_runs_and_open_failures_without_prefect(root):
    out = genair_status(root)
    tables = out.split("\ntables\n")[1].split("\n\n")[0]
    assert "cooccurrence" in tables
    assert "run run-ok" in tables
    assert "cooccurrence 20" in tables
    assert "archetype_failures" in tables
    assert "(1 parts)" in tables
    runs = out.split("\nruns (newest first, 4 of 4)\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[-1] for line in runs] == [
        "run-backfill",
        "run-killed",
        "run-failed",
        "run-ok",
    ]
    assert "Crashed (owner gone)" in runs[1]
    assert "Failed" in runs[2]
    failures = out.split("\nopen failures\n")[1]
    assert "run run-killed (genair-full" in failures
    assert "run run-failed (genair-full" in failures
    assert "ValueError: bad catalog row 7" in failures
    assert "archetype_failures: 1 items skipped (1 empty_completion)" in failures
    assert "run-backfill" not in failures
    assert "run-ok" not in failures


def test_a_completed_run_settles_the_failures_of_its_flow(root):
    write_run(Store(root), record("run-fixed", COMPLETED, 50))
    report = storage_status(Store(root), last=2)
    assert [r["run_id"] for r in report["runs"]] == ["run-fixed", "run-backfill"]
    assert report["runs_total"] == 5
    assert report["open_failures"]["runs"] == []
    assert report["open_failures"]["archetype_failures"] == {"empty_completion": 1}


def test_status_json(root):
    report = json.loads(genair_status(root, "--json", "--runs", "1"))
    assert [r["run_id"] for r in report["runs"]] == ["run-backfill"]
    (table,) = [t for t in report["tables"] if t["table"] == "cooccurrence"]
    assert (table["rows"], table["run_id"], table["matches_manifest"]) == (2, "run-ok", True)
    assert {r["run_id"] for r in report["open_failures"]["runs"]} == {"run-killed", "run-failed"}


def test_status_of_an_empty_root(tmp_path):
    (tmp_path / "genair.toml").write_text('[storage]\nroot = "data"\n')
    out = genair_status(tmp_path / "data")
    assert "(none yet" in out
    assert "(none recorded)" in out
    assert "  (none)" in out
