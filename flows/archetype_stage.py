"""The archetype stage: every planned batch as its own task, a failing batch halved down to the
item at fault, with a progress artifact in the UI."""

from __future__ import annotations

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from genair_core.archetypes import ArchetypeBatch, ArchetypePlan, BatchContext
from genair_core.engines import EnginePool
from tasks.archetypes import generate_archetype_batch, record_engine_failure
from tasks.settings import Settings


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
