"""The genair pipeline: catalog + interactions → validated tables → splits → co-occurrence →
archetypes and hidden-state embeddings → pooled item vectors → recommenders trained and
evaluated → results table."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.archetype_stage import generate_archetypes
from flows.stages import STAGES
from flows.training import train_recommenders
from genair_core.engines import EngineFactory, EnginePool, make_engine
from tasks.archetypes import plan_archetypes
from tasks.calibration import calibrate_items
from tasks.common import exclusive_run
from tasks.cooccurrence import build_cooccurrence
from tasks.index import build_index
from tasks.ingest import ingest_dataset
from tasks.pooling import pool_item_embeddings
from tasks.preprocess import split_interactions
from tasks.recommenders import publish_results, sample_eval_negatives
from tasks.retrieval import evaluate_retrieval
from tasks.run_summary import publish_summary
from tasks.settings import Settings, load_settings


@flow(name="genair-pipeline")
def genair_pipeline(
    config_path: str | None = None,
    force: bool = False,
    until: str = STAGES[-1],
    start: str = STAGES[0],
) -> dict[str, dict]:
    """Run the stages from `start` to `until` on the configured dataset. Steps whose inputs did
    not change are skipped (`force` reruns them); outputs are replaced, never appended to. A later
    `start` uses the tables earlier stages left, e.g. retraining recommenders on today's vectors
    without looking at the catalog."""
    return run_pipeline(config_path, force=force, until=until, start=start)


def run_pipeline(
    config_path: str | None = None,
    *,
    force: bool = False,
    until: str = STAGES[-1],
    start: str = STAGES[0],
    engine_factory: EngineFactory = make_engine,
) -> dict[str, dict]:
    """What `genair_pipeline` runs, with the archetype engines made by `engine_factory`. Call it
    inside a flow: tests run it in a flow of their own to hand in a scripted engine, which the
    deployed flow's parameters (a JSON form in the UI) cannot carry."""
    for stage in (start, until):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if STAGES.index(start) > STAGES.index(until):
        raise ValueError(f"stage {start!r} comes after {until!r}")
    settings = load_settings(Path(config_path) if config_path else None)
    wanted = STAGES[STAGES.index(start) : STAGES.index(until) + 1]
    parameters = {"force": force, "start": start, "until": until}
    with exclusive_run(settings, "genair-pipeline", parameters) as run_settings:
        return _run_stages(run_settings, wanted, force, engine_factory)


def _run_stages(
    settings: Settings, wanted: tuple[str, ...], force: bool, engine_factory: EngineFactory
) -> dict[str, dict]:
    retry = {
        "retries": settings.prefect.task_retries,
        "retry_delay_seconds": settings.prefect.retry_delay_s,
    }

    summary: dict[str, dict] = {}
    if "ingest" in wanted:
        summary["ingest"] = ingest_dataset.with_options(**retry)(settings, force=force)
    if "split" in wanted:
        summary["split"] = split_interactions.with_options(**retry)(settings, force=force)
    if "cooccurrence" in wanted:
        summary["cooccurrence"] = build_cooccurrence.with_options(**retry)(settings, force=force)
    if "archetypes" in wanted or "pooling" in wanted:
        with EnginePool(engine_factory) as engines:
            plan = plan_archetypes.with_options(**retry)(settings)
            if "archetypes" in wanted:
                summary["archetypes"] = generate_archetypes(settings, plan, engines)
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
        summary["negatives"] = sample_eval_negatives.with_options(**retry)(settings, force=force)
    if "recommenders" in wanted:
        summary["recommenders"] = train_recommenders(settings, force)
    if "results" in wanted:
        summary["results"] = publish_results.with_options(**retry)(settings)
    publish_summary.with_options(**retry)(summary)
    return summary
