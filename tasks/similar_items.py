"""The nightly "more like this" feed: every item's top-K neighbours from the FAISS index of the
configured space, new items included, as one version of the Delta table `similar_items` per run
(storage.delta). A version records the index it came from (the index file's SHA-256), which
`genair similar` compares with the index of today."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from genair_core.item_space.index import NEIGHBOURS_VERSION, all_neighbours, prepare_for_search
from storage import delta
from storage.index import IndexFiles
from storage.store import fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.settings import Settings

TABLE = "similar_items"


@task(name="similar-items", **TASK_DEFAULTS)
def export_similar_items(settings: Settings, force: bool = False) -> dict[str, object]:
    """A new version of `similar_items` when its current one was made from another index, k or
    space (or with `force`); nothing otherwise. Skipped until the space's index exists."""
    store = store_for(settings)
    logger = get_run_logger()
    cfg = settings.similar_items
    files = IndexFiles(store, cfg.space)
    if not files.exists():
        logger.info("similar-items: skipped, no %s index yet", cfg.space)
        return {"skipped": True, "reason": f"no {cfg.space} index"}
    if settings.run_id is None:
        raise ValueError("similar-items commits one Delta version per run: run it in a flow run")
    stored = files.load()
    index_sha256 = str(stored.manifest["files"]["index"])
    inputs = fingerprint(NEIGHBOURS_VERSION, cfg.k, cfg.space, index_sha256)
    kept = delta.commits(store, TABLE)
    if kept and kept[0]["metadata"].get("inputs") == inputs and not force:
        logger.info("similar-items: up to date (version %d has this index's)", kept[0]["version"])
        return {**_summary(kept[0]["metadata"], kept[0]["version"]), "skipped": True}

    def produce() -> tuple[dict, dict]:
        search_index = prepare_for_search(stored.index, settings.index)
        table = all_neighbours(stored.index, stored.ids, cfg.k, cfg.space, search_index)
        figures = {"items": stored.index.ntotal, "rows": table.num_rows, "k": cfg.k}
        metadata = {**figures, "space": cfg.space, "index_sha256": index_sha256, "inputs": inputs}
        commit = delta.commit_version(
            store,
            TABLE,
            table,
            run_id=settings.run_id,
            metadata=metadata,
            keep_versions=cfg.keep_versions,
        )
        summary = _summary(metadata, commit.version)
        create_markdown_artifact(
            key="genair-similar-items",
            markdown=_markdown(summary, commit.created),
            description="the similar_items export",
        )
        logger.info("similar-items: %s", summary)
        return {}, summary

    return run_step(store, "similar-items", inputs, produce, force=True)


def _summary(metadata: dict[str, object], version: int) -> dict[str, object]:
    keys = ("items", "rows", "k", "space")
    return {**{key: metadata[key] for key in keys}, "version": version}


def _markdown(summary: dict[str, object], created: bool) -> str:
    committed = "committed" if created else "already committed by this run"
    return (
        f"### `{TABLE}` version {summary['version']} ({committed})\n\n"
        "| items | rows | neighbours an item | space |\n|---:|---:|---:|---|\n"
        f"| {summary['items']:,} | {summary['rows']:,} | {summary['k']} | {summary['space']} |\n"
    )
