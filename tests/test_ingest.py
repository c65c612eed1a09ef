"""genair_core.data.ingest: every bad row becomes exactly one reject, good rows survive
unchanged."""

import hashlib
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from genair_core.config import DatasetConfig, FilesConfig, InteractionColumns, ItemColumns
from genair_core.data.datasets import FilesDataset
from genair_core.data.ingest import REASONS, AsOf, Held, content_hash, first_interactions, ingest
from genair_core.tables import RawRecord
from storage.schemas import TABLES
from tasks.datasets import make_dataset, open_dataset

LONG = "x" * 101  # max_field_chars is 100 below

CATALOG = (
    b"item_id,title,genre,price\n"  # 1
    b"A,Alpha,drama,1.50\n"  # 2 accepted
    b",NoId,drama,\n"  # 3 missing_id
    b"   ,Blank,drama,\n"  # 4 missing_id (whitespace only)
    b"B,Beta,comedy,\n"  # 5 accepted
    b" B ,Beta,comedy,\n"  # 6 duplicate_item (same id once stripped, same metadata)
    b"B,Beta 2,comedy,\n"  # 7 conflicting_duplicate
    b"C," + LONG.encode() + b",drama,\n"  # 8 field_too_long: title
    b"D,Delta,drama\n"  # 9 malformed_row (3 cells)
    b"E,Caf\xe9,drama,\n"  # 10 invalid_utf8
    b"F,  Foxtrot  ,,\n"  # 11 accepted: title stripped, empty genre is no attribute
    b"G,Golf," + LONG.encode() + b",\n"  # 12 field_too_long: attributes.genre
    b'H,"Ho\ntel",noir,n/a\n'  # 13-14 accepted: unparseable price kept as an attribute
)

EVENTS = (
    b"user_id,item_id,timestamp,rating\n"  # 1
    b"u1,A,100,5\n"  # 2 accepted
    b"u1,B,2016-09-01T10:00:00Z,4.5\n"  # 3 accepted
    b",A,100,5\n"  # 4 missing_id user_id
    b"u2,,100,5\n"  # 5 missing_id item_id
    b"u2,A,yesterday,5\n"  # 6 bad_timestamp: unparseable
    b"u2,A,-5,5\n"  # 7 bad_timestamp: before 1970
    b"u2,A,2100-01-02,5\n"  # 8 bad_timestamp: after 2100
    b"u2,A,200,great\n"  # 9 bad_rating
    b"u2,A,200,nan\n"  # 10 bad_rating: not finite
    b"u2,Z,200,\n"  # 11 unknown_item
    b"u1,A,100.4,3\n"  # 12 duplicate_interaction (same second as line 2)
    b"u1,C,300,\n"  # 13 unknown_item (C was rejected)
    b"u2,A,200,\n"  # 14 accepted, no rating
    b"u1,A,100,5,x\n"  # 15 malformed_row
    b"u3,\xff,100,5\n"  # 16 invalid_utf8
)


@pytest.fixture
def run_ingest(tmp_path):
    """ingest over CATALOG and EVENTS, read from files as the ingest task reads them."""
    (tmp_path / "catalog.csv").write_bytes(CATALOG)
    (tmp_path / "events.csv").write_bytes(EVENTS)
    files = FilesConfig(
        catalog=tmp_path / "catalog.csv",
        interactions=tmp_path / "events.csv",
        item_columns=ItemColumns(price="price"),
        interaction_columns=InteractionColumns(rating="rating"),
    )
    config = DatasetConfig(name="files", files=files)
    opened = open_dataset(config, tmp_path)

    def run(as_of: datetime | None = None, **options):
        dataset = make_dataset(config)
        if as_of is not None:
            first_seen = first_interactions(dataset, opened.interaction_records())
            options["as_of"] = AsOf(as_of, first_seen)
        records = (opened.item_records(), opened.interaction_records())
        return ingest(dataset, *records, **options)

    return run


def collect(batches):
    tables = {"items": [], "interactions": [], "rejects": []}
    for table, rows in batches:
        tables[table].extend(rows)
    return tables


