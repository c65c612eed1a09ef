"""The readers in storage.sources and the wheel cache, on hand-made files."""

import gzip
import json
import subprocess
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genair_core.tables import RawRecord
from storage import wheel_cache
from storage.sources import (
    SourceFormatError,
    input_fingerprint,
    read_delimited,
    read_json_lines,
    read_parquet_rows,
    read_recbole_atomic,
    read_table_file,
)
from storage.wheel_cache import WheelDownloadError, ensure_wheel


def summary(records):
    """(line, error, fields) of each record: what the tests compare."""
    return [(r.line, r.error, r.fields) for r in records]


# --- JSON lines -------------------------------------------------------------------------------


def test_json_lines_keeps_good_lines_around_a_bad_one(tmp_path):
    path = tmp_path / "meta.json"
    path.write_bytes(
        b'{"asin": "A1"}\n\n{"asin": "A2", "title": \n[1, 2]\n{"asin": "caf\xe9"}\n{"asin": "A3"}\n'
    )
    records = list(read_json_lines(path))
    assert summary(records) == [
        (1, None, {"asin": "A1"}),
        (3, "malformed_json", None),
        (4, "malformed_json", None),
        (5, "invalid_utf8", None),
        (6, None, {"asin": "A3"}),
    ]
    assert records[0].source == str(path)
    assert records[1].raw == '{"asin": "A2", "title": '
    assert records[2].detail == "expected a JSON object, got list"
    assert records[3].raw == '{"asin": "caf\\xe9"}'
    assert "0xe9" in records[3].detail


def test_json_lines_reads_gzip(tmp_path):
    path = tmp_path / "meta.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"asin": "A1", "title": "Crème"}\n{"asin": "A2"}\n')
    assert summary(read_json_lines(path)) == [
        (1, None, {"asin": "A1", "title": "Crème"}),
        (2, None, {"asin": "A2"}),
    ]


def test_truncated_gzip_is_a_source_format_error(tmp_path):
    path = tmp_path / "meta.json.gz"
    data = gzip.compress(b"".join(b'{"asin": "A%d"}\n' % i for i in range(1000)))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceFormatError, match=r"meta\.json\.gz: broken gzip data after line"):
        list(read_json_lines(path))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"asin,title\nA1,x\n", "not a JSON-lines file"),
        (b'[\n  {"asin": "A1"}\n]\n', "not a JSON-lines file"),
        (b"PAR1\x00\x15\xe9\x00", "not a JSON-lines file"),
        (b"", "empty file"),
        (b"\n  \n", "empty file"),
    ],
)
def test_a_file_that_is_not_json_lines_is_refused(tmp_path, content, problem):
    path = tmp_path / "meta.json"
    path.write_bytes(content)
    with pytest.raises(SourceFormatError, match=problem) as err:
        list(read_json_lines(path))
    assert str(path) in str(err.value)


def test_a_missing_file_is_a_source_format_error(tmp_path):
    with pytest.raises(SourceFormatError, match=r"nope\.json: file not found"):
        list(read_json_lines(tmp_path / "nope.json"))


# --- delimited --------------------------------------------------------------------------------


