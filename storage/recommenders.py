"""What the recommender stages read and write besides whole tables: their inputs as Arrow tables
and numpy arrays (genair_core.run_inputs builds its sequences, frozen item table and co-occurrence
lookup from them), the calibration adapter a `genair-warm` run starts from, a run's parts and best
weights, and the finished runs' test results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from genair_core.tables import to_matrix
from storage.calibration import AdapterFiles
from storage.checkpoints import save_weights
from storage.store import Store, TableInfo

# The columns of sequences that genair_core.sequences.UserSequences reads.
USER_SEQUENCE_COLUMNS = ["user_idx", "position", "item_idx", "split"]
FINAL = "final"  # the part key of a run's rows: one part per run, replaced by a rerun


@dataclass
class LoadedRunTables:
    """A run's tables as read for it: the fields genair_core.run_inputs.RunTables names."""

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
    (genair_core.calibration.settings_id of the calibration settings), which a `genair-warm` run
    starts from (genair_core.run_spec.WarmStart.from_stored)."""
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
) -> dict[str, TableInfo]:
    """A trained run's part of each table in `rows` (eval_ranks, training_log) and its best
    weights; then the run's checkpoint folders of other run keys go."""
    outputs = {table: store.write_part(table, run, FINAL, part) for table, part in rows.items()}
    metadata = {"run_id": run_id, "run": run, "epoch": str(best_epoch)}
    save_weights(store.best_weights_path(run), best_weights, metadata)
    store.prune_checkpoints(run, keep_run_id=run_id)
    return outputs


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
