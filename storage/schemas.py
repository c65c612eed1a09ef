"""Arrow schemas of every table genair writes. A table's schema lives here and nowhere else."""

from __future__ import annotations

import pyarrow as pa

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
# Parquet file; `raw` is the row as read, cut to 2,000 characters.
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

TABLES: dict[str, pa.Schema] = {
    "items": ITEMS,
    "interactions": INTERACTIONS,
    "rejects": REJECTS,
    "item_index": ITEM_INDEX,
    "user_index": USER_INDEX,
    "sequences": SEQUENCES,
    "cooccurrence": COOCCURRENCE,
}
