"""Looking items up for people (by id or a piece of the title, and their archetype text), and
the stored catalog's item versions, which ingest dates unchanged items by."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pyarrow.parquet as pq

from storage.store import MissingTableError, Store

MAX_CANDIDATES = 20  # title matches listed for an ambiguous ITEM


def find_items(
    store: Store, text: str, limit: int = MAX_CANDIDATES
) -> list[tuple[str, str | None]]:
    """(item_id, title) of the item whose id is `text`, else of items whose title contains it
    (case-insensitive), by item_id, at most `limit`."""
    if not store.exists("items"):
        raise MissingTableError("table 'items' has not been written yet: run `genair run` first")
    con = duckdb.connect(":memory:")
    items = str(store.table_path("items"))
    exact = con.execute(
        "SELECT item_id, title FROM read_parquet($items) WHERE item_id = $text",
        {"items": items, "text": text},
    ).fetchall()
    if exact:
        return exact
    return con.execute(
        "SELECT item_id, title FROM read_parquet($items)"
        " WHERE contains(lower(title), lower($text)) ORDER BY item_id LIMIT $limit",
        {"items": items, "text": text, "limit": limit},
    ).fetchall()


def item_versions(store: Store) -> dict[str, tuple[str, datetime]]:
    """{item_id: (content_hash, updated_at)} of the stored catalog: what the next ingest dates
    unchanged items by. Empty before the first ingest, and for a catalog written before items
    carried `updated_at` (its items are then dated by the next ingest)."""
    if not store.exists("items"):
        return {}
    if "updated_at" not in pq.read_schema(store.table_path("items")).names:
        return {}
    table = store.read_table("items", columns=["item_id", "content_hash", "updated_at"])
    columns = (table[name].to_pylist() for name in ("item_id", "content_hash", "updated_at"))
    return {item_id: (digest, at) for item_id, digest, at in zip(*columns, strict=True)}


def titles(store: Store, item_ids: list[str]) -> dict[str, str | None]:
    """{item_id: title} for the given items that are in the catalog."""
    if not item_ids or not store.exists("items"):
        return {}
    table = store.read_table_where("items", "item_id", item_ids, columns=["item_id", "title"])
    return dict(
        zip(table.column("item_id").to_pylist(), table.column("title").to_pylist(), strict=True)
    )


def archetype_texts(store: Store, item_ids: list[str]) -> dict[str, str]:
    """{item_id: archetype} for the given items: the archetype their current item vector was
    pooled from (same content, model, prompt version and settings), the newest if written twice.
    Empty when there are no item vectors or archetypes yet."""
    paths = store.part_paths("archetypes")
    if not item_ids or not paths or not store.exists("item_embeddings"):
        return {}
    rows = (
        duckdb.connect(":memory:")
        .execute(
            """
            SELECT a.item_id, a.archetype FROM read_parquet($parts, union_by_name = true) a
            JOIN read_parquet($vectors) v
              USING (item_id, content_hash, model_id, prompt_version, settings_id)
            WHERE a.item_id IN (SELECT unnest($ids))
            QUALIFY row_number() OVER (PARTITION BY a.item_id ORDER BY a.created_at DESC) = 1
            """,
            {
                "parts": [str(p) for p in paths],
                "vectors": str(store.table_path("item_embeddings")),
                "ids": item_ids,
            },
        )
        .fetchall()
    )
    return dict(rows)
