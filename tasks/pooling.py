"""Pool each item's two hidden-state means into one vector with stored PCA bases."""

from __future__ import annotations

import pyarrow as pa
from prefect import task
from prefect.logging import get_run_logger

from genair_core.archetypes import Identity
from genair_core.config import Settings
from genair_core.pooling import basis_id, fit_basis, pool_vectors
from storage.bases import bases_path, load_bases, save_bases
from storage.sources import input_fingerprint
from storage.sql import current_archetypes
from storage.store import fingerprint
from storage.vectors import to_fixed_list, to_matrix
from tasks.common import TASK_DEFAULTS, run_step, store_for

POOLING_VERSION = 1


@task(name="pool-embeddings", **TASK_DEFAULTS)
def pool_item_embeddings(
    settings: Settings, identity: Identity, force: bool = False
) -> dict[str, object]:
    """item_embeddings for every item with a current archetype. The bases are fitted once (or
    when `pooling.refit` is set) and stored; items added later are projected with them."""
    store = store_for(settings)
    cfg = settings.pooling
    path = bases_path(
        store.root, identity.model_id, f"{identity.prompt_version}-{identity.settings_id}"
    )
    parts = store.part_paths("archetypes", identity.model_id)
    inputs = fingerprint(
        POOLING_VERSION,
        cfg.model_dump(mode="json"),
        identity.__dict__,
        input_fingerprint(parts),
        store.table_info("items").sha256,
    )

    def produce() -> tuple[dict, dict]:
        current = current_archetypes(
            store, identity.model_id, identity.prompt_version, identity.settings_id
        )
        if current is None or current.num_rows == 0:
            raise ValueError("no archetypes to pool: the archetype stage wrote none")
        input_emb = to_matrix(current["input_emb"])  # (N, hidden)
        gen_emb = to_matrix(current["gen_emb"])  # (N, hidden)
        stored = None if cfg.refit or not path.exists() else load_bases(path)[0]
        if stored is not None:
            _check_stored_dims(stored, cfg.input_dims, cfg.gen_dims, path)
        refit = stored is None or _outgrown(stored, current.num_rows)
        if refit:
            bases = {
                "input": fit_basis(input_emb, cfg.input_dims, seed=cfg.seed),
                "gen": fit_basis(gen_emb, cfg.gen_dims, seed=cfg.seed),
            }
            save_bases(path, bases, {"model_id": identity.model_id, **_versions(identity)})
        else:
            bases = stored
        vectors = pool_vectors(input_emb, gen_emb, bases["input"], bases["gen"])  # (N, k_in+k_gen)
        bid = basis_id(bases["input"], bases["gen"])
        table = (
            current.select(["item_id", "content_hash", "model_id", "prompt_version", "settings_id"])
            .append_column("basis_id", pa.array([bid] * current.num_rows, pa.string()))
            .append_column("vector", to_fixed_list(vectors))
        )
        info = store.write_table("item_embeddings", table)
        summary = {
            "items": current.num_rows,
            "dims": int(vectors.shape[1]),
            "bases": "fitted" if refit else "stored",
            "basis_id": bid,
            "explained_input": float(bases["input"].explained_variance_ratio.sum()),
            "explained_gen": float(bases["gen"].explained_variance_ratio.sum()),
        }
        get_run_logger().info("pooling: %s", summary)
        return {"item_embeddings": info}, summary

    # Without its bases file the step must run (and refit) even if its inputs are unchanged.
    return run_step(
        store, "pooling", inputs, produce, force=force or cfg.refit or not path.exists()
    )


def _outgrown(bases: dict, n_items: int) -> bool:
    """Bases capped on a small catalog (k = rows - 1) are refitted once more items exist, so a
    quick first run does not fix the vector size for good."""
    return any(b.dim == b.n_fit - 1 and n_items > b.n_fit for b in bases.values())


def _versions(identity: Identity) -> dict[str, str]:
    return {"prompt_version": identity.prompt_version, "settings_id": identity.settings_id}


def _check_stored_dims(bases: dict, input_dims: int, gen_dims: int, path: object) -> None:
    """Stored bases of another size than configured would be reused silently: refuse instead.
    (A basis may be smaller than configured when it was capped on a small catalog.)"""
    for name, wanted in (("input", input_dims), ("gen", gen_dims)):
        basis = bases[name]
        capped = basis.dim == basis.n_fit - 1 or basis.dim == basis.input_dim
        if basis.dim != wanted and not (capped and basis.dim < wanted):
            raise ValueError(
                f"stored {name} basis in {path} has {basis.dim} dims but pooling.{name}_dims is "
                f"{wanted}: set pooling.refit = true to refit it"
            )
