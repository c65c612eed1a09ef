"""Pool each item's two hidden-state means into one vector with stored PCA bases."""

from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from genair_core.archetypes import ArchetypeRecipe
from genair_core.pooling import pool_archetypes
from storage.bases import bases_path, load_bases, save_bases
from storage.sources import input_fingerprint
from storage.sql import current_archetypes
from storage.store import fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.settings import Settings

POOLING_VERSION = 1


@task(name="pool-embeddings", **TASK_DEFAULTS)
def pool_item_embeddings(
    settings: Settings, recipe: ArchetypeRecipe, force: bool = False
) -> dict[str, object]:
    """item_embeddings for every item with a current archetype. The bases are fitted once (or
    when `pooling.refit` is set) and stored; items added later are projected with them."""
    store = store_for(settings)
    cfg = settings.pooling
    version = f"{recipe.prompt_version}-{recipe.settings_id}"
    path = bases_path(store.root, recipe.model_id, version)
    inputs = fingerprint(
        POOLING_VERSION,
        cfg.model_dump(mode="json"),
        recipe.__dict__,
        input_fingerprint(store.part_paths("archetypes", recipe.model_id)),
        store.table_info("items").sha256,
    )

    def produce() -> tuple[dict, dict]:
        current = current_archetypes(
            store, recipe.model_id, recipe.prompt_version, recipe.settings_id
        )
        stored = None if cfg.refit or not path.exists() else load_bases(path)[0]
        pooled = pool_archetypes(current, cfg, stored, stored_at=str(path))
        if pooled.fitted:
            metadata = {
                "model_id": recipe.model_id,
                "prompt_version": recipe.prompt_version,
                "settings_id": recipe.settings_id,
            }
            save_bases(path, pooled.bases, metadata)
        info = store.write_table("item_embeddings", pooled.item_embeddings)
        get_run_logger().info("pooling: %s", pooled.summary)
        return {"item_embeddings": info}, pooled.summary

    # Without its bases file the step must run (and refit) even if its inputs are unchanged.
    return run_step(
        store, "pooling", inputs, produce, force=force or cfg.refit or not path.exists()
    )
