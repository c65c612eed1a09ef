"""`[dataset] as_of`: the pipeline replayed as the catalog and the log stood at a time, then a
refresh without it, through the flows (scripted engine, real Prefect, real Delta export)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from scripted_pipeline import TitleEngines, add_item, scripted_pipeline, scripted_refresh
from scripted_pipeline import write_catalog_dataset as catalog

from flows.cli import main as genair
from flows.cold_start import genair_cold_start
from flows.params import RefreshParams
from genair_core.recommenders import cold_start
from genair_core.tables import VECTOR_SPACES, to_matrix
from storage import delta
from storage.recommenders import finished_runs
from storage.store import Store

pytestmark = pytest.mark.usefixtures("prefect_harness")
T = 5000  # seconds: after every interaction of the generated log (the last is at 4,990)
AS_OF = "as_of = 1970-01-01T01:23:20Z\n"
NEW = {"m90": range(0, 10), "m91": range(10, 20)}  # new item: the users who then take it


def with_as_of(config_text: str) -> str:
    return config_text.replace('name = "files"\n', f'name = "files"\n{AS_OF}', 1)


def vectors(store: Store, table: str) -> dict[str, np.ndarray]:
    rows = store.read_table(table, columns=["item_id", "vector"])
    return dict(zip(rows["item_id"].to_pylist(), to_matrix(rows["vector"]), strict=True))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The generated 24-item log as of T, two items and 21 interactions after it, and one
    sasrec `id` and one `genair` run."""
    path = catalog(tmp_path)
    text = path.read_text().replace('variants = ["id"]', 'variants = ["id", "genair"]')
    # Calibration keeps its adapter trained as of T, whatever the later pairs.
    text = text.replace("[calibration]\n", "[calibration]\nmax_drift = inf\n")
    path.write_text(with_as_of(text))
    for item_id in NEW:
        add_item(path, item_id, f"Movie {item_id}")
    # m90 in the first half of the time after T (validation), m91 in the second (test).
    later = [f"u{user:02d},m90,{T + 1 + 100 * user}" for user in NEW["m90"]]
    later += [f"u{user:02d},m91,{T + 5000 + 100 * user}" for user in NEW["m91"]]
    later.append(f"u00,m05,{T + 2000}")  # a later interaction with an old item
    events = path.parent / "events.csv"
    events.write_text(events.read_text() + "\n".join(later) + "\n")
    return path


