"""storage.delta: one Delta commit per run with its metadata, a rerun of the same run committing
nothing, the last N exports kept for time travel and older data files vacuumed, a clear error for
a version not kept, `genair sql` seeing the current version only, and a writer killed with
SIGKILL mid-write leaving the previous version readable."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from flows.cli import main
from genair_core.tables import RECOMMENDATIONS
from storage import delta
from storage.store import MissingTableError, Store

ROOT = Path(__file__).resolve().parents[1]


def night(n: int, users: int = 3, k: int = 2) -> pa.Table:
    """The lists of export `n`: every user's `k` items named after `n`, so each version's rows
    tell which export wrote them."""
    rows = [
        {
            "user_id": f"u{user}",
            "rank": rank,
            "item_id": f"n{n}-i{rank}",
            "score": 1.0 / rank,
            "is_new_item": rank == 1,
            "is_popularity_list": user == 0,
            "model_run": "sasrec-genair-bce-s44",
        }
        for user in range(users)
        for rank in range(1, k + 1)
    ]
    return pa.Table.from_pylist(rows)


def commit(store: Store, n: int, keep: int = 3, run_id: str | None = None) -> delta.DeltaCommit:
    return delta.commit_version(
        store,
        "recommendations",
        night(n),
        run_id=run_id or f"run-{n}",
        metadata={"users": 3, "served": "sasrec-genair-bce-s44", "new_share": 1.0},
        keep_versions=keep,
    )


def data_files(store: Store) -> set[Path]:
    """The data files the table's current version reads."""
    return {Path(uri) for uri in DeltaTable(delta.table_path(store, "recommendations")).file_uris()}


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "data")


def test_a_commit_writes_the_declared_columns_stamped_with_its_run(store):
    assert delta.current_version(store, "recommendations") is None
    assert delta.commit_version(
        store, "recommendations", night(0), run_id="run-0", metadata={"users": 3}, keep_versions=3
    ) == delta.DeltaCommit(version=0, created=True)
    table = delta.read_version(store, "recommendations")
    assert table.schema == RECOMMENDATIONS
    assert table.num_rows == 6
    assert set(table["run_id"].to_pylist()) == {"run-0"}
    assert delta.current_version(store, "recommendations") == 0
    (only,) = delta.commits(store, "recommendations")
    assert only["version"] == 0
    assert only["metadata"] == {"users": 3, "run_id": "run-0", "keep_versions": 3}
    # the metadata is the commit's own: what Spark's DESCRIBE HISTORY shows as userMetadata
    (entry,) = DeltaTable(delta.table_path(store, "recommendations")).history()
    assert '"run_id": "run-0"' in entry["userMetadata"]


def test_each_kept_version_reads_back_its_own_rows_and_older_ones_are_vacuumed(store):
    files = {}
    for n in range(5):
        assert commit(store, n) == delta.DeltaCommit(version=n, created=True)
        files[n] = data_files(store)
    for version in (2, 3, 4):
        items = delta.read_version(store, "recommendations", version)["item_id"].to_pylist()
        assert {item.split("-")[0] for item in items} == {f"n{version}"}
        assert all(path.is_file() for path in files[version])
    for version in (0, 1):
        with pytest.raises(delta.VersionNotKeptError) as caught:
            delta.read_version(store, "recommendations", version)
        assert str(caught.value) == (
            f"delta table 'recommendations' has no version {version} to read; it keeps versions "
            "2, 3, 4 (the latest exports; older ones are vacuumed)"
        )
        assert not any(path.exists() for path in files[version])
    with pytest.raises(delta.VersionNotKeptError, match="no version 5"):
        delta.read_version(store, "recommendations", 5)
    assert [c["version"] for c in delta.commits(store, "recommendations")] == [4, 3, 2]
    assert [c["metadata"]["run_id"] for c in delta.commits(store, "recommendations")] == [
        "run-4",
        "run-3",
        "run-2",
    ]
    folder = delta.table_path(store, "recommendations")
    on_disk = {p for p in folder.iterdir() if p.suffix == ".parquet"}
    assert on_disk == files[2] | files[3] | files[4]


def test_a_rerun_of_a_committed_run_writes_nothing(store):
    commit(store, 0)
    commit(store, 1)
    again = delta.commit_version(
        store, "recommendations", night(7), run_id="run-1", metadata={}, keep_versions=3
    )
    assert again == delta.DeltaCommit(version=1, created=False)
    assert DeltaTable(delta.table_path(store, "recommendations")).version() == 1
    items = delta.read_version(store, "recommendations")["item_id"].to_pylist()
    assert {item.split("-")[0] for item in items} == {"n1"}


def test_columns_and_filter_are_pushed_into_the_read(store):
    commit(store, 0)
    commit(store, 1)
    table = delta.read_version(
        store, "recommendations", 0, columns=["item_id"], filter=pc.field("user_id") == "u2"
    )
    assert table.to_pylist() == [{"item_id": "n0-i1"}, {"item_id": "n0-i2"}]
    commit_0, rows = delta.rows_where(store, "recommendations", "user_id", "u2", version=0)
    assert (commit_0["version"], commit_0["metadata"]["run_id"]) == (0, "run-0")
    assert [row["item_id"] for row in rows] == ["n0-i1", "n0-i2"]
    current, rows = delta.rows_where(store, "recommendations", "user_id", "u2")
    assert (current["version"], rows[0]["item_id"]) == (1, "n1-i1")
    assert delta.rows_where(store, "recommendations", "user_id", "nobody")[1] == []


