"""The `files` dataset: Parquet and CSV exports, column mapping, timestamps, attributes."""

from datetime import UTC, datetime
from typing import get_args

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_files import ingest_files

from genair_core.config import DatasetConfig, FilesConfig, InteractionColumns, ItemColumns
from genair_core.data.datasets import FilesDataset
from storage.sources import SourceFormatError
from tasks.datasets import DATASETS, make_dataset, open_dataset

MAPPED = ItemColumns(
    item_id="sku",
    title="name",
    brand="maker",
    categories="tags",
    description="blurb",
    features="bullets",
    price="cost",
    release_year="year",
)


def files_dataset(files: FilesConfig) -> DatasetConfig:
    return DatasetConfig(name="files", files=files)


def write_parquet_catalog(path):
    table = pa.table(
        {
            "sku": pa.array([101, 102], pa.int64()),
            "name": ["Lamp", "  Desk "],
            "maker": ["Lumo", None],
            "tags": [["home", "light"], []],
            "blurb": ["A lamp.", ""],
            "bullets": [["LED", " 5 W "], None],
            "cost": [19.5, None],
            "year": pa.array([2021, None], pa.int32()),
            "color": ["red", None],
            "stock": [3, 0],
            "updated": pa.array([datetime(2024, 1, 2, 3, 4, 5), None], pa.timestamp("s")),
        }
    )
    pq.write_table(table, path)


def test_parquet_catalog_with_mapped_columns_and_attributes(tmp_path):
    write_parquet_catalog(tmp_path / "catalog.parquet")
    pq.write_table(
        pa.table(
            {
                "customer": ["c1", "c2"],
                "sku": pa.array([101, 102], pa.int64()),
                "at": pa.array(
                    [datetime(2024, 5, 1, 12, 0, 0, 750000), datetime(2024, 5, 2)],
                    pa.timestamp("ms"),
                ),
            }
        ),
        tmp_path / "events.parquet",
    )
    config = DatasetConfig(
        name="files",
        files=FilesConfig(
            catalog=tmp_path / "catalog.parquet",
            interactions=tmp_path / "events.parquet",
            item_columns=MAPPED,
            interaction_columns=InteractionColumns(
                user_id="customer", item_id="sku", timestamp="at"
            ),
            item_type="home product",
        ),
    )
    dataset = make_dataset(config)
    assert isinstance(dataset, FilesDataset)
    assert (dataset.name, dataset.item_type) == ("files", "home product")
    files = open_dataset(config, tmp_path / "cache")
    assert files.input_files == (tmp_path / "catalog.parquet", tmp_path / "events.parquet")
    tables = ingest_files(config, tmp_path / "cache")
    assert tables["rejects"] == []
    lamp, desk = tables["items"]
    assert {k: v for k, v in lamp.items() if k not in ("content_hash", "source", "updated_at")} == {
        "item_id": "101",
        "title": "Lamp",
        "brand": "Lumo",
        "categories": ["home", "light"],
        "description": "A lamp.",
        "features": ["LED", "5 W"],
        "price": 19.5,
        "release_year": 2021,
        "attributes": {"color": "red", "stock": "3", "updated": "2024-01-02T03:04:05"},
        "line": 1,
    }
    assert (desk["title"], desk["brand"], desk["categories"], desk["description"]) == (
        "Desk",
        None,
        None,
        None,
    )
    assert (desk["features"], desk["price"], desk["release_year"]) == (None, None, None)
    assert desk["attributes"] == {"stock": "0"}
    assert [(r["user_id"], r["item_id"], r["timestamp"]) for r in tables["interactions"]] == [
        ("c1", "101", datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)),
        ("c2", "102", datetime(2024, 5, 2, tzinfo=UTC)),
    ]


def test_unmapped_columns_can_be_ignored(tmp_path):
    write_parquet_catalog(tmp_path / "catalog.parquet")
    config = FilesConfig(
        catalog=tmp_path / "catalog.parquet",
        interactions=tmp_path / "events.csv",
        item_columns=MAPPED,
        unmapped_columns="ignore",
    )
    records = open_dataset(files_dataset(config), tmp_path).item_records()
    items = [FilesDataset(config).map_item(r.fields) for r in records]
    assert [item["attributes"] for item in items] == [{}, {}]


def test_csv_catalog_with_list_separator_delimiter_and_unparseable_numbers(tmp_path):
    (tmp_path / "catalog.csv").write_text(
        "sku;name;tags;cost;year;origin\n"
        "A1;Chair;office| wood |;$45.00;2019;DK\n"
        "A2;Stool;;cheap;19xx;\n"
    )
    config = FilesConfig(
        catalog=tmp_path / "catalog.csv",
        interactions=tmp_path / "events.csv",
        item_columns=ItemColumns(
            item_id="sku", title="name", categories="tags", price="cost", release_year="year"
        ),
        csv_delimiter=";",
    )
    (tmp_path / "events.csv").write_text("user_id;item_id;timestamp\n")
    tables = ingest_files(files_dataset(config), tmp_path)
    assert tables["rejects"] == []
    chair, stool = tables["items"]
    assert (chair["categories"], chair["price"], chair["release_year"]) == (
        ["office", "wood"],
        45.0,
        2019,
    )
    assert chair["attributes"] == {"origin": "DK"}
    assert (stool["categories"], stool["price"], stool["release_year"]) == (None, None, None)
    assert stool["attributes"] == {"price": "cheap", "release_year": "19xx"}


