from datetime import UTC, datetime

import pyarrow as pa
import pytest

from flows.cli import main as genair
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

    assert genair(["--config", str(config), "sql", "SELECT * FROM nope"]) == 1
    assert "nope" in capsys.readouterr().err


def test_manifest_round_trip(tmp_path):
    store = Store(tmp_path)
    info = store.write_table("cooccurrence", pairs(1))
    store.write_manifest(
        StepManifest("s", "f", {"cooccurrence": info}, {"when": datetime.now(UTC)})
    )
    assert store.read_manifest("s").outputs["cooccurrence"] == info
