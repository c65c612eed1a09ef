"""genair-full, the whole pipeline: catalog + interactions → validated tables → splits →
co-occurrence → archetypes and hidden-state embeddings → pooled item vectors → calibration →
FAISS indexes → retrieval → recommenders trained and evaluated → results table.

`run_stages` is what all three flows run (genair-full, genair-nightly-refresh in refresh.py,
genair-backfill in backfill.py), each on its own list of stages."""

from __future__ import annotations

from prefect import flow

from flows.archetype_stage import generate_archetypes
from flows.params import FullParams, Stage
from flows.stages import STAGES
from flows.training import train_recommenders
from genair_core.archetypes import Backfill
from genair_core.engines import EngineFactory, EnginePool, make_engine
from tasks.archetypes import drop_replaced, plan_archetypes
from tasks.calibration import calibrate_items
from tasks.common import exclusive_run
from tasks.cooccurrence import build_cooccurrence
from tasks.index import build_index
from tasks.ingest import ingest_dataset
from tasks.pooling import pool_item_embeddings
from tasks.preprocess import split_interactions
from tasks.recommenders import publish_results, sample_eval_negatives
from tasks.report import write_report_task
from tasks.retrieval import evaluate_retrieval
from tasks.run_summary import publish_summary
from tasks.settings import RecommenderPolicy, Settings

FLOW_NAME = "genair-full"
RECOMMENDER_STAGES = ("negatives", "recommenders", "results")


@flow(name=FLOW_NAME)
def genair_full(
    config_path: str | None = None,
    profile: str | None = None,
    force: bool = False,
    start: Stage = STAGES[0],
    until: Stage = STAGES[-1],
) -> dict[str, dict]:
    """Every stage from `start` to `until` on the configured dataset. Steps whose inputs did not
    change are skipped; outputs are replaced, never appended to. A later `start` uses the tables
    earlier stages left, e.g. retraining recommenders on today's vectors without looking at the
    catalog.

    Args:
        config_path: the genair.toml to run with (empty: genair.toml in the working directory).
        force: rerun the steps whose inputs did not change (archetypes excepted: they are keyed
            by content, model, prompt and settings; a backfill regenerates them).
        start: the first stage to run.
        until: the last stage to run.
        profile: a [profiles.NAME] bundle of settings from the config file (quick, paper);
            empty: none.
    """
    params = FullParams.checked(
        config_path=config_path, force=force, start=start, until=until, profile=profile
    )
    return run_pipeline(
        params.config_path,
        force=params.force,
        start=params.start,
        until=params.until,
        profile=params.profile,
    )


def run_pipeline(
    config_path: str | None = None,
    *,
    force: bool = False,
    until: str = STAGES[-1],
    start: str = STAGES[0],
    profile: str | None = None,
    engine_factory: EngineFactory = make_engine,
) -> dict[str, dict]:
    """What `genair_full` runs, with the archetype engines made by `engine_factory`. Call it
    inside a flow: tests run it in a flow of their own to hand in a scripted engine, which the
    deployed flow's parameters (a JSON form in the UI) cannot carry."""
    params = FullParams.checked(
        config_path=config_path, force=force, start=start, until=until, profile=profile
    )
    settings = params.settings()
    wanted = STAGES[STAGES.index(params.start) : STAGES.index(params.until) + 1]
    parameters = {**params.model_dump(mode="json"), "profile": settings.profile}
    with exclusive_run(settings, FLOW_NAME, parameters) as run_settings:
        return run_stages(run_settings, wanted, force=force, engine_factory=engine_factory)


def recommender_stages(policy: RecommenderPolicy) -> tuple[str, ...]:
    """The stages after retrieval a refresh or a backfill runs under `policy`."""
    return () if policy == "never" else RECOMMENDER_STAGES


def run_stages(
    settings: Settings,
    wanted: tuple[str, ...],
    *,
    force: bool = False,
    retrain: RecommenderPolicy = "if-inputs-changed",
    backfill: Backfill | None = None,
    engine_factory: EngineFactory = make_engine,
) -> dict[str, dict]:
    """The `wanted` stages, in pipeline order. `force` reruns steps whose inputs did not change;
    `retrain` "always" recomputes the negatives and retrains every recommender run from epoch 0
    ("if-inputs-changed": only runs whose inputs changed; "never" is the caller's: it leaves
    those stages out of `wanted`); `backfill` regenerates the archetypes of the items it picks
    instead of those that have none."""
    retry = {
        "retries": settings.prefect.task_retries,
        "retry_delay_seconds": settings.prefect.retry_delay_s,
    }
    retrain_all = retrain == "always"

    summary: dict[str, dict] = {}
    if "ingest" in wanted:
        summary["ingest"] = ingest_dataset.with_options(**retry)(settings, force=force)
    if "split" in wanted:
        summary["split"] = split_interactions.with_options(**retry)(settings, force=force)
    if "cooccurrence" in wanted:
        summary["cooccurrence"] = build_cooccurrence.with_options(**retry)(settings, force=force)
    if "archetypes" in wanted or "pooling" in wanted:
        with EnginePool(engine_factory) as engines:
            plan = plan_archetypes.with_options(**retry)(settings, backfill)
            if "archetypes" in wanted:
                summary["archetypes"] = generate_archetypes(settings, plan, engines)
                summary["archetypes"] |= drop_replaced.with_options(**retry)(settings, plan.recipe)
            if "pooling" in wanted:
                summary["pooling"] = pool_item_embeddings.with_options(**retry)(
                    settings, plan.recipe, force=force
                )
    if "calibrate" in wanted:
        summary["calibrate"] = calibrate_items.with_options(**retry)(settings, force=force)
    if "index" in wanted:
        for space in ("calibrated", "raw"):
            summary[f"index-{space}"] = build_index.with_options(**retry)(
                settings, space, force=force
            )
    if "retrieval" in wanted:
        summary["retrieval"] = evaluate_retrieval.with_options(**retry)(settings, force=force)
    if "negatives" in wanted:
        summary["negatives"] = sample_eval_negatives.with_options(**retry)(
            settings, force=force or retrain_all
        )
    if "recommenders" in wanted:
        summary["recommenders"] = train_recommenders(settings, force or retrain_all)
    if "results" in wanted:
        summary["results"] = publish_results.with_options(**retry)(settings)
    publish_summary.with_options(**retry)(summary, settings)
    write_report_task.with_options(**retry)(settings)
    return summary