def test_a_replay_as_of_t_then_a_refresh_adds_what_came_later(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert datetime(1970, 1, 1, 1, 23, 20, tzinfo=UTC).timestamp() == T
    summary = scripted_pipeline(str(config), TitleEngines())
    store = Store(config.parent / "data")
    assert summary["ingest"]["as_of"]["held_back"] == {"items": 2, "interactions": 21}

    # Nothing after T reaches a table written as of T.
    log = store.read_table("interactions", columns=["item_id", "timestamp"])
    assert max(t.timestamp() for t in log["timestamp"].to_pylist()) < T
    assert not set(NEW) & set(store.read_table("items")["item_id"].to_pylist())
    for table in ("item_index", "archetypes", *VECTOR_SPACES.values()):
        rows = store.read_parts(table) if table == "archetypes" else store.read_table(table)
        assert not set(NEW) & set(rows["item_id"].to_pylist()), table
    as_of_t = {table: vectors(store, table) for table in VECTOR_SPACES.values()}
    first = delta.read_version(store, "recommendations")
    assert not set(NEW) & set(first["item_id"].to_pylist())

    # The refresh without as_of: the later items get archetypes and vectors from the refresh,
    # through the bases and the adapter fitted as of T; the old items keep theirs.
    config.write_text(config.read_text().replace(AS_OF, ""))
    summary = scripted_refresh(
        RefreshParams(config_path=str(config), recommenders="never"), TitleEngines()
    )
    assert "as_of" not in summary["ingest"]
    assert summary["calibrate"]["decision"] == "projected"
    assert set(NEW) <= set(store.read_parts("archetypes")["item_id"].to_pylist())
    for table, before in as_of_t.items():
        after = vectors(store, table)
        assert set(after) == set(before) | set(NEW), table
        for item_id, vector in before.items():
            np.testing.assert_allclose(after[item_id], vector, rtol=1e-6, atol=1e-7)
        for item_id in NEW:
            assert np.linalg.norm(after[item_id]) > 0
            others = np.stack([v for i, v in after.items() if i != item_id])
            assert not np.isclose(others, after[item_id], atol=1e-6).all(axis=1).any()
    lists = delta.read_version(store, "recommendations").to_pylist()
    served_new = {r["item_id"] for r in lists if r["is_new_item"]}
    assert served_new == set(NEW)
    users = {r["user_id"] for r in lists}
    for item_id, takers in NEW.items():
        # k (50) exceeds the catalog: every user who has not taken the new item is offered it,
        # and a later interaction with it counts as seen.
        offered = {r["user_id"] for r in lists if r["item_id"] == item_id}
        assert offered == users - {f"u{u:02d}" for u in takers}

    # The cold-start evaluation of the runs trained as of T: every later interaction a target.
    weights = {run: store.best_weights_path(run).read_bytes() for run in finished_runs(store)}
    as_of = datetime.fromtimestamp(T, UTC).isoformat()
    summary = genair_cold_start(as_of=as_of, config_path=str(config))["cold-start"]
    # The GenAIR-family method best on the validation window: the run or one of its mixes.
    assert summary["chosen"].partition("+")[0] == "sasrec-genair"
    rows = {
        partition: store.read_parts("cold_start_targets", partition).to_pylist()
        for partition in ("sasrec-id-s1", "sasrec-genair-s1", "content-raw-s0", "popularity-s0")
    }
    assert all(len(r) == 21 for r in rows.values())  # 20 on the new items, 1 on m05
    assert sum(r["kind"] == "new" for r in rows["sasrec-id-s1"]) == 20
    assert all(r["ndcg@10"] == 0 for r in rows["sasrec-id-s1"] if r["kind"] == "new")
    assert all(r["ndcg@10"] == 0 for r in rows["popularity-s0"] if r["kind"] == "new")
    assert any(r["ndcg@10"] > 0 for r in rows["sasrec-genair-s1"] if r["kind"] == "new")
    report = Path(summary["report"]).read_text()
    assert "| `sasrec-genair` | 1 |" in report
    assert f"`{summary['chosen']}` against `content-" in report
    # Nothing was trained: the weights are those trained as of T.
    assert {run: store.best_weights_path(run).read_bytes() for run in weights} == weights
    # The study's next chunk: the run as of T and the refresh again rewrite the tables with the
    # same values (and their own timestamps). Then, from the command line (the flow's parameter a
    # time, as the CLI passes it): every method's step is up to date, the report the same.
    scored = {path: path.stat().st_mtime_ns for path in store.part_paths("cold_start_targets")}
    config.write_text(with_as_of(config.read_text()))
    scripted_pipeline(str(config), TitleEngines())
    config.write_text(config.read_text().replace(AS_OF, ""))
    scripted_refresh(RefreshParams(config_path=str(config), recommenders="never"), TitleEngines())
    assert genair(["--config", str(config), "cold-start", "--as-of", as_of]) == 0
    assert Path(summary["report"]).read_text() == report
    assert {path: path.stat().st_mtime_ns for path in scored} == scored
    # The runs; genair mixed with content at 4 weights, aligned and switched at 4 offsets each;
    # random (3 seeds); the other baselines.
    assert len(store.part_paths("cold_start_targets")) == 2 + 4 + 4 + 4 + 3 + 3
    # A method whose rows are lost is the only one scored again, in a pass of its own.
    lost = store.part_paths("cold_start_targets", "sasrec-genair+align0-s1")
    assert len(lost) == 1
    lost[0].unlink()
    passes = []

    def evaluate_all(log, scorers):
        passes.append(sorted(scorers))
        return cold_start.evaluate_all(log, scorers)

    monkeypatch.setattr("tasks.cold_start.evaluate_all", evaluate_all)
    assert genair(["--config", str(config), "cold-start", "--as-of", as_of]) == 0
    assert passes == [["sasrec-genair+align0"]]
    assert Path(summary["report"]).read_text() == report
