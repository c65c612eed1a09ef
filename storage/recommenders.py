"""What the recommender stages read and write besides whole tables: their inputs as Arrow tables
and numpy arrays (genair_core.recommenders.run_inputs builds its sequences, frozen item table and
co-occurrence lookup from them), the calibration adapter a `genair-warm` run starts from, a run's
parts and best weights, and the finished runs' test results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from safetensors import safe_open

from genair_core.tables import VECTOR_SPACES, to_matrix
from storage.calibration import AdapterFiles
from storage.checkpoints import save_weights
from storage.store import Store, TableInfo, atomic_write

# The columns of sequences that genair_core.data.sequences.UserSequences reads.
USER_SEQUENCE_COLUMNS = ["user_idx", "position", "item_idx", "split"]
FINAL = "final"  # the part key of a run's rows: one part per run, replaced by a rerun


@dataclass
class LoadedRunTables:
    """A run's tables as read for it: the fields genair_core.recommenders.run_inputs.RunTables
    names."""

    n_items: int
    sequences: pa.Table  # user_idx, position, item_idx, split
    negative_users: np.ndarray | None = None  # (U,) the user_idx of each row of `negatives`
    negatives: np.ndarray | None = None  # (U, m)
    item_ids: list[str] | None = None  # item_id by item_idx, from 1
    vector_item_ids: list[str] | None = None  # the item of each row of `vectors`
    vectors: np.ndarray | None = None  # (N, d) float32
    pairs: pa.Table | None = None  # cooccurrence i, j, s


def read_run_tables(store: Store, tables: list[str]) -> LoadedRunTables:
    """The sequences and whichever of eval_negatives, item_embeddings and cooccurrence `tables`
    names; a named table that is missing raises MissingTableError."""
    columns: dict[str, object] = {}
    if "eval_negatives" in tables:
        negatives = store.read_table("eval_negatives")
        columns["negative_users"] = negatives["user_idx"].to_numpy()
        columns["negatives"] = np.stack(negatives["negatives"].to_numpy(zero_copy_only=False))
    if "item_embeddings" in tables:
        index = store.read_table("item_index", columns=["item_idx", "item_id"]).sort_by("item_idx")
        vectors = store.read_table("item_embeddings", columns=["item_id", "vector"])
        columns["item_ids"] = index["item_id"].to_pylist()
        columns["vector_item_ids"] = vectors["item_id"].to_pylist()
        columns["vectors"] = to_matrix(vectors["vector"])
    if "cooccurrence" in tables:
        columns["pairs"] = store.read_table("cooccurrence", columns=["i", "j", "s"])
    return LoadedRunTables(
        n_items=store.table_info("item_index").rows,
        sequences=store.read_table("sequences", columns=USER_SEQUENCE_COLUMNS),
        **columns,
    )


def read_calibration_adapter(
    store: Store, settings_id: str
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """The tensors and manifest the calibration job stored for `settings_id`
    (genair_core.item_space.calibration.settings_id of the calibration settings), which a
    `genair-warm` run starts from (genair_core.recommenders.run_spec.WarmStart.from_stored)."""
    files = AdapterFiles(store, settings_id)
    stored = files.read()
    if stored is None:
        raise FileNotFoundError(
            f"genair-warm starts from the calibration adapter, and none is stored for the "
            f"calibration settings ({files.path}): run the calibrate stage first"
        )
    return stored


def write_trained_run(
    store: Store,
    run: str,
    run_id: str,
    rows: dict[str, list[dict]],
    best_weights: dict[str, torch.Tensor],
    best_epoch: int,
    settings: dict[str, str],
) -> dict[str, TableInfo]:
    """A trained run's part of each table in `rows` (eval_ranks, training_log), its best weights
    with `settings` (what a server rebuilds the model from) and the item of each row of its
    tables (item_index's order, the rows of every per-item tensor in the weights); then the
    run's checkpoint folders of other run keys go."""
    outputs = {table: store.write_part(table, run, FINAL, part) for table, part in rows.items()}
    item_ids = read_item_order(store)
    atomic_write(_item_order_path(store, run), lambda tmp: pq.write_table(item_ids, tmp))
    metadata = {"run_id": run_id, "run": run, "epoch": str(best_epoch), **settings}
    save_weights(store.best_weights_path(run), best_weights, metadata)
    store.prune_checkpoints(run, keep_run_id=run_id)
    return outputs


def read_item_order(store: Store) -> pa.Table:
    """item_index's item ids in item_idx order (1..n): the rows of a run's item tables."""
    index = store.read_table("item_index", columns=["item_idx", "item_id"]).sort_by("item_idx")
    return index.select(["item_id"])


@dataclass(frozen=True)
class StoredRun:
    """A finished run's best weights as stored, with what it was trained on."""

    name: str
    metadata: dict[str, str]  # run_id, epoch, and the settings write_trained_run was given
    weights: dict[str, torch.Tensor]
    item_ids: list[str] | None  # None: trained before its item order was recorded


def finished_runs(store: Store) -> list[str]:
    """The runs whose best weights are stored, by name."""
    return sorted(p.parent.name for p in store.recommenders_dir().glob("*/best.safetensors"))


def read_stored_run(store: Store, run: str) -> StoredRun:
    path = store.best_weights_path(run)
    with safe_open(path, framework="pt") as stored:
        metadata = dict(stored.metadata())
        weights = {name: stored.get_tensor(name) for name in stored.keys()}  # noqa: SIM118
    order = _item_order_path(store, run)
    item_ids = pq.read_table(order)["item_id"].to_pylist() if order.exists() else None
    return StoredRun(run, metadata, weights, item_ids)


def _item_order_path(store: Store, run: str) -> Path:
    return store.recommender_dir(run) / "item_order.parquet"


def validation_ndcg(store: Store, runs: list[str]) -> dict[str, dict[str, object]]:
    """Each run's full-ranking validation NDCG@10 over all users, with its backbone, variant and
    run_key, from `metrics` (runs never scored are left out)."""
    found = {}
    wanted = (
        (pc.field("protocol") == "full")
        & (pc.field("split") == "valid")
        & (pc.field("group") == "all")
        & (pc.field("metric") == "ndcg@10")
    )
    for run in runs:
        rows = store.read_parts("metrics", run, filter=wanted)
        if rows is not None and rows.num_rows:
            row = rows.to_pylist()[-1]
            found[run] = {k: row[k] for k in ("run_key", "backbone", "variant", "seed", "value")}
    return found


def read_run_ranks(store: Store, run: str) -> pa.Table:
    ranks = store.read_parts("eval_ranks", run)
    if ranks is None:
        raise FileNotFoundError(f"run {run} has no eval_ranks; train it first")
    return ranks


def read_test_results(
    store: Store, runs: list[str]
) -> tuple[dict[str, dict[str, np.ndarray]], list[dict]]:
    """Of the `runs` that have written ranks: {run: {"full": ranks, "sampled": ranks}} on the
    test split by user_idx, and their full-ranking test rows of metrics."""
    ranks, metrics = {}, []
    for run in runs:
        test = store.read_parts("eval_ranks", run, filter=pc.field("split") == "test")
        if test is None:
            continue
        test = test.sort_by("user_idx")
        ranks[run] = {p: test[f"rank_{p}"].to_numpy() for p in ("full", "sampled")}
    for run in ranks:
        part = store.read_parts(
            "metrics", run, filter=(pc.field("protocol") == "full") & (pc.field("split") == "test")
        )
        metrics += part.to_pylist() if part is not None else []
    return ranks, metrics


def read_user_ids(store: Store) -> dict[int, str]:
    """{user_idx: user_id} from user_index."""
    index = store.read_table("user_index", columns=["user_idx", "user_id"])
    return dict(zip(index["user_idx"].to_pylist(), index["user_id"].to_pylist(), strict=True))


def read_catalog_vectors(store: Store, space: str = "raw") -> tuple[list[str], np.ndarray]:
    """The vector of every item in today's catalog (`items`) in `space` (the pooled vectors by
    default; genair_core.tables.VECTOR_SPACES): item ids and (N, d)."""
    catalog = store.read_table("items", columns=["item_id"])["item_id"]
    vectors = store.read_table(VECTOR_SPACES[space], columns=["item_id", "vector"])
    vectors = vectors.filter(pc.is_in(vectors["item_id"], value_set=catalog))
    return vectors["item_id"].to_pylist(), to_matrix(vectors["vector"])
