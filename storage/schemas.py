"""Which tables genair writes, under which schema. The schemas themselves are
genair_core.tables, the one place a table's columns are declared; storage adds the lineage
column every stored row carries (`run_id`, the run that wrote it: `runs` in storage.runs)."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from genair_core.tables import (
    ARCHETYPE_FAILURES,
    COLD_START_TARGETS,
    COOCCURRENCE,
    EVAL_NEGATIVES,
    EVAL_RANKS,
    INTERACTIONS,
    ITEM_INDEX,
    ITEMS,
    METRICS,
    RECOMMENDATIONS,
    REJECTS,
    RETRIEVAL_METRICS,
    SEQUENCES,
    SIMILAR_ITEMS,
    TRAINING_LOG,
    USER_INDEX,
    VECTOR_SPACES,
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
    # partition: one scoring method (a run, or a baseline and its seed), key: the time T
    "cold_start_targets": COLD_START_TARGETS,
}

# Delta Lake tables under delta/<name>/ (storage.delta): the nightly exports, one version per
# run. Their schemas declare `run_id` themselves.
DELTA_TABLES: dict[str, pa.Schema] = {
    "recommendations": RECOMMENDATIONS,
    "similar_items": SIMILAR_ITEMS,
}

# The column that sizes a sized schema: each vector space's `vector`, and the archetypes' input_emb.
VECTOR_COLUMN = {**dict.fromkeys(VECTOR_SPACES.values(), "vector"), "archetypes": "input_emb"}


# The run that wrote a row (the Prefect flow run id inside a flow run; null for rows written
# outside any run, e.g. from a notebook). Stamped by the store at write time, left out of every
# table hash a step fingerprint reads (storage.store.TableInfo.sha256).
LINEAGE_COLUMN = "run_id"
LINEAGE_FIELD = pa.field(LINEAGE_COLUMN, pa.string())

# One row per run over a storage root (storage.runs): who ran what on which inputs, and how it
# ended. Not in TABLES: a run's row is rewritten as the run goes, one file per run.
RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("flow", pa.string(), nullable=False),
        pa.field("parameters", pa.string(), nullable=False),  # JSON
        pa.field("state", pa.string(), nullable=False),  # Running | Completed | Failed | Crashed
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ended_at", pa.timestamp("us", tz="UTC")),
        pa.field("error", pa.string()),  # the exception that ended a Failed or Crashed run
        pa.field("inputs", pa.string(), nullable=False),  # JSON {input: sha256} at the start
        pa.field("model_id", pa.string()),
        pa.field("prompt_version", pa.string()),
        pa.field("code_version", pa.string(), nullable=False),  # git commit, or package version
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("host", pa.string(), nullable=False),  # where the run's process ran ...
        pa.field("pid", pa.int64(), nullable=False),  # ... and its id, to tell a dead owner
    ]
)


def schema_for(registry: dict[str, pa.Schema | Sized], name: str, actual: pa.Schema) -> pa.Schema:
    """The stored schema of `name`: the declared one plus the lineage column; a sized one takes
    its size from `actual`'s vector column."""
    declared = registry[name]
    if not isinstance(declared, pa.Schema):
        column = VECTOR_COLUMN[name]
        if column not in actual.names or not pa.types.is_fixed_size_list(actual.field(column).type):
            raise ValueError(f"table {name!r} needs a fixed-size float32 list column {column!r}")
        declared = declared(actual.field(column).type.list_size)
    return with_lineage(declared)


def with_lineage(schema: pa.Schema) -> pa.Schema:
    """`schema` with the lineage column last (kept where a schema declares it itself)."""
    if LINEAGE_COLUMN in schema.names:
        return schema
    return schema.append(LINEAGE_FIELD)
