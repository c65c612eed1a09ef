"""What the retrieval stage reads: its tables as Arrow tables and numpy arrays, the fields
genair_core.item_space.retrieval.RetrievalTables names. The calibrated space is optional: before the
calibrate stage has written calibrated_embeddings, the stage compares the other spaces."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genair_core.tables import VECTOR_SPACES, to_matrix
from storage.schemas import TABLES
from storage.store import Store

SEQUENCE_COLUMNS = ["user_idx", "position", "item_idx", "split"]
RAW, CALIBRATED = VECTOR_SPACES["raw"], VECTOR_SPACES["calibrated"]
REQUIRED = ["sequences", "item_index", RAW, "cooccurrence"]


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
    """The sequences, item index, co-occurrence counts and the vectors of each space whose table
    (genair_core.tables.VECTOR_SPACES) is in `tables`."""
    index = store.read_table("item_index", columns=["item_idx", "item_id"]).sort_by("item_idx")
    vectors: dict[str, tuple[list[str], np.ndarray]] = {}
    version = None
    for space, name in VECTOR_SPACES.items():
        if name not in tables:
            continue
        columns = ["item_id", "vector"] + (["version"] if name == CALIBRATED else [])
        table = store.read_table(name, columns=columns)
        vectors[space] = (table["item_id"].to_pylist(), to_matrix(table["vector"]))
        if name == CALIBRATED:  # which adapter made the vectors
            versions = sorted(pc.unique(table["version"]).to_pylist())
            version = ", ".join(versions) if versions else None
    return LoadedRetrievalTables(
        n_items=index.num_rows,
        sequences=store.read_table("sequences", columns=SEQUENCE_COLUMNS),
        item_ids=index["item_id"].to_pylist(),
        pairs=store.read_table("cooccurrence", columns=["i", "j", "count"]),
        vectors=vectors,
        calibrated_version=version,
    )
