import hashlib
import logging
import os
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE, Popen

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main as genair
from genair_core.tables import COOCCURRENCE
from storage import locks
from storage.sql import connect, rejects_by_reason
from storage.store import MissingTableError, StepManifest, Store, UnknownTableError, fingerprint


def reject(reason: str, line: int) -> dict:
    return {
        "table": "interactions",
        "source": "events.csv",
        "line": line,
        "field": "timestamp",
        "reason": reason,
        "detail": "d",
        "raw": "r",
    }


def pairs(n: int) -> pa.Table:
    return pa.table(
        {
            "i": pa.array(range(1, n + 1), pa.int32()),
            "j": pa.array(range(2, n + 2), pa.int32()),
            "count": pa.array([1] * n, pa.int32()),
            "s": pa.array([1.0] * n, pa.float32()),
        }
    )


def test_write_and_read_back(tmp_path):
    store = Store(tmp_path)
    info = store.write_table("cooccurrence", pairs(3))
    assert info.rows == 3
    assert store.read_table("cooccurrence").to_pylist() == pairs(3).to_pylist()
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["cooccurrence.parquet"]


def test_same_rows_give_identical_bytes(tmp_path):
    store = Store(tmp_path)
    first = store.write_table("cooccurrence", pairs(5))
    second = store.write_table("cooccurrence", pairs(5))
    assert first.sha256 == second.sha256
    assert store.read_table("cooccurrence").num_rows == 5  # replaced, not appended


def test_crash_mid_stream_keeps_the_previous_table_and_no_temp_files(tmp_path):
    store = Store(tmp_path)
    store.write_streams(["rejects"], [("rejects", [reject("bad_timestamp", 1)])])

    def crashing():
        yield "rejects", [reject("unknown_item", 2)]
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        store.write_streams(["rejects"], crashing())
    assert store.read_table("rejects")["reason"].to_pylist() == ["bad_timestamp"]
    assert [p.name for p in (tmp_path / "tables").iterdir()] == ["rejects.parquet"]


def test_streams_write_every_named_table_even_empty(tmp_path):
    store = Store(tmp_path)
    infos = store.write_streams(
        ["interactions", "rejects"], [("rejects", [reject("x", 1)]), ("rejects", [reject("y", 2)])]
    )
    assert infos["interactions"].rows == 0
    assert infos["rejects"].rows == 2


