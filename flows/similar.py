"""`genair similar`: the items most like one item, from a stored FAISS index.

    result = similar_items(load_settings(), "Toy Story", k=10, space="calibrated")
    for row in result.items: print(row.item_id, row.title, row.score, row.archetype)

The composition of storage reads (the item, the index, titles, archetypes) around one
genair_core call (`neighbours`), like a task but without Prefect: a lookup is not a pipeline run.
"""

from __future__ import annotations

from dataclasses import dataclass

from genair_core.index import SimilarItem, neighbours, pick_item, prepare_for_search, similar_rows
from storage.index import IndexFiles, StoredIndex
from storage.items import archetype_texts, find_items, titles
from storage.store import Store
from tasks.settings import Settings


@dataclass(frozen=True)
class SimilarResult:
    item_id: str
    title: str | None
    space: str
    items: list[SimilarItem]
    stale: str | None  # why the index may not reflect today's vectors, None if it does


def similar_items(
    settings: Settings, item: str, k: int = 10, space: str = "calibrated"
) -> SimilarResult:
    """The `k` items most similar to ITEM (an item_id or a piece of a title) in `space`.

    Raises genair_core.index.ItemLookupError when ITEM names no item or several (`candidates`),
    storage.index.IndexFileError when the space's index is missing or fails its check."""
    store = Store(settings.storage.root)
    files = IndexFiles(store, space)
    item_id = pick_item(item, find_items(store, item))
    stored = files.load()
    found = neighbours(
        stored.index, stored.ids, item_id, k, prepare_for_search(stored.index, settings.index)
    )
    ids = [item_id, *(hit for hit, _ in found)]
    names = titles(store, ids)
    rows = similar_rows(found, names, archetype_texts(store, ids))
    return SimilarResult(item_id, names.get(item_id), space, rows, _stale(store, files, stored))


def _stale(store: Store, files: IndexFiles, stored: StoredIndex) -> str | None:
    if not store.exists(files.table):
        return None
    if store.table_info(files.table).sha256 == stored.manifest["vectors"]["sha256"]:
        return None
    return (
        f"the {files.space} index was built from an earlier {files.table}; "
        "`genair run --from index --until index` brings it up to date"
    )