def test_every_bad_row_becomes_exactly_the_expected_reject(run_ingest, tmp_path):
    tables = collect(run_ingest(max_field_chars=100))
    catalog, events = str(tmp_path / "catalog.csv"), str(tmp_path / "events.csv")
    got = [(r["table"], r["source"], r["line"], r["field"], r["reason"]) for r in tables["rejects"]]
    assert got == [
        ("items", catalog, 3, "item_id", "missing_id"),
        ("items", catalog, 4, "item_id", "missing_id"),
        ("items", catalog, 6, "item_id", "duplicate_item"),
        ("items", catalog, 7, "item_id", "conflicting_duplicate"),
        ("items", catalog, 8, "title", "field_too_long"),
        ("items", catalog, 9, None, "malformed_row"),
        ("items", catalog, 10, None, "invalid_utf8"),
        ("items", catalog, 12, "attributes.genre", "field_too_long"),
        ("interactions", events, 4, "user_id", "missing_id"),
        ("interactions", events, 5, "item_id", "missing_id"),
        ("interactions", events, 6, "timestamp", "bad_timestamp"),
        ("interactions", events, 7, "timestamp", "bad_timestamp"),
        ("interactions", events, 8, "timestamp", "bad_timestamp"),
        ("interactions", events, 9, "rating", "bad_rating"),
        ("interactions", events, 10, "rating", "bad_rating"),
        ("interactions", events, 11, "item_id", "unknown_item"),
        ("interactions", events, 12, None, "duplicate_interaction"),
        ("interactions", events, 13, "item_id", "unknown_item"),
        ("interactions", events, 15, None, "malformed_row"),
        ("interactions", events, 16, None, "invalid_utf8"),
    ]
    assert {r["reason"] for r in tables["rejects"]} <= set(REASONS)
    by_line = {(r["table"], r["line"]): r for r in tables["rejects"]}
    assert by_line["items", 6]["detail"] == (
        "item_id 'B' already accepted from line 5 with identical metadata"
    )
    assert by_line["items", 7]["detail"] == (
        "item_id 'B' already accepted from line 5 with different metadata"
    )
    assert by_line["items", 7]["raw"] == "B,Beta 2,comedy,"
    assert by_line["items", 8]["detail"] == "title has 101 characters (limit 100)"
    assert by_line["items", 9]["detail"] == "expected 4 cells, got 3"
    assert by_line["items", 10]["raw"] == "E,Caf\\xe9,drama,"
    assert by_line["interactions", 11]["detail"] == "item_id 'Z' is not in the accepted catalog"


def test_good_rows_survive_with_canonical_values(run_ingest, tmp_path):
    now = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    tables = collect(run_ingest(max_field_chars=100, now=now))
    catalog, events = str(tmp_path / "catalog.csv"), str(tmp_path / "events.csv")
    items = {row["item_id"]: row for row in tables["items"]}
    assert list(items) == ["A", "B", "F", "H"]
    assert items["A"] == {
        "item_id": "A",
        "content_hash": items["A"]["content_hash"],
        "title": "Alpha",
        "brand": None,
        "categories": None,
        "description": None,
        "features": None,
        "price": 1.5,
        "release_year": None,
        "attributes": {"genre": "drama"},
        "source": catalog,
        "line": 2,
        "updated_at": now,
    }
    assert items["A"]["content_hash"] == content_hash(items["A"])
    assert (items["F"]["title"], items["F"]["attributes"]) == ("Foxtrot", None)
    assert (items["H"]["title"], items["H"]["line"]) == ("Ho\ntel", 13)
    assert (items["H"]["price"], items["H"]["attributes"]) == (
        None,
        {"genre": "noir", "price": "n/a"},
    )
    assert tables["interactions"] == [
        {
            "user_id": "u1",
            "item_id": "A",
            "timestamp": datetime(1970, 1, 1, 0, 1, 40, tzinfo=UTC),
            "rating": 5.0,
            "source": events,
            "line": 2,
        },
        {
            "user_id": "u1",
            "item_id": "B",
            "timestamp": datetime(2016, 9, 1, 10, 0, tzinfo=UTC),
            "rating": 4.5,
            "source": events,
            "line": 3,
        },
        {
            "user_id": "u2",
            "item_id": "A",
            "timestamp": datetime(1970, 1, 1, 0, 3, 20, tzinfo=UTC),
            "rating": None,
            "source": events,
            "line": 14,
        },
    ]


def test_batches_fit_the_schemas_and_put_the_catalog_first(run_ingest):
    batches = list(run_ingest(max_field_chars=100, batch_size=3))
    assert all(1 <= len(rows) <= 3 for _, rows in batches)
    # which input each batch comes from: no catalog row may follow an interaction row
    phases = [rows[0]["table"] if t == "rejects" else t for t, rows in batches]
    assert all(
        {row["table"] for row in rows} == {phases[i]}
        for i, (t, rows) in enumerate(batches)
        if t == "rejects"
    )
    assert phases == sorted(phases, key=["items", "interactions"].index)
    assert phases.count("items") == 2 + 3  # 4 items in 2 batches, 8 item rejects in 3
    for table, rows in batches:
        assert all(list(row) == TABLES[table].names for row in rows)
        pa.Table.from_pylist(rows, schema=TABLES[table])  # raises if a value does not fit