def test_a_record_batch_reader_is_streamed_into_one_version(store):
    batches = night(3).to_batches(max_chunksize=2)
    reader = pa.RecordBatchReader.from_batches(batches[0].schema, iter(batches))
    delta.commit_version(
        store, "recommendations", reader, run_id="streamed", metadata={}, keep_versions=2
    )
    assert delta.read_version(store, "recommendations").num_rows == 6


def test_genair_sql_sees_only_the_current_version(tmp_path, capsys):
    config = tmp_path / "genair.toml"
    config.write_text('[storage]\nroot = "data"\n')
    store = Store(tmp_path / "data")
    commit(store, 0)
    delta.commit_version(
        store, "recommendations", night(1, users=5), run_id="run-1", metadata={}, keep_versions=3
    )
    query = "SELECT count(*) AS n, min(item_id) AS first FROM recommendations"
    assert main(["--config", str(config), "sql", query, "--csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row == {"n": "10", "first": "n1-i1"}


def test_bad_input_gets_a_clear_error(store):
    with pytest.raises(KeyError, match="unknown delta table 'recs'; delta tables: rec"):
        delta.commit_version(store, "recs", night(0), run_id="r", metadata={}, keep_versions=1)
    with pytest.raises(ValueError, match="keep_versions must be at least 1, got 0"):
        delta.commit_version(
            store, "recommendations", night(0), run_id="r", metadata={}, keep_versions=0
        )
    with pytest.raises(ValueError, match=r"the data has no columns \['model_run'\]"):
        delta.commit_version(
            store,
            "recommendations",
            night(0).drop_columns(["model_run"]),
            run_id="r",
            metadata={},
            keep_versions=1,
        )
    with pytest.raises(ValueError, match="'run_id' is set by genair"):
        delta.commit_version(
            store,
            "recommendations",
            night(0),
            run_id="r",
            metadata={"run_id": "x"},
            keep_versions=1,
        )
    with pytest.raises(MissingTableError, match="delta table 'recommendations' has not been"):
        delta.read_version(store, "recommendations")
    assert delta.commits(store, "recommendations") == []
    nulls = night(0).set_column(0, "user_id", pa.array([None] * 6, pa.string()))
    with pytest.raises(DeltaError, match="'user_id' with null values to non-nullable"):
        delta.commit_version(
            store, "recommendations", nulls, run_id="r", metadata={}, keep_versions=1
        )
    assert delta.current_version(store, "recommendations") is None


# Streams export "killed" batch by batch until a data file of it is on disk, then sleeps until
# the test kills it: the kill lands after data files were written, before the commit.
KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    import pyarrow as pa
    from genair_core.tables import RECOMMENDATIONS
    from storage import delta
    from storage.store import Store

    store, marker = Store(Path(sys.argv[1])), Path(sys.argv[2])
    folder = delta.table_path(store, "recommendations")
    before = set(folder.iterdir())
    schema = RECOMMENDATIONS.remove(RECOMMENDATIONS.get_field_index("run_id"))
    rng = np.random.default_rng(0)

    def batches():
        n = 100_000
        for _ in range(2_000):
            yield pa.record_batch(
                [
                    pa.array(np.char.add("u", rng.integers(0, 10**9, n).astype("U9"))),
                    pa.array(rng.integers(1, 50, n, dtype=np.int32)),
                    pa.array(np.char.add("i", rng.integers(0, 10**9, n).astype("U9"))),
                    pa.array(rng.random(n, dtype=np.float32)),
                    pa.array(rng.random(n) < 0.1),
                    pa.array(np.zeros(n, dtype=bool)),
                    pa.array(["sasrec-genair-bce-s44"] * n),
                ],
                schema=schema,
            )
            if set(folder.iterdir()) - before:
                marker.write_text("data files written")
                time.sleep(600)

    delta.commit_version(
        store,
        "recommendations",
        pa.RecordBatchReader.from_batches(schema, batches()),
        run_id="killed",
        metadata={},
        keep_versions=3,
    )
    """
)


def test_a_writer_killed_mid_write_leaves_the_previous_version_and_the_rerun_commits_once(
    store, tmp_path
):
    commit(store, 0)
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(store.root), str(marker)], env=env
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert writer.poll() is None, "the writer ended before it wrote a data file"
            assert time.monotonic() < deadline, "the writer wrote no data file in 300 s"
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    folder = delta.table_path(store, "recommendations")
    leftovers = {p for p in folder.iterdir() if p.name != "_delta_log"} - data_files(store)
    assert leftovers, "the kill should leave the killed write's files behind"

    assert delta.current_version(store, "recommendations") == 0
    items = delta.read_version(store, "recommendations")["item_id"].to_pylist()
    assert {item.split("-")[0] for item in items} == {"n0"}

    rerun = delta.commit_version(
        store, "recommendations", night(1), run_id="killed", metadata={}, keep_versions=3
    )
    assert rerun == delta.DeltaCommit(version=1, created=True)
    assert delta.commit_version(
        store, "recommendations", night(1), run_id="killed", metadata={}, keep_versions=3
    ) == delta.DeltaCommit(version=1, created=False)
    history = DeltaTable(folder).history()
    assert [h["version"] for h in history] == [1, 0]
    assert not any(path.exists() for path in leftovers)  # vacuumed by the rerun's commit
    assert delta.read_version(store, "recommendations").num_rows == 6
