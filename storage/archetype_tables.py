"""What the archetype stage reads and writes: catalog keys, archetypes and failure records.

Archetypes are written one part per batch (under the batch key) and failures one part per item
(under the item key), in the partition of the model that made them, so an item's failure is
replaced when it fails again and removed when it succeeds, however the items were batched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

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


def read_archetype_state(
    store: Store, model_id: str, prompt_version: str, settings_id: str, *, kcore: bool
) -> ArchetypeState:
    """The catalog's keys, and the archetypes and failures stored for one recipe."""
    catalog = store.read_table("items", columns=["item_id", "content_hash"])
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


def _pairs(table: pa.Table | None) -> list[Pair]:
    if table is None:
        return []
    return list(zip(table["item_id"].to_pylist(), table["content_hash"].to_pylist(), strict=True))