def test_unknown_and_missing_tables(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(
        UnknownTableError, match="known tables: calibrated_embeddings, cooccurrence, "
    ):
        store.table_path("nope")
    with pytest.raises(MissingTableError, match="'sequences' has not been written"):
        store.read_table("sequences")


def test_schema_is_enforced(tmp_path):
    with pytest.raises(ValueError, match=r"missing columns \['s'\]"):
        Store(tmp_path).write_table("cooccurrence", pairs(2).drop_columns(["s"]))


def test_manifest_is_fresh_only_for_same_inputs_and_untouched_outputs(tmp_path):
    store = Store(tmp_path)
    info = store.write_table("cooccurrence", pairs(2))
    key = fingerprint("v1", {"k": 5})
    store.write_manifest(StepManifest("cooc", key, {"cooccurrence": info}, {"pairs": 2}))

    assert store.fresh_manifest("cooc", key).summary == {"pairs": 2}
    assert store.fresh_manifest("cooc", fingerprint("v1", {"k": 6})) is None
    store.write_table("cooccurrence", pairs(3))  # someone replaced the output
    assert store.fresh_manifest("cooc", key) is None


def test_duckdb_views_and_reject_counts(tmp_path):
    store = Store(tmp_path)
    store.write_table("cooccurrence", pairs(4))
    store.write_streams(
        ["rejects"],
        [("rejects", [reject("bad_timestamp", 1), reject("bad_timestamp", 5), reject("y", 2)])],
    )
    con = connect(store)
    assert con.sql("SELECT count(*) FROM cooccurrence").fetchall() == [(4,)]
    assert rejects_by_reason(store) == {"interactions/bad_timestamp": 2, "interactions/y": 1}


def test_genair_sql_readable_and_csv(tmp_path, capsys):
    config = tmp_path / "genair.toml"
    config.write_text('[storage]\nroot = "data"\n')
    Store(tmp_path / "data").write_table("cooccurrence", pairs(2))

    assert genair(["--config", str(config), "sql", "SELECT i, j FROM cooccurrence ORDER BY i"]) == 0
    readable = capsys.readouterr().out
    assert readable.splitlines()[1].split() == ["│", "i", "│", "j", "│"]
    assert "│     2 │     3 │" in readable

    assert (
        genair(
            ["sql", "SELECT i, j FROM cooccurrence ORDER BY i", "--csv", "--config", str(config)]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines() == ['"i","j"', "1,2", "2,3"]

    assert genair(["--config", str(config), "sql", "SELECT * FROM nope"]) == 2  # a user error
    assert "nope" in capsys.readouterr().err


def test_manifest_round_trip(tmp_path):
    store = Store(tmp_path)
    info = store.write_table("cooccurrence", pairs(1))
    store.write_manifest(
        StepManifest("s", "f", {"cooccurrence": info}, {"when": datetime.now(UTC)})
    )
    assert store.read_manifest("s").outputs["cooccurrence"] == info


def test_every_row_carries_the_run_that_wrote_it_outside_every_hash(tmp_path):
    first = Store(tmp_path, run_id="run-1").write_table("cooccurrence", pairs(3))
    path = tmp_path / "tables" / "cooccurrence.parquet"
    first_bytes = path.read_bytes()
    assert (
        Store(tmp_path).read_table("cooccurrence", columns=["run_id"])["run_id"].to_pylist()
        == ["run-1"] * 3
    )
    # Reads leave the lineage out: the computing code sees the declared columns only.
    assert Store(tmp_path).read_table("cooccurrence").column_names == ["i", "j", "count", "s"]

    again = Store(tmp_path, run_id="run-2").write_table("cooccurrence", pairs(3))
    assert path.read_bytes() != first_bytes  # the file names its new writer ...
    assert again.sha256 == first.sha256  # ... and its hash, what fingerprints read, did not move
    assert Store(tmp_path).table_hashes(["cooccurrence"]) == {"cooccurrence": first.sha256}

    # The hash is that of the same rows written without lineage, byte for byte.
    plain = tmp_path / "plain.parquet"
    writer = pq.ParquetWriter(plain, COOCCURRENCE, compression="zstd", write_statistics=True)
    writer.write_table(pairs(3).cast(COOCCURRENCE))
    writer.close()
    assert first.sha256 == hashlib.sha256(plain.read_bytes()).hexdigest()
    assert Store(tmp_path).write_table("cooccurrence", pairs(4)).sha256 != first.sha256


def test_a_step_stays_fresh_when_another_run_rewrites_the_same_rows(tmp_path):
    store = Store(tmp_path, run_id="run-1")
    info = store.write_table("cooccurrence", pairs(2))
    store.write_manifest(StepManifest("cooc", "k", {"cooccurrence": info}, run_id="run-1"))
    Store(tmp_path, run_id="run-2").write_table("cooccurrence", pairs(2))
    assert store.fresh_manifest("cooc", "k") is not None
    Store(tmp_path, run_id="run-3").write_table("cooccurrence", pairs(3))
    assert store.fresh_manifest("cooc", "k") is None
    assert store.read_manifest("cooc").run_id == "run-1"


def test_parts_and_streams_are_stamped_and_rows_keep_their_run_outside_a_run(tmp_path):
    Store(tmp_path, run_id="run-1").write_streams(["rejects"], [("rejects", [reject("x", 1)])])
    Store(tmp_path).write_part("archetype_failures", "m", "k", [failure("given")])
    Store(tmp_path, run_id="run-2").write_part("archetype_failures", "m", "k2", [failure("given")])
    con = connect(Store(tmp_path))
    assert con.sql("SELECT DISTINCT run_id FROM rejects").fetchall() == [("run-1",)]
    assert con.sql("SELECT run_id FROM archetype_failures ORDER BY 1").fetchall() == [
        ("given",),
        ("run-2",),
    ]


def failure(run_id: str) -> dict:
    return {
        "item_id": "A",
        "content_hash": "h",
        "model_id": "m",
        "prompt_version": "p",
        "settings_id": "s",
        "reason": "engine_error",
        "detail": "d",
        "archetype": None,
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "run_id": run_id,
    }


# -- run locks (storage.locks) ------------------------------------------------------------------

HOLD_LOCK = """
import os, subprocess, sys, time
from pathlib import Path
from storage.locks import GUARD_TRACE_ENV, hold
with hold(sys.argv[1], guard=sys.argv[2] == "guard"):
    child = subprocess.Popen(["sleep", "600"])
    trace, deadline = Path(os.environ[GUARD_TRACE_ENV]), time.monotonic() + 120
    while sys.argv[2] == "guard" and time.monotonic() < deadline:  # until the guard watches it
        if trace.exists() and str(child.pid) in trace.read_text().split():
            break
        time.sleep(0.05)
    print(child.pid, flush=True)
    if sys.argv[3] == "hold":
        time.sleep(600)
print("released", flush=True)
"""


def hold_lock_in_a_process(lock: Path, *, guard: bool, release: bool) -> tuple[Popen, int]:
    """A python process that holds `lock` and starts `sleep 600`; returns it and sleep's pid,
    once a guard's watchdog watches it (the watchdog lists what it watches in `<lock>.trace`)."""
    proc = Popen(
        [
            sys.executable,
            "-c",
            HOLD_LOCK,
            str(lock),
            "guard" if guard else "-",
            "release" if release else "hold",
        ],
        stdout=PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, locks.GUARD_TRACE_ENV: f"{lock}.trace"},
    )
    return proc, int(proc.stdout.readline())


def watched(lock: Path, pid: int) -> bool:
    """Whether the watchdog of `lock`'s holder watches (or watched) `pid`."""
    trace = Path(f"{lock}.trace")
    return trace.exists() and str(pid) in trace.read_text().split()


# The checks below that a process is *not* ended wait NOT_ENDED_S for it to end. Nothing is left
# that could end it (no watchdog was started, or it exited before the holder did), so the window
# only has to let a signal sent before that point take effect: the kernel delivers a SIGTERM or
# SIGKILL and the process turns zombie within milliseconds, a loaded machine's scheduler ticks
# included; two seconds is a thousand times that.
NOT_ENDED_S = 2.0


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_a_lock_names_its_holder_and_is_cleared_on_release(tmp_path, caplog):
    lock = tmp_path / "run.lock"
    with locks.hold(lock) as dead:
        owner = locks.read_owner(lock)
        assert dead is None
        assert owner.pid == os.getpid()
        assert owner.host == socket.gethostname()
        assert owner.is_running()
        assert "pytest" in owner.command
    assert lock.read_text() == ""
    assert locks.read_owner(lock) is None
    with locks.hold(lock) as dead:
        assert dead is None
    assert "taking over" not in caplog.text


def test_the_lock_of_a_killed_holder_is_taken_over_with_one_line_naming_it(tmp_path, caplog):
    lock = tmp_path / "run.lock"
    holder, sleeper = hold_lock_in_a_process(lock, guard=False, release=False)
    assert locks.read_owner(lock).pid == holder.pid
    holder.kill()
    holder.wait()
    try:
        with caplog.at_level(logging.WARNING, logger="storage.locks"), locks.hold(lock) as dead:
            assert dead.pid == holder.pid
            assert not dead.is_running()
            assert locks.read_owner(lock).pid == os.getpid()
        assert not gone_within(sleeper, NOT_ENDED_S)  # without a guard, a child outlives it
    finally:
        os.kill(sleeper, signal.SIGKILL)
    lines = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert len(lines) == 1
    assert f"died and never released it (pid {holder.pid} on {socket.gethostname()}" in lines[0]


def test_a_second_holder_is_told_who_holds_the_lock_then_waits(tmp_path):
    lock = tmp_path / "run.lock"
    holder, sleeper = hold_lock_in_a_process(lock, guard=False, release=False)
    waited_for = []

    def told(owner: locks.LockOwner | None) -> None:
        waited_for.append(owner)
        holder.terminate()  # SIGTERM: Python dies without its finally, the kernel frees the lock

    try:
        with locks.hold(lock, on_wait=told):
            # Taken only once the holder is gone: it exits (then turns zombie) right after the
            # kernel frees its lock, so it is reaped here at once.
            assert holder.wait(timeout=60) == -signal.SIGTERM
    finally:
        holder.kill()
        holder.wait()
        os.kill(sleeper, signal.SIGKILL)
    assert [owner.pid for owner in waited_for] == [holder.pid]


def test_a_guarded_holder_killed_takes_its_children_with_it(tmp_path):
    lock = tmp_path / "run.lock"
    holder, sleeper = hold_lock_in_a_process(lock, guard=True, release=False)
    assert watched(lock, sleeper)
    holder.kill()
    holder.wait()
    assert gone_within(sleeper, 15)


def test_a_guarded_holder_that_releases_ends_nothing(tmp_path):
    lock = tmp_path / "run.lock"
    holder, sleeper = hold_lock_in_a_process(lock, guard=True, release=True)
    assert holder.stdout.readline() == "released\n"
    assert holder.wait() == 0
    try:
        assert locks.read_owner(lock) is None
        assert watched(lock, sleeper)  # and the holder waited for its watchdog to exit
        assert not gone_within(sleeper, NOT_ENDED_S)  # left running, as without a guard
    finally:
        os.kill(sleeper, signal.SIGKILL)
