"""The datasets genair can map, behind one interface (`Dataset`), chosen by dataset.name.

    dataset = make_dataset(config)           # no IO: a mapping of raw rows to canonical rows
    batches = ingest(dataset, item_records, interaction_records, max_field_chars=10_000)

The records come from storage.datasets.open_dataset in a run, or from any iterable of
genair_core.tables.RawRecord in a notebook.
"""

from __future__ import annotations

from collections.abc import Callable

from genair_core.config import DatasetConfig
from genair_core.datasets.amazon import AmazonReviews
from genair_core.datasets.base import Dataset, RowError
from genair_core.datasets.files import FilesDataset
from genair_core.datasets.movielens import MovieLens1M, MovieLens100K

__all__ = [
    "DATASETS",
    "AmazonReviews",
    "Dataset",
    "FilesDataset",
    "MovieLens1M",
    "MovieLens100K",
    "RowError",
    "UnknownDatasetError",
    "make_dataset",
]


class UnknownDatasetError(ValueError):
    """dataset.name is not one genair knows; the message lists the known names."""


def _movielens(config: DatasetConfig) -> Dataset:
    return MovieLens100K()


def _movielens_1m(config: DatasetConfig) -> Dataset:
    return MovieLens1M()


def _amazon(config: DatasetConfig) -> Dataset:
    if config.amazon is None:
        raise ValueError("dataset.name is 'amazon-reviews' but [dataset.amazon] is missing")
    return AmazonReviews(config.amazon)


def _files(config: DatasetConfig) -> Dataset:
    if config.files is None:
        raise ValueError("dataset.name is 'files' but [dataset.files] is missing")
    return FilesDataset(config.files)


DATASETS: dict[str, Callable[[DatasetConfig], Dataset]] = {
    "movielens-100k": _movielens,
    "movielens-1m": _movielens_1m,
    "amazon-reviews": _amazon,
    "files": _files,
}


def make_dataset(config: DatasetConfig) -> Dataset:
    """The mapping of dataset `config.name`."""
    try:
        factory = DATASETS[config.name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset.name {config.name!r}; valid names: {', '.join(sorted(DATASETS))}"
        ) from None
    return factory(config)
