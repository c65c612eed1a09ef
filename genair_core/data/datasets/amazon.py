"""Amazon product data, 2018 release (McAuley et al.), as the paper uses it.

Catalog: `meta_<Category>.json[.gz]`, one JSON object per line (asin, title, brand, category,
description, feature, price, main_cat, rank, details, date, tech1, ...). Image URLs and the
also-bought/also-viewed/similar/fit fields are dropped as in the paper; every other field the
canonical item does not name is kept as a string attribute.

Interactions, one of: the ratings-only `<Category>.csv` (item,user,rating,timestamp; no header)
or the review lines `<Category>[_5].json[.gz]` (reviewerID, asin, overall, unixReviewTime, with
reviewTime "09 1, 2016" as the fallback date).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from genair_core.config import AmazonConfig, DatasetConfig
from genair_core.data.datasets.base import (
    RowError,
    join_paragraphs,
    parse_price,
    parse_rating,
    parse_timestamp,
    to_id,
    to_str_list,
    to_text,
    typed_or_keep,
)

DROPPED_FIELDS = frozenset(
    {"imageURL", "imageURLHighRes", "also_buy", "also_view", "similar_item", "fit"}
)
_MAPPED_FIELDS = frozenset(
    {"asin", "title", "brand", "category", "description", "feature", "price"}
)
_REVIEW_TIME_FORMAT = "%m %d, %Y"


class AmazonReviews:
    """One Amazon category: its metadata lines, plus its ratings rows (the reader names the
    headerless columns item, user, rating, timestamp) or its review lines."""

    name = "amazon-reviews"

    def __init__(self, config: AmazonConfig) -> None:
        self.config = config
        self.item_type = config.item_type

    @classmethod
    def from_config(cls, config: DatasetConfig) -> AmazonReviews:
        if config.amazon is None:
            raise ValueError("dataset.name is 'amazon-reviews' but [dataset.amazon] is missing")
        return cls(config.amazon)

    def map_item(self, fields: Mapping[str, object]) -> dict[str, object]:
        attributes: dict[str, str] = {}
        for key, value in fields.items():
            if key in _MAPPED_FIELDS or key in DROPPED_FIELDS:
                continue
            text = to_text(value)
            if text is not None and text.strip():
                attributes[key] = text
        return {
            "item_id": to_id(fields.get("asin")),
            "title": to_text(fields.get("title")),
            "brand": to_text(fields.get("brand")),
            "categories": to_str_list(fields.get("category")),
            "description": join_paragraphs(fields.get("description")),
            "features": to_str_list(fields.get("feature")),
            "price": typed_or_keep("price", fields.get("price"), parse_price, attributes),
            "release_year": None,
            "attributes": attributes,
        }

    def map_interaction(self, fields: Mapping[str, object]) -> dict[str, object]:
        if self.config.ratings is not None:
            return {
                "user_id": to_id(fields.get("user")),
                "item_id": to_id(fields.get("item")),
                "timestamp": parse_timestamp(fields.get("timestamp"), "unix_s"),
                "rating": parse_rating(fields.get("rating")),
            }
        return {
            "user_id": to_id(fields.get("reviewerID")),
            "item_id": to_id(fields.get("asin")),
            "timestamp": _review_time(fields),
            "rating": parse_rating(fields.get("overall")),
        }


def _review_time(fields: Mapping[str, object]) -> datetime:
    unix = fields.get("unixReviewTime")
    if unix is not None and unix != "":
        return parse_timestamp(unix, "unix_s")
    text = fields.get("reviewTime")
    if not isinstance(text, str) or not text.strip():
        raise RowError("bad_timestamp", "timestamp", "review has no unixReviewTime or reviewTime")
    try:
        return datetime.strptime(text.strip(), _REVIEW_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise RowError(
            "bad_timestamp", "timestamp", f"reviewTime {text!r} is not like '09 1, 2016'"
        ) from None
