"""FAISS indexes over the calibrated and the raw item vectors, one task per space."""

from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from genair_core.item_space.index import INDEX_VERSION, build_item_index, build_params
from storage.index import IndexFiles
from storage.store import fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.settings import Settings


@task(name="build-index", **TASK_DEFAULTS)
def index_vector_space(settings: Settings, space: str, force: bool = False) -> dict[str, object]:
    """The index of `space` ("calibrated" or "raw"), rebuilt only when its vectors, the item
    indices or the build settings changed, or when the stored files fail their check."""
    store = store_for(settings)
    logger = get_run_logger()
    files = IndexFiles(store, space)
    if not store.exists(files.table):
        logger.info("index-%s: skipped, no %s table yet", space, files.table)
        return {"skipped": True, "reason": f"no {files.table} table"}
    vectors_sha = store.table_info(files.table).sha256
    inputs = fingerprint(
        INDEX_VERSION,
        space,
        build_params(settings.index),
        vectors_sha,
        store.table_info("item_index").sha256,
    )
    problem = files.check() if files.exists() else "not built yet"
    if files.exists() and problem is not None:
        logger.warning("index-%s: the stored index is not used, rebuilding: %s", space, problem)
    rebuild = problem is not None or files.fingerprint() != inputs

    def produce() -> tuple[dict, dict]:
        vectors = store.read_table(files.table)
        item_index = store.read_table("item_index", columns=["item_idx", "item_id"])
        built = build_item_index(vectors, item_index, settings.index, files.table)
        manifest = files.write(
            built.index,
            built.ids,
            vectors_sha256=vectors_sha,
            versions=built.versions,
            params=built.params,
            build_seconds=built.seconds,
            fingerprint=inputs,
        )
        keys = ("count", "dimension", "build_seconds")
        return {}, {**{k: manifest[k] for k in keys}, "type": built.params["type"]}

    return run_step(store, f"index-{space}", inputs, produce, force=force or rebuild)
