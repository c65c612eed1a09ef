"""What the HTML report reads from a storage root, and where it is written.

    reports/report.html     one self-contained page (genair_core.report), replaced atomically

Every read tolerates a missing table: the field is left empty (or, for an index, says why), and
the report's section explains what is missing. Large tables are never read whole: the runs'
parts by run, the item vectors of at most MAP_MAX_ITEMS items, metadata by item_id.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genair_core.tables import VECTOR_SPACES, to_matrix
from storage.index import IndexFileError, IndexFiles
from storage.items import archetype_texts
from storage.recommenders import read_test_results
from storage.runs import read_run, read_runs, storage_status
from storage.store import Store, atomic_write_bytes

REPORT_FILE = "report.html"
MAP_MAX_ITEMS = 5000  # items on the item map; a larger catalog is sampled by a hash of item_id
EXAMPLES = 4  # archetype examples: the most-interacted items that have one
EXAMPLE_CANDIDATES = 40  # how many of the most-interacted items are looked at for them
DESCRIPTION_CHARS = 300  # an example's description is cut to this many characters
TRAINING_LOG_COLUMNS = ["backbone", "variant", "seed", "epoch", "rec_loss", "cal_loss"]
VALID_NDCG = "valid_ndcg@10"
METADATA_COLUMNS = ["item_id", "title", "categories", "release_year", "brand", "price"]


@dataclass
class ReportTables:
    """What the report reads (genair_core.report.ReportSources); empty where a table is missing."""

    test_ranks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    group_rows: list[dict] = field(default_factory=list)  # full-ranking test METRICS rows
    popularity_rows: list[dict] = field(default_factory=list)  # the baseline's test METRICS rows
    training_log: list[dict] = field(default_factory=list)
    vectors: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)  # by space
    vector_items: int = 0  # items with a raw item vector (the map may show a sample)
    categories: dict[str, list[str] | None] = field(default_factory=dict)  # of the mapped items
    examples: list[dict] = field(default_factory=list)  # item_id, title, metadata, archetype, ...
    indexes: dict[str, tuple[faiss.Index, pa.Table] | str] = field(default_factory=dict)
    run: dict[str, object] | None = None  # the run record (storage.runs.RunRecord fields)
    status: dict[str, object] = field(default_factory=dict)  # storage_status()


def read_report_tables(store: Store, runs: list[str], run_id: str | None = None) -> ReportTables:
    """Everything the report shows, for the recommender runs named `runs` and the run `run_id`
    (None: the newest recorded run)."""
    tables = ReportTables()
    if store.part_paths("eval_ranks"):
        tables.test_ranks, tables.group_rows = read_test_results(store, runs)
    tables.popularity_rows = _popularity_rows(store)
    tables.training_log = _training_log(store, runs)
    if store.exists("item_embeddings"):
        _read_vectors(store, tables)
        tables.examples = _examples(store)
        if tables.examples:
            tables.indexes = {space: _load_index(store, space) for space in VECTOR_SPACES}
    record = read_run(store, run_id) if run_id is not None else None
    if record is None:
        recorded = read_runs(store)
        record = recorded[0] if recorded else None
    tables.run = asdict(record) if record is not None else None
    tables.status = storage_status(store, last=1)
    return tables


def report_html_path(store: Store) -> Path:
    return store.root / "reports" / REPORT_FILE


def write_report_html(store: Store, html: str, path: Path | None = None) -> Path:
    """Write the page atomically to `path` (default: reports/report.html); its path."""
    target = Path(path) if path is not None else report_html_path(store)
    atomic_write_bytes(target, html.encode())
    return target


def _popularity_rows(store: Store) -> list[dict]:
    if not store.part_paths("metrics", "popularity"):
        return []
    rows = store.read_parts("metrics", "popularity", filter=pc.field("split") == "test")
    return rows.to_pylist() if rows is not None else []


def _training_log(store: Store, runs: list[str]) -> list[dict]:
    rows: list[dict] = []
    for run in runs:
        if not store.part_paths("training_log", run):
            continue
        part = store.read_parts("training_log", run, columns=[*TRAINING_LOG_COLUMNS, VALID_NDCG])
        rows += part.to_pylist() if part is not None else []
    return rows


def _read_vectors(store: Store, tables: ReportTables) -> None:
    """The raw and (if written) calibrated vectors of at most MAP_MAX_ITEMS items, and those
    items' categories."""
    raw = VECTOR_SPACES["raw"]
    path = store.table_path(raw)  # ids only: the store reads vector tables whole
    ids = pq.read_table(path, columns=["item_id"])["item_id"].to_pylist()
    tables.vector_items = len(ids)
    if len(ids) > MAP_MAX_ITEMS:
        ids = sorted(ids, key=lambda item: hashlib.sha256(item.encode()).digest())[:MAP_MAX_ITEMS]
    for space, name in VECTOR_SPACES.items():
        if not store.exists(name):
            continue
        if len(ids) < tables.vector_items or name != raw:
            table = store.read_table_where(name, "item_id", ids, columns=["item_id", "vector"])
        else:
            table = store.read_table(name, columns=["item_id", "vector"])
        tables.vectors[space] = (table["item_id"].to_pylist(), to_matrix(table["vector"]))
    if store.exists("items"):
        items = store.read_table_where("items", "item_id", ids, columns=["item_id", "categories"])
        tables.categories = dict(
            zip(items["item_id"].to_pylist(), items["categories"].to_pylist(), strict=True)
        )


