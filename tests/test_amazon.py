"""The Amazon 2018 loader on hand-made files in the McAuley formats."""

import gzip
import json
from datetime import UTC, datetime

import pytest
from ingest_files import ingest_files

from genair_core.config import AmazonConfig, DatasetConfig
from genair_core.data.datasets import AmazonReviews
from storage.sources import SourceFormatError
from tasks.datasets import make_dataset, open_dataset

FULL_ITEM = {
    "asin": "B001",
    "title": "Rose Cream",
    "brand": "Acme",
    "category": ["Beauty", "Skin Care"],
    "description": ["Soft.", "Smells nice."],
    "feature": ["50 ml", "vegan"],
    "price": "$12.99",
    "main_cat": "All Beauty",
    "rank": ["1,234 in Beauty (", "#5 in Face"],
    "details": {"Item Weight:": "2 oz", "ASIN:": "B001"},
    "date": "January 1, 2016",
    "tech1": "",
    "imageURL": ["http://img/1.jpg"],
    "imageURLHighRes": ["http://img/1-hi.jpg"],
    "also_buy": ["B002"],
    "also_view": ["B003"],
    "similar_item": "<table></table>",
    "fit": "",
}


def write_meta(path):
    lines = [
        json.dumps(FULL_ITEM),  # 1
        json.dumps(
            {"asin": "B002", "title": "Big Kit", "price": "$1,299.00", "description": "One"}
        ),
        json.dumps({"asin": "B003", "title": "Range", "price": "$10.00 - $20.00", "category": []}),
        '{"asin": "B004", "title": ',  # 4 malformed_json
        json.dumps({"asin": "B001", "title": "Rose Cream v2"}),  # 5 conflicting_duplicate
        json.dumps({"title": "no asin"}),  # 6 missing_id
    ]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture
def meta(tmp_path):
    path = tmp_path / "meta_Beauty.json.gz"
    write_meta(path)
    return path


def amazon(**files) -> DatasetConfig:
    return DatasetConfig(name="amazon-reviews", amazon=AmazonConfig(**files))


def test_meta_fields_are_mapped_and_image_and_related_fields_dropped(meta, tmp_path):
    ratings = tmp_path / "Beauty.csv"
    ratings.write_text("")
    config = amazon(meta=meta, ratings=ratings, item_type="beauty product")
    dataset = make_dataset(config)
    assert (dataset.name, dataset.item_type) == ("amazon-reviews", "beauty product")
    assert open_dataset(config, tmp_path).input_files == (meta, ratings)
    assert dataset.map_item(FULL_ITEM) == {
        "item_id": "B001",
        "title": "Rose Cream",
        "brand": "Acme",
        "categories": ["Beauty", "Skin Care"],
        "description": "Soft. Smells nice.",
        "features": ["50 ml", "vegan"],
        "price": 12.99,
        "release_year": None,
        "attributes": {
            "main_cat": "All Beauty",
            "rank": "1,234 in Beauty (, #5 in Face",
            "details": '{"ASIN:": "B001", "Item Weight:": "2 oz"}',
            "date": "January 1, 2016",
        },
    }


@pytest.mark.parametrize(
    ("price", "parsed", "kept"),
    [
        ("$12.99", 12.99, None),
        ("$1,299.00", 1299.0, None),
        ("7", 7.0, None),
        ("$10.00 - $20.00", None, "$10.00 - $20.00"),
        (".a-box-inner{background-color:#fff}", None, ".a-box-inner{background-color:#fff}"),
        ("", None, None),
    ],
)
def test_price_parsing_keeps_what_it_cannot_read(meta, tmp_path, price, parsed, kept):
    dataset = AmazonReviews(AmazonConfig(meta=meta, ratings=tmp_path / "Beauty.csv"))
    item = dataset.map_item({"asin": "B1", "price": price})
    assert item["price"] == parsed
    assert item["attributes"].get("price") == kept