def test_every_input_row_is_accounted_for(run_ingest):
    tables = collect(run_ingest(max_field_chars=100))
    item_rows = 12  # data records in CATALOG (H spans two lines)
    event_rows = 15
    assert len(tables["items"]) + sum(r["table"] == "items" for r in tables["rejects"]) == item_rows
    interactions = len(tables["interactions"])
    assert interactions + sum(r["table"] == "interactions" for r in tables["rejects"]) == event_rows


def test_as_of_a_time_holds_back_later_items_and_interactions_and_rejects_the_same(run_ingest):
    full = collect(run_ingest(max_field_chars=100))
    held = Held()
    as_of = datetime.fromtimestamp(150, UTC)  # after line 2's 100, before line 14's 200
    replay = collect(run_ingest(max_field_chars=100, as_of=as_of, held=held))
    # A (first interaction at 100) exists; B (2016) does not yet; F and H, never interacted
    # with, neither. Only line 2 is read: every other valid row is later.
    assert [r["item_id"] for r in replay["items"]] == ["A"]
    assert [(r["user_id"], r["item_id"], r["line"]) for r in replay["interactions"]] == [
        ("u1", "A", 2)
    ]
    assert (held.items, held.interactions) == (3, 4)  # B F H; lines 3 14 11 13
    # Rows after T are held back, not rejected, even those a full read rejects as
    # unknown_item (lines 11 and 13); every other reject is the same.
    later_unknown = {("interactions", 11), ("interactions", 13)}
    full_rejects = {(r["table"], r["line"]) for r in full["rejects"]}
    assert {(r["table"], r["line"]) for r in replay["rejects"]} == full_rejects - later_unknown
    # Every row is accounted for: accepted, rejected or held back.
    assert (
        len(replay["items"]) + held.items + sum(r["table"] == "items" for r in replay["rejects"])
        == 12
    )
    assert (
        len(replay["interactions"])
        + held.interactions
        + sum(r["table"] == "interactions" for r in replay["rejects"])
        == 15
    )


def test_as_of_takes_a_date_a_naive_time_or_an_offset_as_utc():
    assert DatasetConfig(as_of="1998-03-01").as_of == datetime(1998, 3, 1, tzinfo=UTC)
    assert DatasetConfig(as_of="1998-03-01T10:00").as_of == datetime(1998, 3, 1, 10, tzinfo=UTC)
    assert DatasetConfig(as_of="1998-03-01T12:00+02:00").as_of == datetime(
        1998, 3, 1, 10, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="as_of"):
        DatasetConfig(as_of="last tuesday")


def test_any_records_can_be_fed_and_the_catalog_is_read_first():
    read = []

    def records(source, rows):
        for line, fields in enumerate(rows, 1):
            read.append(source)
            yield RawRecord(source, line, fields, None, str(fields))

    items = records("catalog", [{"item_id": "A", "title": "Alpha"}])
    events = records("events", [{"user_id": "u1", "item_id": "A", "timestamp": "100"}])
    dataset = FilesDataset(FilesConfig(catalog="unread.csv", interactions="unread.csv"))
    tables = collect(ingest(dataset, items, events, max_field_chars=100))
    assert read == ["catalog", "events"]
    assert [(r["item_id"], r["title"], r["source"]) for r in tables["items"]] == [
        ("A", "Alpha", "catalog")
    ]
    assert [(r["user_id"], r["item_id"]) for r in tables["interactions"]] == [("u1", "A")]
    assert tables["rejects"] == []


ITEM = {
    "item_id": "42",
    "title": "Toy Story",
    "brand": None,
    "categories": ["Animation", "Comedy"],
    "description": None,
    "features": None,
    "price": None,
    "release_year": 1995,
    "attributes": {"a": "1", "b": "2"},
    "source": "x.csv",
    "line": 7,
}


def test_content_hash_is_stable_and_covers_metadata_only():
    digest = content_hash(ITEM)
    canonical = (
        '{"attributes":{"a":"1","b":"2"},"brand":null,"categories":["Animation","Comedy"],'
        '"description":null,"features":null,"price":null,"release_year":1995,"title":"Toy Story"}'
    )
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert digest == "d7dec49c8689f0190decd377e1f66faf"
    assert content_hash({**ITEM, "item_id": "43", "source": "y.csv", "line": 9}) == digest
    assert content_hash({**ITEM, "attributes": {"b": "2", "a": "1"}}) == digest
    assert content_hash({**ITEM, "title": "Toy Story 2"}) != digest
    assert content_hash({**ITEM, "categories": ["Comedy", "Animation"]}) != digest
