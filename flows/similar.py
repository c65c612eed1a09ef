"""`genair similar`: the items most like one item, from the nightly `similar_items` export when
it is current, else from a stored FAISS index.

    result = similar_items(load_settings(), "Toy Story", k=10, space="calibrated")
    for row in result.items: print(row.item_id, row.title, row.score, row.archetype)

The export is current for a lookup when its latest version was made from the index stored now
(the index file's SHA-256 in the commit's metadata), in the space asked for, with at least k
neighbours an item; then the lookup reads that version's rows of the item and searches nothing.

The composition of storage reads (the item, the export or the index, titles, archetypes) around
one genair_core call (`neighbours`), like a task but without Prefect: a lookup is not a pipeline
run.
"""

from __future__ import annotations

from dataclasses import dataclass

from genair_core.item_space.index import (
    SimilarItem,
    neighbours,
    pick_item,
    prepare_for_search,
    similar_rows,
)
from storage import delta
from storage.index import IndexFileError, IndexFiles
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
    source: str  # "similar_items version N" (the export) or "index" (a search)


def similar_items(
    settings: Settings, item: str, k: int = 10, space: str = "calibrated"
) -> SimilarResult:
    """The `k` items most similar to ITEM (an item_id or a piece of a title) in `space`.

    Raises genair_core.item_space.index.ItemLookupError when ITEM names no item or several
    (`candidates`), storage.index.IndexFileError when the space's index is missing or fails its
    check."""
    store = Store(settings.storage.root)
    files = IndexFiles(store, space)
    item_id = pick_item(item, find_items(store, item))
    exported = _exported(store, files, item_id, k)
    if exported is not None:
        found, source = exported
    else:
        stored = files.load()
        search_index = prepare_for_search(stored.index, settings.index)
        found, source = neighbours(stored.index, stored.ids, item_id, k, search_index), "index"
    ids = [item_id, *(hit for hit, _ in found)]
    names = titles(store, ids)
    rows = similar_rows(found, names, archetype_texts(store, ids))
    stale = _stale(store, files, files.manifest())
    return SimilarResult(item_id, names.get(item_id), space, rows, stale, source)


def _exported(
    store: Store, files: IndexFiles, item_id: str, k: int
) -> tuple[list[tuple[str, float]], str] | None:
    """The item's neighbours from the current `similar_items` version and which version, when
    that version is current for this lookup (module docstring); None otherwise."""
    try:
        index_sha256 = files.manifest()["files"]["index"]
    except IndexFileError:
        return None
    current = delta.rows_where(store, "similar_items", "item_id", item_id)
    if current is None:
        return None
    commit, rows = current
    made = commit["metadata"]
    if (made.get("index_sha256"), made.get("space")) != (index_sha256, files.space):
        return None
    if int(made.get("k", 0)) < k or not rows:
        return None
    ranked = sorted(rows, key=lambda row: row["rank"])[:k]
    hits = [(str(row["neighbour_id"]), float(row["score"])) for row in ranked]
    return hits, f"similar_items version {commit['version']}"


def _stale(store: Store, files: IndexFiles, manifest: dict) -> str | None:
    if not store.exists(files.table):
        return None
    if store.table_info(files.table).sha256 == manifest["vectors"]["sha256"]:
        return None
    return (
        f"the {files.space} index was built from an earlier {files.table}; "
        "`genair run --from index --until index` brings it up to date"
    )
