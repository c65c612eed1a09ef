"""What the retrieval stage reads: its tables as Arrow tables and numpy arrays, the fields
genair_core.retrieval.RetrievalTables names. The calibrated space is optional: before the
calibrate stage has written calibrated_embeddings, the stage compares the other spaces."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genair_core.tables import to_matrix
from storage.schemas import TABLES
from storage.store import Store

SEQUENCE_COLUMNS = ["user_idx", "position", "item_idx", "split"]
REQUIRED = ["sequences", "item_index", "item_embeddings", "cooccurrence"]
CALIBRATED = "calibrated_embeddings"


def retrieval_input_tables(store: Store) -> list[str]:
    """The tables the stage reads here: REQUIRED, plus calibrated_embeddings once it exists."""
    optional = [CALIBRATED] if CALIBRATED in TABLES and store.exists(CALIBRATED) else []
    return REQUIRED + optional


@dataclass
class LoadedRetrievalTables:
    n_items: int
    sequences: pa.Table
    item_ids: list[str]
    pairs: pa.Table
    vectors: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    calibrated_version: str | None = None


def read_retrieval_tables(store: Store, tables: list[str]) -> LoadedRetrievalTables:
    """The sequences, item index, co-occurrence counts and the vectors of each space in `tables`
    (item_embeddings → "raw", calibrated_embeddings → "calibrated")."""
    index = store.read_table("item_index", columns=["item_idx", "item_id"]).sort_by("item_idx")
    vectors: dict[str, tuple[list[str], np.ndarray]] = {}
    raw = store.read_table("item_embeddings", columns=["item_id", "vector"])
    vectors["raw"] = (raw["item_id"].to_pylist(), to_matrix(raw["vector"]))
    version = None
    if CALIBRATED in tables:
        calibrated = store.read_table(CALIBRATED, columns=["item_id", "vector", "version"])
        vectors["calibrated"] = (calibrated["item_id"].to_pylist(), to_matrix(calibrated["vector"]))
        versions = sorted(pc.unique(calibrated["version"]).to_pylist())
        version = ", ".join(versions) if versions else None
    return LoadedRetrievalTables(
        n_items=index.num_rows,
        sequences=store.read_table("sequences", columns=SEQUENCE_COLUMNS),
        item_ids=index["item_id"].to_pylist(),
        pairs=store.read_table("cooccurrence", columns=["i", "j", "count"]),
        vectors=vectors,
        calibrated_version=version,
    )
