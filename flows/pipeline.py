"""The genair pipeline: catalog + interactions → validated tables → splits → co-occurrence →
archetypes and hidden-state embeddings → pooled item vectors → recommenders trained and
evaluated → results table."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.stages import STAGES
from genair_core.archetypes import ArchetypeBatch, ArchetypePlan, BatchContext
from genair_core.engines import EngineFactory, EnginePool, make_engine
from genair_core.experiment import share_cpu
from tasks.archetypes import generate_archetype_batch, plan_archetypes, record_engine_failure
from tasks.calibration import calibrate_items
from tasks.common import exclusive_run
from tasks.cooccurrence import build_cooccurrence
from tasks.index import build_index
from tasks.ingest import ingest_dataset
from tasks.pooling import pool_item_embeddings
from tasks.preprocess import split_interactions
from tasks.recommenders import publish_results, sample_eval_negatives, train_recommender
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
    with exclusive_run(settings):
        return _run_stages(settings, wanted, force, engine_factory)


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


def generate_archetypes(
    settings: Settings, plan: ArchetypePlan, engines: EnginePool
) -> dict[str, object]:
    """Every planned batch, one task each, with a progress bar in the UI."""
    totals = {
        "items": plan.candidates,
        "up_to_date": plan.up_to_date,
        "failed_before": plan.failed_before,
        "batches": len(plan.batches),
    }
    counts = {"generated": 0, "failed": 0, "truncated": 0, "completion_tokens": 0}
    progress = create_progress_artifact(
        progress=0.0 if plan.batches else 100.0,
        key="genair-archetypes",
        description=f"archetypes: {len(plan.batches)} batches to generate",
    )
    for done, batch in enumerate(plan.batches, start=1):
        _isolating_failures(settings, plan.context, batch, engines, counts)
        update_progress_artifact(progress, progress=100.0 * done / len(plan.batches))
    return {**totals, **counts, "skipped": not plan.batches}


def train_recommenders(settings: Settings, force: bool) -> dict[str, object]:
    """Every configured (backbone, variant, seed) as its own task, at most `workers` training at
    once: a sub-flow whose thread pool has `workers` threads takes the runs in order."""
    runner = ThreadPoolTaskRunner(max_workers=settings.recommenders.workers)
    return _train_runs.with_options(task_runner=runner)(settings, force)


@flow(name="train-recommenders", persist_result=False, validate_parameters=False)
def _train_runs(settings: Settings, force: bool) -> dict[str, object]:
    cfg = settings.recommenders
    runs = cfg.runs()
    threads = share_cpu(cfg.workers)
    train = train_recommender.with_options(
        retries=settings.prefect.task_retries, retry_delay_seconds=settings.prefect.retry_delay_s
    )
    backbones, variants, seeds = ([run[i] for run in runs] for i in range(3))
    futures = train.map(unmapped(settings), backbones, variants, seeds, force=unmapped(force))
    summaries = futures.result()
    return {
        "runs": len(runs),
        "trained": sum(not s["skipped"] for s in summaries),
        "workers": cfg.workers,
        "threads_per_run": threads,
        "test_ndcg@10 (full ranking)": {s["run"]: s["test_ndcg@10"] for s in summaries},
    }


def _isolating_failures(
    settings: Settings,
    context: BatchContext,
    batch: ArchetypeBatch,
    engines: EnginePool,
    counts: dict[str, int],
) -> None:
    """Run a batch; if it keeps failing, run its halves, down to the single item at fault, which
    is recorded as a failure and skipped. Adds to `counts`."""
    state = generate_archetype_batch.with_options(retries=settings.llm.batch_retries)(
        settings, context, batch, engines, return_state=True
    )
    if state.is_completed():
        for name, n in state.result().items():
            counts[name] += n
        return
    if len(batch.items) > 1:
        for half in batch.halves(context.recipe):
            _isolating_failures(settings, context, half, engines, counts)
        return
    error = state.result(raise_on_failure=False)
    record_engine_failure(settings, context, batch, f"{type(error).__name__}: {error}")
    counts["failed"] += 1
    if counts["failed"] > settings.llm.max_failed_items:
        raise RuntimeError(
            f"{counts['failed']} items failed in this run (llm.max_failed_items is "
            f"{settings.llm.max_failed_items}): the engine or the settings are the likelier "
            f"cause. Last error: {type(error).__name__}: {error}"
        )
