"""What the archetype stage reads and writes: catalog keys, archetypes and failure records.

Archetypes are written one part per batch (under the batch key) and failures one part per item
(under the item key), in the partition of the model that made them, so an item's failure is
replaced when it fails again and removed when it succeeds, however the items were batched.

An archetype generated again (a backfill) is written in a new part beside its older row;
`drop_replaced_archetypes` then removes the older one, so each archetype key has one row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genair_core.tables import PROVENANCE_COLUMNS
from storage.store import Store

Pair = tuple[str, str]  # (item_id, content_hash)
Row = dict[str, object]


@dataclass(frozen=True)
class ArchetypeState:
    """The stored state an archetype plan is made from."""

    catalog: list[Pair]  # every item of the catalog
    kept: list[str] | None  # the item ids the k-core kept (None unless asked for)
    done: list[Pair]  # items with an archetype of this model, prompt and settings
    failed: list[Pair]  # items with a failure record of the same
    updated_at: dict[str, datetime] | None = None  # items.updated_at (only if asked for)


def read_archetype_state(
    store: Store,
    model_id: str,
    prompt_version: str,
    settings_id: str,
    *,
    kcore: bool,
    dated: bool = False,
) -> ArchetypeState:
    """The catalog's keys (with `dated`, each item's updated_at too), and the archetypes and
    failures stored for one recipe."""
    columns = ["item_id", "content_hash", *(["updated_at"] if dated else [])]
    if dated and store.exists("items") and "updated_at" not in _columns(store, "items"):
        raise ValueError(
            "the stored items table predates items.updated_at: run the refresh (or genair run) "
            "once to ingest it again, then backfill since a date"
        )
    catalog = store.read_table("items", columns=columns)
    kept = store.read_table("item_index", columns=["item_id"]) if kcore else None
    recipe = (pc.field("prompt_version") == prompt_version) & (
        pc.field("settings_id") == settings_id
    )
    done, failed = (
        store.read_parts(name, model_id, columns=["item_id", "content_hash"], filter=recipe)
        for name in ("archetypes", "archetype_failures")
    )
    return ArchetypeState(
        catalog=_pairs(catalog),
        kept=None if kept is None else kept["item_id"].to_pylist(),
        done=_pairs(done),
        failed=_pairs(failed),
        updated_at=_by_item(catalog, "updated_at") if dated else None,
    )


def read_batch_items(store: Store, item_ids: Sequence[str]) -> list[dict]:
    """The catalog rows of `item_ids` (in table order; missing ids are left out)."""
    return store.read_table_where("items", "item_id", item_ids).to_pylist()


def write_archetype_batch(
    store: Store,
    model_id: str,
    batch_key: str,
    archetypes: Mapping[str, Row],
    failures: Mapping[str, Row],
) -> None:
    """Store one batch's outcome; both mappings are keyed by item key."""
    write_failures(store, model_id, failures)
    if archetypes:
        store.write_part("archetypes", model_id, batch_key, list(archetypes.values()))
    for key in archetypes:
        store.delete_part("archetype_failures", model_id, key)


def write_failures(store: Store, model_id: str, failures: Mapping[str, Row]) -> None:
    """Store failure records, one part per item key (replacing an earlier one)."""
    for key, row in failures.items():
        store.write_part("archetype_failures", model_id, key, [row])


def drop_replaced_archetypes(store: Store, model_id: str) -> int:
    """Keep one row per archetype key (PROVENANCE_COLUMNS) in the model's partition: the newest
    (created_at, then part file name); the older rows are removed from the parts holding them
    (each part rewritten atomically, or deleted when nothing is left). Returns the rows removed.
    A crash part-way leaves duplicates the next call removes; readers meanwhile take the newest.
    """
    paths = store.part_paths("archetypes", model_id)
    if not paths:
        return 0
    key = ", ".join(PROVENANCE_COLUMNS)
    older = duckdb.sql(
        f"""
        SELECT filename, {key}, epoch_us(created_at)
        FROM read_parquet($parts, filename = true, union_by_name = true)
        QUALIFY row_number() OVER (
            PARTITION BY {key} ORDER BY created_at DESC, filename DESC) > 1
        """,
        params={"parts": [str(p) for p in paths]},
    ).fetchall()
    # The rows kept were written by earlier runs: rewrite their parts without stamping this run.
    unstamped = Store(store.root)
    by_part: dict[str, set[tuple]] = {}
    for filename, *row in older:
        by_part.setdefault(filename, set()).add(tuple(row))
    for filename, rows in by_part.items():
        part = pq.read_table(filename)
        created_us = part["created_at"].cast(pa.int64()).to_pylist()
        provenance = (part[name].to_pylist() for name in PROVENANCE_COLUMNS)
        keys = zip(*provenance, created_us, strict=True)
        keep = pa.array([row not in rows for row in keys], pa.bool_())
        kept = part.filter(keep)
        part_key = Path(filename).stem.removeprefix("part-")
        if kept.num_rows:
            unstamped.write_part("archetypes", model_id, part_key, kept)
        else:
            unstamped.delete_part("archetypes", model_id, part_key)
    return len(older)


def _columns(store: Store, name: str) -> list[str]:
    return pq.read_schema(store.table_path(name)).names


def _by_item(table: pa.Table, column: str) -> dict[str, object]:
    return dict(zip(table["item_id"].to_pylist(), table[column].to_pylist(), strict=True))


def _pairs(table: pa.Table | None) -> list[Pair]:
    if table is None:
        return []
    return list(zip(table["item_id"].to_pylist(), table["content_hash"].to_pylist(), strict=True))