def _examples(store: Store) -> list[dict]:
    """The EXAMPLES most-interacted items (by item_index; without one, the first by item_id) that
    have an archetype, with their metadata."""
    if store.exists("item_index"):
        index = store.read_table("item_index", columns=["item_id", "n_interactions"])
        index = index.sort_by([("n_interactions", "descending"), ("item_id", "ascending")])
        top = index.slice(0, EXAMPLE_CANDIDATES)
        candidates = top["item_id"].to_pylist()
        interactions = dict(zip(candidates, top["n_interactions"].to_pylist(), strict=True))
    else:
        path = store.table_path("item_embeddings")
        candidates = sorted(pq.read_table(path, columns=["item_id"])["item_id"].to_pylist())
        candidates, interactions = candidates[:EXAMPLE_CANDIDATES], {}
    texts = archetype_texts(store, candidates)
    chosen = [item for item in candidates if item in texts][:EXAMPLES]
    metadata = _metadata(store, chosen)
    return [
        {
            "item_id": item,
            "title": metadata.get(item, {}).pop("title", None),
            "metadata": metadata.get(item, {}),
            "archetype": texts[item],
            "interactions": interactions.get(item, 0),
        }
        for item in chosen
    ]


def _metadata(store: Store, item_ids: list[str]) -> dict[str, dict[str, str]]:
    """{item_id: {field: text}} of the catalog fields an example shows (empty fields left out)."""
    if not item_ids or not store.exists("items"):
        return {}
    columns = [*METADATA_COLUMNS, "description"]
    table = store.read_table_where("items", "item_id", item_ids, columns=columns)
    out: dict[str, dict[str, str]] = {}
    for row in table.to_pylist():
        fields: dict[str, str] = {}
        for name in columns[1:]:
            value = row[name]
            if value is None or value == []:
                continue
            if isinstance(value, list):
                value = ", ".join(map(str, value))
            text = str(value)
            if name == "description" and len(text) > DESCRIPTION_CHARS:
                text = text[:DESCRIPTION_CHARS].rstrip() + "…"
            fields[name] = text
        out[row["item_id"]] = fields
    return out


def _load_index(store: Store, space: str) -> tuple[faiss.Index, pa.Table] | str:
    """The space's stored index and ids, or why there is none to search."""
    try:
        stored = IndexFiles(store, space).load()
    except IndexFileError as err:
        return f"{err}; `genair run --from index --until index` builds it"
    return stored.index, stored.ids