def test_csv_invalid_utf8_line_keeps_the_rows_around_it(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(b"user,item\r\nu1,A\r\nu2,caf\xe9\r\nu3,C\r\n")
    records = list(read_delimited(path))
    assert summary(records) == [
        (2, None, {"user": "u1", "item": "A"}),
        (3, "invalid_utf8", None),
        (4, None, {"user": "u3", "item": "C"}),
    ]
    assert records[1].raw == "u2,caf\\xe9"


def test_csv_multiline_record_is_numbered_by_its_first_line(tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text('id,description\nA,"two\nlines"\nB,one\n')
    records = list(read_delimited(path))
    assert summary(records) == [
        (2, None, {"id": "A", "description": "two\nlines"}),
        (4, None, {"id": "B", "description": "one"}),
    ]
    assert records[0].raw == 'A,"two\nlines"'


def test_csv_bad_rows_become_malformed_row_records(tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text('id,title\nA,Alpha\nB,Beta,extra\nC,"Gam"ma\n\nD,Delta\nE,"open\n')
    records = list(read_delimited(path))
    assert summary(records) == [
        (2, None, {"id": "A", "title": "Alpha"}),
        (3, "malformed_row", None),
        (4, "malformed_row", None),
        (6, None, {"id": "D", "title": "Delta"}),
        (7, "malformed_row", None),
    ]
    assert records[1].detail == "expected 2 cells, got 3"
    assert records[2].detail.startswith("CSV syntax error")


def test_csv_invalid_utf8_inside_a_quoted_record_rejects_that_record(tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_bytes(b'id,description\nA,"first\nbad \xff line\nlast"\nB,ok\n')
    records = list(read_delimited(path))
    assert summary(records) == [
        (2, "invalid_utf8", None),
        (5, None, {"id": "B", "description": "ok"}),
    ]
    assert records[0].raw == 'A,"first\nbad \\xff line\nlast"'
    assert records[0].detail.startswith("line 3 inside this row is not UTF-8")


def test_csv_header_bom_delimiter_and_fieldnames(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffid;title\nA;Alpha\n".encode())
    assert summary(read_delimited(bom, delimiter=";")) == [(2, None, {"id": "A", "title": "Alpha"})]
    headerless = tmp_path / "ratings.csv"
    headerless.write_text("A1,u1,5.0,1400000000\n")
    records = read_delimited(headerless, header=False, fieldnames=("item", "user", "r", "t"))
    assert summary(records) == [
        (1, None, {"item": "A1", "user": "u1", "r": "5.0", "t": "1400000000"})
    ]


def test_csv_missing_required_column_names_file_column_and_config_key(tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("a,b,c\n1,2,3\n")
    required = {
        "a": "dataset.files.item_columns.title",
        "sku": "dataset.files.item_columns.item_id",
    }
    with pytest.raises(SourceFormatError) as err:
        list(read_delimited(path, required=required))
    assert str(err.value) == (
        f"{path}: missing column 'sku' (configured as dataset.files.item_columns.item_id); "
        "columns are: a, b, c"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty file"),
        (b"id,id\n1,2\n", "duplicate column names: id"),
        (b"id,t\xe9\n1,2\n", "header line 1 is not UTF-8"),
    ],
)
def test_csv_unusable_header_is_refused(tmp_path, content, problem):
    path = tmp_path / "catalog.csv"
    path.write_bytes(content)
    with pytest.raises(SourceFormatError, match=problem):
        list(read_delimited(path))


# --- Parquet ----------------------------------------------------------------------------------


def test_parquet_rows_are_numbered_from_one(tmp_path):
    path = tmp_path / "catalog.parquet"
    table = pa.table({"sku": ["A", "B", "C"], "tags": [["x"], [], None]})
    pq.write_table(table, path, row_group_size=2)
    records = list(read_parquet_rows(path, required=["sku"]))
    assert summary(records) == [
        (1, None, {"sku": "A", "tags": ["x"]}),
        (2, None, {"sku": "B", "tags": []}),
        (3, None, {"sku": "C", "tags": None}),
    ]
    assert json.loads(records[0].raw) == {"sku": "A", "tags": ["x"]}


def test_parquet_missing_column_and_not_parquet(tmp_path):
    path = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(SourceFormatError, match=r"missing column 'sku'; columns are: a"):
        list(read_parquet_rows(path, required=["sku"]))
    fake = tmp_path / "fake.parquet"
    fake.write_text("id,title\nA,Alpha\n")
    with pytest.raises(SourceFormatError, match=r"fake\.parquet: not a Parquet file"):
        list(read_parquet_rows(fake))


def test_read_table_file_dispatches_by_suffix(tmp_path):
    tsv = tmp_path / "catalog.tsv"
    tsv.write_text("id\ttitle\nA\tAlpha\n")
    assert summary(read_table_file(tsv)) == [(2, None, {"id": "A", "title": "Alpha"})]
    with pytest.raises(SourceFormatError, match=r"catalog\.xlsx: unsupported file type"):
        read_table_file(tmp_path / "catalog.xlsx")


# --- RecBole atomic files inside a wheel ------------------------------------------------------


def test_recbole_atomic_member_is_read_from_the_zip(tmp_path):
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(
            "pkg/data/x.item",
            'item_id:token\tmovie_title:token_seq\n1\tA "quoted" title\n2\tB, with comma\n',
        )
    records = list(read_recbole_atomic(wheel, "pkg/data/x.item"))
    assert records == [
        RawRecord(
            f"{wheel}!pkg/data/x.item",
            2,
            {"item_id": "1", "movie_title": 'A "quoted" title'},
            None,
            '1\tA "quoted" title',
        ),
        RawRecord(
            f"{wheel}!pkg/data/x.item",
            3,
            {"item_id": "2", "movie_title": "B, with comma"},
            None,
            "2\tB, with comma",
        ),
    ]
    with pytest.raises(SourceFormatError, match=r"has no member 'pkg/data/y\.item'"):
        list(read_recbole_atomic(wheel, "pkg/data/y.item"))


def atomic_wheel(tmp_path, text: bytes):
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/x.inter", text)
    return wheel


def test_recbole_atomic_invalid_utf8_rejects_the_row_and_names_the_field(tmp_path):
    wheel = atomic_wheel(
        tmp_path,
        b"user_id:token\titem_id:token\trating:float\r\n"
        b"u1\ti1\t5\r\n"
        b"u2\tcaf\xe9\t4\r\n"  # Latin-1, not UTF-8
        b"\r\n"
        b"u3\ti3\t3\textra\xff\r\n"  # a cell too many and not UTF-8: no field to name
        b"u4\ti4\r\n"
        b"u5\ti5\t1",
    )
    records = list(read_recbole_atomic(wheel, "pkg/data/x.inter"))
    assert summary(records) == [
        (2, None, {"user_id": "u1", "item_id": "i1", "rating": "5"}),
        (3, "invalid_utf8", None),
        (5, "invalid_utf8", None),
        (6, "malformed_row", None),
        (7, None, {"user_id": "u5", "item_id": "i5", "rating": "1"}),
    ]
    assert records[1].source == f"{wheel}!pkg/data/x.inter"
    assert records[1].detail == "field 'item_id': byte 0xe9 at offset 6 is not UTF-8"
    assert records[1].raw == "u2\tcaf\\xe9\t4"
    assert records[2].detail == "byte 0xff at offset 13 is not UTF-8"
    assert records[3].detail == "expected 3 cells, got 2"


def test_recbole_atomic_header_must_be_utf8_and_name_each_column_once(tmp_path):
    wheel = atomic_wheel(tmp_path, b"user_id:token\tit\xe9m:token\nu1\ti1\n")
    with pytest.raises(SourceFormatError, match=r"x\.inter: header line 1 is not UTF-8 text"):
        list(read_recbole_atomic(wheel, "pkg/data/x.inter"))
    wheel = atomic_wheel(tmp_path, b"id:token\tid:float\n1\t2\n")
    with pytest.raises(SourceFormatError, match="no atomic header"):
        list(read_recbole_atomic(wheel, "pkg/data/x.inter"))
    wheel = atomic_wheel(tmp_path, b"")
    with pytest.raises(SourceFormatError, match="no atomic header"):
        list(read_recbole_atomic(wheel, "pkg/data/x.inter"))


# --- fingerprint ------------------------------------------------------------------------------


def test_input_fingerprint_tracks_size_and_mtime_not_order(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("x\n")
    b.write_text("y\n")
    first = input_fingerprint([a, b])
    assert first == input_fingerprint([b, a])
    assert len(first) == 64
    a.write_text("xx\n")
    assert input_fingerprint([a, b]) != first
    with pytest.raises(SourceFormatError, match="file not found"):
        input_fingerprint([tmp_path / "gone.csv"])


# --- wheel cache ------------------------------------------------------------------------------


def test_ensure_wheel_uses_the_cache_without_pip(tmp_path, monkeypatch):
    cached = tmp_path / "wheels" / "recbole-1.2.1-py3-none-any.whl"
    cached.parent.mkdir()
    cached.write_bytes(b"wheel")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(wheel_cache.subprocess, "run", no_pip)
    assert ensure_wheel("recbole", "1.2.1", tmp_path) == cached


def test_ensure_wheel_downloads_once_into_place(tmp_path, monkeypatch):
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        into = command[command.index("-d") + 1]
        (tmp_path / into / "Some_Pkg-2.0-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(wheel_cache.subprocess, "run", fake_pip)
    path = ensure_wheel("some-pkg", "2.0", tmp_path)
    assert path == tmp_path / "wheels" / "Some_Pkg-2.0-py3-none-any.whl"
    assert path.read_bytes() == b"wheel"
    assert ensure_wheel("some-pkg", "2.0", tmp_path) == path
    assert len(calls) == 1
    assert "some-pkg==2.0" in calls[0]
    assert "--no-deps" in calls[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]  # no temp folder left


def test_ensure_wheel_failure_names_the_package_and_pip_stderr(tmp_path, monkeypatch):
    def failing_pip(command, **kwargs):
        stderr = "Looking in indexes...\nERROR: No matching distribution found for nopkg==9.9\n"
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(wheel_cache.subprocess, "run", failing_pip)
    with pytest.raises(WheelDownloadError) as err:
        ensure_wheel("nopkg", "9.9", tmp_path)
    assert "nopkg==9.9" in str(err.value)
    assert "No matching distribution found" in str(err.value)
    assert not (tmp_path / "wheels" / "nopkg-9.9-py3-none-any.whl").exists()
