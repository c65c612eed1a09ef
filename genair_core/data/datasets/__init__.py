"""The datasets genair can map, behind one interface (`Dataset`).

    dataset = MovieLens100K.from_config(config)   # no IO: a mapping of raw rows to canonical rows
    batches = ingest(dataset, item_records, interaction_records, max_field_chars=10_000)

Which class a `dataset.name` selects, and which files storage opens for it, is one table:
tasks.datasets.DATASETS. The records come from there in a run, or from any iterable of
genair_core.tables.RawRecord in a notebook.
"""

from __future__ import annotations

from genair_core.data.datasets.amazon import AmazonReviews
from genair_core.data.datasets.base import Dataset, RowError
from genair_core.data.datasets.files import FilesDataset
from genair_core.data.datasets.movielens import MovieLens1M, MovieLens100K

__all__ = [
    "AmazonReviews",
    "Dataset",
    "FilesDataset",
    "MovieLens1M",
    "MovieLens100K",
    "RowError",
]
