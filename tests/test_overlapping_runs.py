"""Two real processes over one storage root: a backfill started while the nightly refresh runs
waits for the refresh's storage lock, then runs, and their writes never interleave.

Both processes run the deployed flows' code (run_refresh, run_backfill) with the scripted engine
of scripted_pipeline.py, against the session's Prefect server. The refresh's first archetype
batch waits for the test's word, so the backfill is certain to arrive while the refresh holds
the lock with its work half done."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect.settings import PREFECT_API_URL
from scripted_pipeline import write_catalog_dataset

from storage import locks
from storage.runs import COMPLETED, read_runs, read_steps
from storage.sql import connect
from storage.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
REPO = Path(__file__).parent.parent
BACKFILLED = ["m03", "m05"]

REFRESH = """
import sys, time
from pathlib import Path
sys.path.insert(0, "tests")
from scripted_pipeline import TitleEngines, scripted_refresh
from flows.params import RefreshParams

class HeldEngines(TitleEngines):
    # Engines whose first batch waits for the test's word: the refresh is held mid-run.
    def __call__(self, *args, **kwargs):
        engine = super().__call__(*args, **kwargs)
        generate, folder = engine.generate, Path(sys.argv[2])
        def held(prompts):
            (folder / "refresh-generating").touch()
            deadline = time.monotonic() + 900
            while not (folder / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            return generate(prompts)
        engine.generate = held
        return engine

scripted_refresh(RefreshParams(config_path=sys.argv[1], recommenders="never"), HeldEngines())
"""

BACKFILL = """
import sys
sys.path.insert(0, "tests")
from scripted_pipeline import TitleEngines, scripted_backfill
from flows.params import BackfillParams

items = sys.argv[2].split(",")
params = BackfillParams(config_path=sys.argv[1], items=items, recommenders="never")
scripted_backfill(params, TitleEngines("fans of"))
"""


def start(script: str, log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "DO_NOT_TRACK": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# Deadlines that only a hung process reaches: what they wait for takes seconds on a quiet
# machine, and a loaded machine may take many times that.
def wait_for(condition, what: str, procs: list[subprocess.Popen], seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{what}: process {proc.args[-2:]} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.1)


def writes_by_run(store: Store) -> dict[str, list[float]]:
    """{run id: mtimes} of every manifest and archetype part, by the run its content names."""
    writes: dict[str, list[float]] = {}
    for manifest in store.manifest_path("any").parent.glob("*.json"):
        run_id = json.loads(manifest.read_text())["run_id"]
        writes.setdefault(run_id, []).append(manifest.stat().st_mtime)
    for part in store.part_paths("archetypes"):
        for run_id in set(pq.read_table(part, columns=["run_id"])["run_id"].to_pylist()):
            writes.setdefault(run_id, []).append(part.stat().st_mtime)
    return writes


def test_a_backfill_started_during_the_refresh_waits_for_it_then_runs(tmp_path):
    started = time.monotonic()
    config = write_catalog_dataset(tmp_path)
    store = Store(tmp_path / "data")
    refresh_log, backfill_log = tmp_path / "refresh.log", tmp_path / "backfill.log"
    refresh = start(REFRESH, refresh_log, str(config), str(tmp_path))
    backfill = None
    try:
        wait_for(lambda: (tmp_path / "refresh-generating").exists(), "refresh mid-run", [refresh])
        assert locks.read_owner(tmp_path / "data" / ".genair.lock").pid == refresh.pid
        backfill = start(BACKFILL, backfill_log, str(config), ",".join(BACKFILLED))
        wait_for(
            lambda: "waiting for it" in backfill_log.read_text(),
            "backfill says it waits",
            [refresh, backfill],
        )
        (tmp_path / "go").touch()
        assert refresh.wait(timeout=600) == 0, refresh_log.read_text()[-3000:]
        assert backfill.wait(timeout=600) == 0, backfill_log.read_text()[-3000:]
    finally:
        for proc in (refresh, backfill):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    runs = {run.flow: run for run in read_runs(store)}
    first, second = runs["genair-nightly-refresh"], runs["genair-backfill"]
    assert (first.pid, second.pid) == (refresh.pid, backfill.pid)
    assert first.state == second.state == COMPLETED
    assert first.ended_at <= second.started_at
    # Every file the backfill wrote (its content names it) was written after the refresh ended.
    # (A part the backfill rewrote to drop replaced rows keeps the refresh's rows and run id, so
    # a file naming the refresh may be newer; nothing naming the backfill may be older.)
    writes = writes_by_run(store)
    assert set(writes) == {first.run_id, second.run_id}
    assert min(writes[second.run_id]) >= first.ended_at.timestamp()
    first_steps, second_steps = read_steps(store, first.run_id), read_steps(store, second.run_id)
    assert max(s.finished_at for s in first_steps) < min(s.finished_at for s in second_steps)
    assert "taking over" not in backfill_log.read_text()  # the refresh released its lock

    # The tables agree: one archetype per item, the backfilled items' from the backfill, and a
    # vector for each item.
    db = connect(store)
    assert (
        db.sql(
            "SELECT item_id FROM archetypes GROUP BY item_id, content_hash, model_id, "
            "prompt_version, settings_id HAVING count(*) > 1"
        ).fetchall()
        == []
    )
    current = dict(db.sql("SELECT item_id, archetype FROM current_archetypes").fetchall())
    items = [row[0] for row in db.sql("SELECT item_id FROM items ORDER BY item_id").fetchall()]
    assert sorted(current) == items
    assert sorted(i for i, text in current.items() if text.startswith("fans of")) == BACKFILLED
    embedded = db.sql("SELECT item_id FROM item_embeddings ORDER BY item_id").fetchall()
    assert [row[0] for row in embedded] == items
    print(f"overlapping runs: {time.monotonic() - started:.0f} s")