def test_meta_and_ratings_csv_through_ingest(meta, tmp_path):
    ratings = tmp_path / "Beauty.csv"
    ratings.write_text(
        "B001,u1,5.0,1400000000\n"
        "B002,u2,4.0,1400000100\n"
        "B999,u3,3.0,1400000200\n"
        "B001,u1,5.0,1400000000\n"
    )
    tables = ingest_files(amazon(meta=meta, ratings=ratings), tmp_path / "cache")
    items = {row["item_id"]: row for row in tables["items"]}
    assert list(items) == ["B001", "B002", "B003"]
    assert items["B001"]["title"] == "Rose Cream"  # the first accepted row wins
    assert (items["B002"]["price"], items["B002"]["description"]) == (1299.0, "One")
    assert (items["B003"]["categories"], items["B003"]["attributes"]) == (
        None,
        {"price": "$10.00 - $20.00"},
    )
    assert [(r["line"], r["field"], r["reason"]) for r in tables["rejects"]] == [
        (4, None, "malformed_json"),
        (5, "item_id", "conflicting_duplicate"),
        (6, "item_id", "missing_id"),
        (3, "item_id", "unknown_item"),
        (4, None, "duplicate_interaction"),
    ]
    assert tables["rejects"][0]["source"] == str(meta)
    assert tables["rejects"][3]["source"] == str(ratings)
    assert [
        (r["user_id"], r["item_id"], r["timestamp"], r["rating"]) for r in tables["interactions"]
    ] == [
        ("u1", "B001", datetime(2014, 5, 13, 16, 53, 20, tzinfo=UTC), 5.0),
        ("u2", "B002", datetime(2014, 5, 13, 16, 55, tzinfo=UTC), 4.0),
    ]


def test_review_lines_with_unix_time_and_review_time_fallback(meta, tmp_path):
    reviews = tmp_path / "Beauty_5.json"
    lines = [
        {
            "overall": 5.0,
            "verified": True,
            "reviewTime": "09 1, 2016",
            "reviewerID": "R1",
            "asin": "B001",
            "reviewText": "great",
            "unixReviewTime": 1472688000,
        },
        {"overall": 4.0, "reviewTime": "09 2, 2016", "reviewerID": "R2", "asin": "B002"},
        {"overall": 3.0, "reviewerID": "R3", "asin": "B002"},
        {"overall": "five", "reviewerID": "R4", "asin": "B002", "unixReviewTime": 1472688000},
        {"overall": 2.0, "reviewTime": "2016-09-03", "reviewerID": "R5", "asin": "B002"},
    ]
    reviews.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tables = ingest_files(amazon(meta=meta, reviews=reviews), tmp_path)
    assert [
        (r["user_id"], r["item_id"], r["timestamp"], r["rating"]) for r in tables["interactions"]
    ] == [
        ("R1", "B001", datetime(2016, 9, 1, tzinfo=UTC), 5.0),
        ("R2", "B002", datetime(2016, 9, 2, tzinfo=UTC), 4.0),
    ]
    interaction_rejects = [r for r in tables["rejects"] if r["table"] == "interactions"]
    assert [(r["line"], r["field"], r["reason"]) for r in interaction_rejects] == [
        (3, "timestamp", "bad_timestamp"),
        (4, "rating", "bad_rating"),
        (5, "timestamp", "bad_timestamp"),
    ]
    assert interaction_rejects[0]["detail"] == "review has no unixReviewTime or reviewTime"


def test_a_meta_file_that_is_not_json_lines_names_the_file(tmp_path):
    meta = tmp_path / "meta_Beauty.json"
    meta.write_text('[{"asin": "B001"}]\n')
    config = amazon(meta=meta, ratings=tmp_path / "Beauty.csv")
    with pytest.raises(SourceFormatError, match=r"meta_Beauty\.json: not a JSON-lines file"):
        ingest_files(config, tmp_path)


def test_swapped_meta_and_reviews_files_stop_the_run_naming_the_file(meta, tmp_path):
    reviews = tmp_path / "Beauty_5.json"
    reviews.write_text(json.dumps({"reviewerID": "R1", "asin": "B001", "overall": 5.0}) + "\n")
    # Review lines carry an asin too, so the catalog pass accepts them; the reviews pass then
    # finds a meta file where review lines should be.
    swapped = amazon(meta=reviews, reviews=meta)
    with pytest.raises(
        SourceFormatError, match=r"meta_Beauty\.json\.gz: first object \(line 1\) lacks reviewerID"
    ):
        ingest_files(swapped, tmp_path)
    no_asin = tmp_path / "meta_Other.json"
    no_asin.write_text(json.dumps({"title": "x"}) + "\n")
    with pytest.raises(SourceFormatError, match=r"meta_Other\.json: .* lacks asin"):
        ingest_files(amazon(meta=no_asin, reviews=reviews), tmp_path)


def test_without_a_meta_file_the_dataset_cannot_be_opened(tmp_path):
    with pytest.raises(ValueError, match=r"dataset\.amazon\.meta is not set"):
        open_dataset(amazon(ratings=tmp_path / "Beauty.csv"), tmp_path)
