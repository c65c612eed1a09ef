"""Which tables genair writes, under which schema. The schemas themselves are
genair_core.tables, the one place a table's columns are declared."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from genair_core.tables import (
    ARCHETYPE_FAILURES,
    COOCCURRENCE,
    EVAL_NEGATIVES,
    EVAL_RANKS,
    INTERACTIONS,
    ITEM_INDEX,
    ITEMS,
    METRICS,
    REJECTS,
    RETRIEVAL_METRICS,
    SEQUENCES,
    TRAINING_LOG,
    USER_INDEX,
    archetypes_schema,
    calibrated_embeddings_schema,
    item_embeddings_schema,
)

Sized = Callable[[int], pa.Schema]

TABLES: dict[str, pa.Schema | Sized] = {
    "items": ITEMS,
    "interactions": INTERACTIONS,
    "rejects": REJECTS,
    "item_index": ITEM_INDEX,
    "user_index": USER_INDEX,
    "sequences": SEQUENCES,
    "cooccurrence": COOCCURRENCE,
    "item_embeddings": item_embeddings_schema,
    "calibrated_embeddings": calibrated_embeddings_schema,
    "eval_negatives": EVAL_NEGATIVES,
    "retrieval_metrics": RETRIEVAL_METRICS,
}

# Written one part file per batch under datasets/<name>/<model partition>/.
PART_DATASETS: dict[str, pa.Schema | Sized] = {
    "archetypes": archetypes_schema,
    "archetype_failures": ARCHETYPE_FAILURES,
    # partition: one run (backbone-variant-seed), key "final"; a rerun replaces its part
    "metrics": METRICS,
    "eval_ranks": EVAL_RANKS,
    "training_log": TRAINING_LOG,
}

VECTOR_COLUMN = {
    "item_embeddings": "vector",
    "calibrated_embeddings": "vector",
    "archetypes": "input_emb",
}


def schema_for(registry: dict[str, pa.Schema | Sized], name: str, actual: pa.Schema) -> pa.Schema:
    """The declared schema of `name`; a sized one takes its size from `actual`'s vector column."""
    declared = registry[name]
    if isinstance(declared, pa.Schema):
        return declared
    column = VECTOR_COLUMN[name]
    if column not in actual.names or not pa.types.is_fixed_size_list(actual.field(column).type):
        raise ValueError(f"table {name!r} needs a fixed-size float32 list column {column!r}")
    return declared(actual.field(column).type.list_size)