def test_csv_timestamps_iso_and_unix(tmp_path):
    (tmp_path / "catalog.csv").write_text("item_id,title\nA,Alpha\n")
    (tmp_path / "events.csv").write_text(
        "user_id,item_id,timestamp\n"
        "u1,A,2024-05-01T12:00:00Z\n"  # 2
        "u2,A,2024-05-01T14:00:00+02:00\n"  # 3: the same instant as line 2
        "u3,A,2024-05-01 12:00:00\n"  # 4: naive -> UTC
        "u4,A,2024-05-01\n"  # 5: a date is its midnight
        "u5,A,1714564800\n"  # 6: Unix seconds
        "u6,A,1714564800.9\n"  # 7: fractions dropped
        "u7,A,1714564800000\n"  # 8: milliseconds are not seconds
        "u8,A,01/05/2024\n"  # 9: not ISO 8601
    )
    config = FilesConfig(catalog=tmp_path / "catalog.csv", interactions=tmp_path / "events.csv")
    tables = ingest_files(files_dataset(config), tmp_path)
    noon = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert [(r["user_id"], r["timestamp"]) for r in tables["interactions"]] == [
        ("u1", noon),
        ("u2", noon),
        ("u3", noon),
        ("u4", datetime(2024, 5, 1, tzinfo=UTC)),
        ("u5", noon),
        ("u6", noon),
    ]
    rejects = [(r["line"], r["field"], r["reason"]) for r in tables["rejects"]]
    assert rejects == [(8, "timestamp", "bad_timestamp"), (9, "timestamp", "bad_timestamp")]
    assert "set timestamp_format = 'unix_ms'" in tables["rejects"][0]["detail"]


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        ("unix_ms", "1714564800000", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("unix_s", "1714564800", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("iso8601", "2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("iso8601", "1714564800", None),
        ("unix_s", "2024-05-01", None),
    ],
)
def test_explicit_timestamp_formats(tmp_path, fmt, value, expected):
    (tmp_path / "catalog.csv").write_text("item_id,title\nA,Alpha\n")
    (tmp_path / "events.csv").write_text(f"user_id,item_id,timestamp\nu1,A,{value}\n")
    config = FilesConfig(
        catalog=tmp_path / "catalog.csv",
        interactions=tmp_path / "events.csv",
        interaction_columns=InteractionColumns(timestamp_format=fmt),
    )
    tables = ingest_files(files_dataset(config), tmp_path)
    if expected is None:
        assert [r["reason"] for r in tables["rejects"]] == ["bad_timestamp"]
    else:
        assert [r["timestamp"] for r in tables["interactions"]] == [expected]


def test_a_missing_mapped_column_names_file_column_and_config_key(tmp_path):
    (tmp_path / "catalog.csv").write_text("id,name\nA,Alpha\n")
    pq.write_table(pa.table({"user": ["u1"], "id": ["A"], "ts": [1]}), tmp_path / "ev.parquet")
    config = FilesConfig(
        catalog=tmp_path / "catalog.csv",
        interactions=tmp_path / "ev.parquet",
        item_columns=ItemColumns(item_id="id", title="title"),
        interaction_columns=InteractionColumns(user_id="user", item_id="id", timestamp="time"),
    )
    files = open_dataset(files_dataset(config), tmp_path)
    with pytest.raises(SourceFormatError) as err:
        list(files.item_records())
    assert str(err.value) == (
        f"{tmp_path / 'catalog.csv'}: missing column 'title' "
        "(configured as dataset.files.item_columns.title); columns are: id, name"
    )
    with pytest.raises(SourceFormatError) as err:
        list(files.interaction_records())
    assert str(err.value) == (
        f"{tmp_path / 'ev.parquet'}: missing column 'time' "
        "(configured as dataset.files.interaction_columns.timestamp); columns are: user, id, ts"
    )


def test_unknown_dataset_name_lists_the_valid_ones(tmp_path):
    config = DatasetConfig.model_construct(name="netflix")
    with pytest.raises(ValueError, match="valid names: amazon-reviews, files, movielens-100k"):
        make_dataset(config)
    with pytest.raises(ValueError, match="valid names: amazon-reviews, files, movielens-100k"):
        open_dataset(config, tmp_path)


def test_every_configurable_dataset_has_a_mapping_and_a_reader():
    names = set(get_args(DatasetConfig.model_fields["name"].annotation))
    assert set(DATASETS) == names
