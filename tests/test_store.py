import hashlib
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main as genair
from genair_core.tables import COOCCURRENCE
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


def test_a_hash_of_some_columns_sees_their_values_only(tmp_path):
    store = Store(tmp_path)
    store.write_table("cooccurrence", pairs(5))
    before = store.columns_sha256("cooccurrence", ["i", "j"])
    rescored = pairs(5).set_column(3, "s", pa.array([2.0] * 5, pa.float32()))
    after_rescore = store.write_table("cooccurrence", rescored)
    assert store.columns_sha256("cooccurrence", ["i", "j"]) == before
    assert store.columns_sha256("cooccurrence", ["i", "j", "s"]) != before
    store.write_table("cooccurrence", pairs(5).set_column(1, "j", pa.array(range(5), pa.int32())))
    assert store.columns_sha256("cooccurrence", ["i", "j"]) != before
    assert after_rescore.sha256 != store.table_info("cooccurrence").sha256


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
