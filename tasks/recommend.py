"""The `recommend` stage: every user's top-K list from the served recommender, new items
included, committed as one version of the Delta table `recommendations`
(genair_core.recommenders.serving)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from genair_core.config import ModelConfig
from genair_core.recommenders.run_spec import RunSpec
from genair_core.recommenders.serving import (
    ServedRun,
    choose_served_run,
    recommend,
    recommendation_table,
    serving_model,
    user_histories,
)
from storage.delta import commit_version, commits
from storage.recommenders import (
    StoredRun,
    finished_runs,
    read_catalog_vectors,
    read_item_order,
    read_stored_run,
    validation_ndcg,
)
from storage.store import Store, fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.recommenders import run_key, warm_start
from tasks.settings import ConfigError, Settings

RECOMMEND_VERSION = 1
TABLE = "recommendations"


@task(name="export-recommendations", **TASK_DEFAULTS)
def export_recommendations(settings: Settings, force: bool = False) -> dict[str, object]:
    """Serve `[recommend] serve` (the best finished run that can score new items, by default)
    on today's catalog and interactions: one commit of `recommendations` per change of its
    inputs. Without a finished run, says so in one line and skips."""
    store = store_for(settings)
    cfg = settings.recommend
    logger = get_run_logger()
    scored = validation_ndcg(store, finished_runs(store))
    try:
        name = choose_served_run(cfg.serve, scored)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if name is None:
        reason = "no finished recommender run of a variant that can score new items"
        logger.info("recommend: skipped: %s", reason)
        return {"skipped": True, "reason": reason}
    stored = read_stored_run(store, name)
    served = served_run(settings, store, stored, scored[name])
    if not served.serves_new_items:
        logger.warning(
            "recommend: serving %s, an `id` model: items it never trained on cannot appear in "
            "the lists",
            name,
        )
    tables = store.table_hashes(["items", "interactions", "item_embeddings"])
    inputs = fingerprint(RECOMMEND_VERSION, name, served.run_id, cfg.model_dump(), tables)

    def produce() -> tuple[dict, dict]:
        latest = commits(store, TABLE)[:1]
        if latest and latest[0]["metadata"].get("inputs") == inputs:  # committed, then killed
            return {}, {**latest[0]["metadata"], "version": latest[0]["version"]}
        catalog_ids, vectors = read_catalog_vectors(store)
        model, items = serving_model(served, catalog_ids, vectors)
        interactions = store.read_table("interactions", columns=["user_id", "item_id", "timestamp"])
        histories = user_histories(interactions, items.item_ids)
        lists = recommend(model, items, histories, cfg.k, cfg.exact_max_items, cfg.ef_search)
        rows = recommendation_table(lists, items, name, str(store.run_id))
        summary = {"served_run": name, **lists.summary(items)}
        commit = commit_version(
            store,
            TABLE,
            rows,
            run_id=str(store.run_id),
            metadata={**summary, "inputs": inputs},
            keep_versions=cfg.keep_versions,
        )
        summary["version"] = commit.version
        create_markdown_artifact(
            key="genair-recommendations",
            markdown=_artifact(summary),
            description="The nightly export of every user's top-K list",
        )
        return {}, summary

    return run_step(store, "recommend", inputs, produce, force=force)


def served_run(
    settings: Settings, store: Store, stored: StoredRun, scored: dict[str, object]
) -> ServedRun:
    """The stored run as served. A run trained before its settings and item order were stored
    with it is served with today's settings and today's item_index, once its run key shows those
    are the ones it was trained on."""
    meta = stored.metadata
    backbone, variant = str(scored["backbone"]), str(scored["variant"])
    spec = RunSpec.of(settings.recommenders, backbone, variant, int(scored["seed"]))
    if "model" in meta:
        model, input_dims = ModelConfig.model_validate_json(meta["model"]), int(meta["input_dims"])
    else:
        model, input_dims = spec.model, settings.pooling.input_dims
    item_ids = stored.item_ids
    if item_ids is None:
        key = run_key(store, spec, input_dims, warm_start(settings, store, spec))
        if key[:16] != meta["run_id"]:
            raise ConfigError(
                f"{stored.name} was trained before runs recorded their item order, on tables "
                "that have changed since: retrain it (genair run --from negatives) to serve it"
            )
        item_ids = read_item_order(store)["item_id"].to_pylist()
    return ServedRun(
        stored.name,
        meta["run_id"],
        backbone,
        variant,
        model,
        input_dims,
        stored.weights,
        item_ids,
    )


def _artifact(summary: dict[str, object]) -> str:
    return "\n".join(
        [
            "# Nightly recommendation lists",
            "",
            f"- served run: `{summary['served_run']}`",
            f"- users: {summary['users']:,}; rows: {summary['rows']:,}",
            f"- lists holding a new item: {100 * float(summary['lists_with_a_new_item']):.1f}%",
            f"- popularity lists (users the model cannot represent): {summary['popularity_lists']}",
            f"- search: {summary['search']}; table version: {summary['version']}",
        ]
    )
