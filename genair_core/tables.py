"""What crosses between genair_core and storage: the raw input record, the Arrow schema of every
table genair writes, and how a vector column becomes a matrix and back. A table's schema lives
here and nowhere else; storage.schemas registers them under their table names.

Readers in storage yield `RawRecord`s that genair_core.data.datasets map to canonical rows; the
stages in genair_core build tables of these schemas, which storage writes as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

RAW_MAX_CHARS = 2000  # `RawRecord.raw` and `rejects.raw` keep at most this much of a row

# The item vector spaces and the table whose `vector` column holds each one, in the order the
# retrieval table and the report show them. An index, a retrieval space and the report's item map
# of a space all read its vectors from this table.
VECTOR_SPACES = {"raw": "item_embeddings", "calibrated": "calibrated_embeddings"}


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input row as read, before any mapping.

    `line` is the 1-based physical line of a text file (the first line of a multi-line CSV record)
    or the 1-based row of a Parquet file. `error` is None for a parsed row, else a reason code
    ("invalid_utf8", "malformed_json", "malformed_row") with `fields` None and `detail` saying what
    exactly was wrong.
    """

    source: str
    line: int
    fields: dict[str, object] | None
    error: str | None
    raw: str
    detail: str = ""


# The canonical values a dataset maps a catalog row / an interaction row to
# (genair_core.data.datasets); ingest adds content_hash and the provenance (source, line) to make
# ITEMS and INTERACTIONS rows.
CATALOG_FIELDS = (
    "item_id",
    "title",
    "brand",
    "categories",
    "description",
    "features",
    "price",
    "release_year",
    "attributes",
)
INTERACTION_FIELDS = ("user_id", "item_id", "timestamp", "rating")

# Catalog: one row per accepted item. Metadata fields are typed and nullable; fields a source has
# beyond these go to `attributes` (string -> string). `content_hash` is a stable hash of the
# metadata only (not of item_id or provenance), so later stages can tell a changed item.
ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("description", pa.string()),
        pa.field("features", pa.list_(pa.string())),
        pa.field("price", pa.float64()),
        pa.field("release_year", pa.int32()),
        pa.field("attributes", pa.map_(pa.string(), pa.string())),
        pa.field("source", pa.string(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),
        # When ingest first saw the item's current metadata: the ingest that added the item or
        # changed its content_hash; kept by later ingests while the content_hash stays the same.
        pa.field("updated_at", pa.timestamp("s", tz="UTC"), nullable=False),
    ]
)

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("s", tz="UTC"), nullable=False),
        pa.field("rating", pa.float32()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),
    ]
)

# Every input row that was not accepted, with why and where it came from. `line` is the 1-based
# physical line of a text file (the first line of a multi-line CSV record) or the 1-based row of a
# Parquet file; `raw` is the row as read, cut to RAW_MAX_CHARS.
REJECTS = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("raw", pa.string()),
    ]
)

# The integer indices every later stage shares. 0 is reserved for padding: indices start at 1.
ITEM_INDEX = pa.schema(
    [
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("n_interactions", pa.int32(), nullable=False),
    ]
)

USER_INDEX = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("n_interactions", pa.int32(), nullable=False),
    ]
)

# The k-core-filtered interactions in per-user chronological order with their leave-one-out split.
SEQUENCES = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("timestamp", pa.timestamp("s", tz="UTC"), nullable=False),
        pa.field("rating", pa.float32()),
        pa.field("split", pa.string(), nullable=False),
    ]
)

# Unordered item pairs (i < j, item_idx) seen together in at least one user's training prefix.
COOCCURRENCE = pa.schema(
    [
        pa.field("i", pa.int32(), nullable=False),
        pa.field("j", pa.int32(), nullable=False),
        pa.field("count", pa.int32(), nullable=False),
        pa.field("s", pa.float32(), nullable=False),
    ]
)

# What identifies how an archetype was made: the item's content, the model, the prompt wording
# and the generation settings (engine, dtype, sampling, seed, max new tokens), as short ids.
_PROVENANCE_FIELDS = [
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("settings_id", pa.string(), nullable=False),
]
PROVENANCE_COLUMNS = tuple(field.name for field in _PROVENANCE_FIELDS)


