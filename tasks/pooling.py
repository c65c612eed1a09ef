"""Pool each item's two hidden-state means into one vector with stored PCA bases."""

from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from genair_core.llm.archetypes import ArchetypeRecipe
from genair_core.llm.pooling import must_fit, pool_archetypes
from storage.bases import BasesFile
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
    ids = (recipe.model_id, recipe.prompt_version, recipe.settings_id)
    bases = BasesFile(store, *ids)
    inputs = fingerprint(
        POOLING_VERSION,
        cfg.model_dump(mode="json"),
        recipe.__dict__,
        input_fingerprint(store.part_paths("archetypes", recipe.model_id)),
        store.table_info("items").sha256,
    )

    def produce() -> tuple[dict, dict]:
        current = current_archetypes(store, *ids)
        pooled = pool_archetypes(current, cfg, bases.read, stored_at=str(bases.path))
        if pooled.fitted:
            bases.write(pooled.bases)
        info = store.write_table("item_embeddings", pooled.item_embeddings)
        get_run_logger().info("pooling: %s", pooled.summary)
        return {"item_embeddings": info}, pooled.summary

    return run_step(store, "pooling", inputs, produce, force=force or must_fit(cfg, bases.exists()))
