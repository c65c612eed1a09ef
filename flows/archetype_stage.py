"""The archetype stage: every planned batch as its own task on the configured task runner
(tasks/runners.py), a failing batch halved down to the item at fault, with a progress artifact in
the UI."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger

from genair_core.llm.archetypes import ArchetypeBatch, ArchetypePlan
from genair_core.llm.engines import EnginePool
from tasks.archetypes import drop_replaced, generate_archetype_batch, record_engine_failure
from tasks.common import with_retries
from tasks.pooling import pool_item_embeddings
from tasks.runners import batch_runner
from tasks.settings import Settings

if TYPE_CHECKING:
    from flows.pipeline import StageRun

# Batches submitted ahead of the ones running, per slot: enough to keep every worker busy, few
# enough that a 10M-item catalog (156k batches) is never submitted at once.
QUEUED_PER_SLOT = 2


def run_archetype_stage(run: StageRun) -> dict[str, dict]:
    """The `archetypes` stage: the planned batches on engines of the stage's own (closed before
    the next stage), then the rows that new ones replaced dropped."""
    plan = run.archetype_plan()
    with EnginePool(run.engine_factory) as engines:
        summary = generate_archetypes(run.settings, plan, engines)
    return {"archetypes": summary | run.task(drop_replaced)(run.settings, plan.recipe)}


def run_pooling_stage(run: StageRun) -> dict[str, dict]:
    """The `pooling` stage: item vectors from the archetypes of the run's recipe."""
    recipe = run.archetype_plan().recipe
    return {"pooling": run.task(pool_item_embeddings)(run.settings, recipe, force=run.force)}


def generate_archetypes(
    settings: Settings, plan: ArchetypePlan, engines: EnginePool
) -> dict[str, object]:
    """Every planned batch, one task each, with a progress bar (items done) in the UI."""
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
    if not plan.batches:
        return {**totals, **counts, "skipped": True}

    generate = with_retries(generate_archetype_batch, settings.prefect, settings.llm.batch_retries)
    to_do = sum(len(batch.items) for batch in plan.batches)
    done = 0
    waiting = deque(plan.batches)
    running: deque[tuple[ArchetypeBatch, PrefectFuture]] = deque()
    with batch_runner(settings.prefect, engines) as batches:
        get_run_logger().info("archetypes: %d batches run on %s", len(waiting), batches.where)
        while waiting or running:
            while waiting and len(running) < QUEUED_PER_SLOT * batches.slots:
                batch = waiting.popleft()
                parameters = {
                    "settings": settings,
                    "context": plan.context,
                    "batch": batch,
                    "engines": batches.engines,
                }
                running.append((batch, batches.runner.submit(generate, parameters)))
            batch, future = running.popleft()
            try:
                batch_counts = future.result()
            except Exception as error:  # after its retries: split it, or record the item
                if len(batch.items) > 1:
                    waiting.extendleft(reversed(batch.halves(plan.context.recipe)))
                    continue
                _record_failed_item(settings, plan, batch, error, counts)
            else:
                for name, n in batch_counts.items():
                    counts[name] += n
            done += len(batch.items)
            update_progress_artifact(progress, progress=100.0 * done / to_do)
    return {**totals, **counts, "skipped": False}


def _record_failed_item(
    settings: Settings,
    plan: ArchetypePlan,
    batch: ArchetypeBatch,
    error: BaseException,
    counts: dict[str, int],
) -> None:
    """A batch of one that kept failing: its item is recorded as a failure and skipped; too many
    such items stop the run."""
    record = with_retries(record_engine_failure, settings.prefect)
    record(settings, plan.context, batch, f"{type(error).__name__}: {error}")
    counts["failed"] += 1
    if counts["failed"] > settings.llm.max_failed_items:
        raise RuntimeError(
            f"{counts['failed']} items failed in this run (llm.max_failed_items is "
            f"{settings.llm.max_failed_items}): the engine or the settings are the likelier "
            f"cause. Last error: {type(error).__name__}: {error}"
        )