def archetypes_schema(dim: int) -> pa.Schema:
    """One row per generated archetype; `dim` is the model's hidden size (576 for SmolLM2-135M)."""
    return pa.schema(
        [
            *_PROVENANCE_FIELDS,
            pa.field("engine", pa.string(), nullable=False),
            pa.field(
                "prompt", pa.string(), nullable=False
            ),  # the paper's prompt, before the chat template
            pa.field("archetype", pa.string(), nullable=False),
            pa.field("prompt_tokens", pa.int32(), nullable=False),
            pa.field("completion_tokens", pa.int32(), nullable=False),
            pa.field("finish_reason", pa.string(), nullable=False),  # "stop" or "length"
            pa.field("truncated", pa.bool_(), nullable=False),  # metadata cut to fit the context
            pa.field("input_emb", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("gen_emb", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
        ]
    )


# Items whose archetype could not be made or failed validation; never in `archetypes`.
ARCHETYPE_FAILURES = pa.schema(
    [
        *_PROVENANCE_FIELDS,
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("archetype", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


def item_embeddings_schema(dim: int) -> pa.Schema:
    """Pooled item vectors: PCA(input_emb) ‖ PCA(gen_emb), `dim` = 768 by default."""
    return pa.schema(
        [
            *_PROVENANCE_FIELDS,
            pa.field("basis_id", pa.string(), nullable=False),  # which stored PCA bases
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def calibrated_embeddings_schema(dim: int) -> pa.Schema:
    """Item vectors through the calibration adapter (genair_core.item_space.calibration),
    L2-normalised: `dim` = calibration.hidden (128 by default). `version` names the adapter that
    made them."""
    return pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("version", pa.string(), nullable=False),
        ]
    )


# The sampled protocol's candidates: 100 items per user drawn once (seeded, excluding every item
# the user ever had) and shared by every model, so sampled metrics are comparable across runs.
EVAL_NEGATIVES = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("negatives", pa.list_(pa.int32()), nullable=False),
    ]
)

# What identifies one recommender run, on every row it writes.
_RUN = [
    pa.field("run_key", pa.string(), nullable=False),  # hash of the inputs and the settings
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("backbone", pa.string(), nullable=False),
    pa.field("variant", pa.string(), nullable=False),
    pa.field("seed", pa.int32(), nullable=False),
    pa.field("loss", pa.string(), nullable=False),  # bce | ce
]

# Test (and validation) metrics of a run's best epoch, one row per metric and user group.
METRICS = pa.schema(
    [
        *_RUN,
        pa.field("protocol", pa.string(), nullable=False),  # full | sampled
        pa.field("split", pa.string(), nullable=False),  # valid | test
        pa.field("group", pa.string(), nullable=False),  # all | tail | head | short | long
        pa.field("metric", pa.string(), nullable=False),  # hr@10, ndcg@10, ...
        pa.field("value", pa.float64(), nullable=False),
        pa.field("users", pa.int32(), nullable=False),  # users in the group
    ]
)

# Every evaluated user's rank of the held-out item: the per-user values paired tests need.
EVAL_RANKS = pa.schema(
    [
        *_RUN,
        pa.field("split", pa.string(), nullable=False),
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("rank_full", pa.int32(), nullable=False),  # 0-based, among all items
        pa.field("rank_sampled", pa.int32(), nullable=False),  # 0-based, among the negatives
    ]
)

# One row per epoch of a run: losses, validation metrics and wall time.
TRAINING_LOG = pa.schema(
    [
        *_RUN,
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("train_loss", pa.float64(), nullable=False),  # rec_loss + alpha * cal_loss
        pa.field("rec_loss", pa.float64(), nullable=False),
        pa.field("cal_loss", pa.float64(), nullable=False),
        pa.field("valid_hr@10", pa.float64(), nullable=False),
        pa.field("valid_ndcg@10", pa.float64(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
    ]
)


# Cold start (genair_core.recommenders.cold_start): one row per interaction after T scored by one
# method. The views a target has no part in are null: new_only_* for a target on an item that is
# not new, old_only_* (the new items left out of the candidates) for one that is.
COLD_START_TARGETS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("window", pa.string(), nullable=False),  # valid | test
        pa.field("kind", pa.string(), nullable=False),  # new | warm | untrained
        pa.field("rank", pa.int64(), nullable=False),  # 0-based, among the whole catalog
        pa.field("ndcg@10", pa.float64(), nullable=False),
        pa.field("hr@10", pa.float64(), nullable=False),
        pa.field("new_only_ndcg@10", pa.float64()),
        pa.field("new_only_hr@10", pa.float64()),
        pa.field("old_only_ndcg@10", pa.float64()),
        pa.field("old_only_hr@10", pa.float64()),
        pa.field("top_holds_new", pa.bool_(), nullable=False),
    ]
)


# Next-item retrieval in item space (genair_core.item_space.retrieval): one row per space, split
# and metric. split "valid" | "test" rows are mean metrics over `users` with paired p-values; split
# "vectors" rows describe the space itself (items, item_coverage, dimension, mean_pairwise_cosine,
# effective_rank), with users and the p-values null.
RETRIEVAL_METRICS = pa.schema(
    [
        pa.field("space", pa.string(), nullable=False),  # raw | calibrated | cooccurrence | ...
        pa.field("split", pa.string(), nullable=False),  # valid | test | vectors
        pa.field("metric", pa.string(), nullable=False),  # hr@10, ndcg@10, effective_rank, ...
        pa.field("value", pa.float64(), nullable=False),
        pa.field("users", pa.int32()),
        pa.field("p_vs_raw", pa.float64()),  # Wilcoxon signed-rank over users, two-sided
        pa.field("p_vs_cooccurrence", pa.float64()),
        pa.field("p_vs_popularity", pa.float64()),
    ]
)


# The nightly exports downstream teams read, Delta Lake tables (storage.delta): one version per
# run, every row of a version stamped with the run that committed it (`run_id`).
# Every user's top K: `rank` 1..K by `score` (ties by item_id), the items the user has seen
# excluded. `is_new_item`: the served model never trained on the item; `is_popularity_list`: none
# of the user's items is one the model can represent, so the list is the popularity list.
RECOMMENDATIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("is_new_item", pa.bool_(), nullable=False),
        pa.field("is_popularity_list", pa.bool_(), nullable=False),
        pa.field("model_run", pa.string(), nullable=False),  # the served recommender run
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

# Every item's top K neighbours in one vector space's FAISS index, itself excluded: `rank` 1..K
# by `score` (cosine), ties by neighbour_id. The feed behind a "more like this" shelf.
SIMILAR_ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("neighbour_id", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("space", pa.string(), nullable=False),  # calibrated | raw
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


def to_matrix(column: pa.ChunkedArray | pa.FixedSizeListArray) -> np.ndarray:
    """(N,) fixed-size lists of D floats → (N, D) float32, without a Python loop."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_fixed_size_list(array.type):
        raise TypeError(f"expected a fixed-size list column, got {array.type}")
    if array.null_count:
        raise ValueError(f"{array.null_count} vectors are null")
    flat = array.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(array), array.type.list_size)


def to_fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) → (N,) fixed-size lists of D float32, how vector columns hold vectors."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected an (N, D) matrix, got shape {matrix.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
