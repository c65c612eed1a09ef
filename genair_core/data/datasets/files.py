"""A warehouse export: a catalog file and an interaction log, each Parquet or CSV/TSV.

Which column holds which canonical field comes from [dataset.files.item_columns] and
[dataset.files.interaction_columns]. (The reader, storage.datasets, checks that every mapped
column exists in its file, because a misnamed column would otherwise silently empty a field for
every row.) Catalog columns nobody mapped become string attributes (or are ignored with
unmapped_columns = "ignore").
"""

from __future__ import annotations

from collections.abc import Mapping

from genair_core.config import DatasetConfig, FilesConfig
from genair_core.data.datasets.base import (
    join_paragraphs,
    parse_price,
    parse_rating,
    parse_timestamp,
    parse_year,
    to_id,
    to_str_list,
    to_text,
    typed_or_keep,
)
from genair_core.tables import CATALOG_FIELDS, INTERACTION_FIELDS

_ITEM_COLUMN_FIELDS = tuple(name for name in CATALOG_FIELDS if name != "attributes")
_INTERACTION_COLUMN_FIELDS = INTERACTION_FIELDS


class FilesDataset:
    """Catalog and interaction rows mapped by the column names in FilesConfig."""

    name = "files"

    @classmethod
    def from_config(cls, config: DatasetConfig) -> FilesDataset:
        if config.files is None:
            raise ValueError("dataset.name is 'files' but [dataset.files] is missing")
        return cls(config.files)

    def __init__(self, config: FilesConfig) -> None:
        self.config = config
        self.item_type = config.item_type
        columns = config.item_columns
        # canonical field -> source column, for the fields this export has
        self._item_map = {
            field: getattr(columns, field)
            for field in _ITEM_COLUMN_FIELDS
            if getattr(columns, field) is not None
        }
        inter = config.interaction_columns
        self._interaction_map = {
            field: getattr(inter, field)
            for field in _INTERACTION_COLUMN_FIELDS
            if getattr(inter, field) is not None
        }
        self._mapped_item_columns = frozenset(self._item_map.values())

    def map_item(self, fields: Mapping[str, object]) -> dict[str, object]:
        source = self._item_map
        separator = self.config.item_columns.list_separator
        attributes: dict[str, str] = {}
        if self.config.unmapped_columns == "attributes":
            for column, value in fields.items():
                if column in self._mapped_item_columns:
                    continue
                text = to_text(value)
                if text is not None and text.strip():
                    attributes[column] = text

        def get(field: str) -> object:
            return fields.get(source[field]) if field in source else None

        return {
            "item_id": to_id(get("item_id")),
            "title": to_text(get("title")),
            "brand": to_text(get("brand")),
            "categories": to_str_list(get("categories"), separator),
            "description": join_paragraphs(get("description")),
            "features": to_str_list(get("features"), separator),
            "price": typed_or_keep("price", get("price"), parse_price, attributes),
            "release_year": typed_or_keep(
                "release_year", get("release_year"), parse_year, attributes
            ),
            "attributes": attributes,
        }

    def map_interaction(self, fields: Mapping[str, object]) -> dict[str, object]:
        source = self._interaction_map
        rating_column = source.get("rating")
        return {
            "user_id": to_id(fields.get(source["user_id"])),
            "item_id": to_id(fields.get(source["item_id"])),
            "timestamp": parse_timestamp(
                fields.get(source["timestamp"]),
                self.config.interaction_columns.timestamp_format,
            ),
            "rating": None if rating_column is None else parse_rating(fields.get(rating_column)),
        }
