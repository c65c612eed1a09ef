"""Ingest a dataset's files into row lists, as the ingest task does, for the dataset tests."""

from pathlib import Path

from genair_core.config import DatasetConfig
from genair_core.data.ingest import ingest
from tasks.datasets import make_dataset, open_dataset


def ingest_files(config: DatasetConfig, cache_dir: Path) -> dict[str, list[dict]]:
    """{"items" | "interactions" | "rejects": rows} of the dataset `config` names."""
    files = open_dataset(config, cache_dir)
    batches = ingest(
        make_dataset(config),
        files.item_records(),
        files.interaction_records(),
        max_field_chars=1000,
    )
    tables: dict[str, list[dict]] = {"items": [], "interactions": [], "rejects": []}
    for table, rows in batches:
        tables[table].extend(rows)
    return tables
