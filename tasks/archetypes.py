"""Archetype generation: plan which items need one, generate a batch, record an item that fails.

The engines come from the EnginePool the flow opens around the stage: one engine serves every
batch of the run, one that failed is replaced for the retry, and the flow closes them at the end.
On Dask workers each worker process has a pool of its own (tasks/runners.py).
"""

from __future__ import annotations

import time

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from genair_core import progress
from genair_core.llm.archetypes import (
    ArchetypeBatch,
    ArchetypePlan,
    ArchetypeRecipe,
    BatchContext,
    archetype_recipe,
    backfill_report,
    batch_items,
    engine_failure,
    keyed_by_item,
    make_archetypes,
    make_plan,
)
from genair_core.llm.backfill import Backfill
from genair_core.llm.engines import EnginePool
from genair_core.llm.engines.gguf import GGUF_TO_SAFETENSORS
from storage.archetype_tables import (
    drop_replaced_archetypes,
    read_archetype_state,
    read_batch_items,
    write_archetype_batch,
    write_failures,
)
from storage.model_cache import context_length, model_id, resolve_model
from tasks.common import TASK_DEFAULTS, run_logger, store_for
from tasks.datasets import make_dataset
from tasks.runners import WorkerEngines
from tasks.settings import Settings


@task(name="plan-archetypes", **TASK_DEFAULTS)
def plan_archetypes(settings: Settings, backfill: Backfill | None = None) -> ArchetypePlan:
    """The batches to generate: items without an archetype of this recipe, or with `backfill`
    exactly the items it picks. Reads only; writes nothing."""
    llm = settings.llm
    model_dir = resolve_model(llm.model, settings.storage.cache_dir, GGUF_TO_SAFETENSORS)
    recipe = archetype_recipe(llm, model_id(model_dir))
    state = read_archetype_state(
        store_for(settings),
        recipe.model_id,
        recipe.prompt_version,
        recipe.settings_id,
        kcore=llm.items == "kcore",
        dated=backfill is not None and backfill.since is not None,
    )
    plan = make_plan(
        llm,
        recipe,
        state.catalog,
        state.done,
        state.failed,
        kept=state.kept,
        item_type=make_dataset(settings.dataset).item_type,
        context_length=context_length(model_dir),
        backfill=backfill,
        updated_at=state.updated_at,
    )
    get_run_logger().info(
        "archetypes: %d items, %d up to date, %d failed before (skipped), %d to generate in "
        "%d batches (%s, %s, %s)",
        plan.candidates,
        plan.up_to_date,
        plan.failed_before,
        plan.pending,
        len(plan.batches),
        recipe.model_id,
        recipe.prompt_version,
        recipe.settings_id,
    )
    if plan.pending:
        progress.begin("archetypes", total=plan.pending, unit="items")
    return plan


@task(name="generate-archetypes", **{**TASK_DEFAULTS, "retry_condition_fn": None})
def generate_archetype_batch(
    settings: Settings,
    context: BatchContext,
    batch: ArchetypeBatch,
    engines: EnginePool | WorkerEngines,
) -> dict[str, int]:
    """Generate, embed, validate and write one batch (its part files replace earlier attempts)."""
    started = time.perf_counter()
    store = store_for(settings)
    items = batch_items(batch, read_batch_items(store, batch.item_ids))
    model_dir = resolve_model(settings.llm.model, settings.storage.cache_dir, GGUF_TO_SAFETENSORS)
    progress.note("archetypes", f"batch of {len(items)} in the engine")
    with progress.counting("archetypes", len(items)):
        with engines.using(settings.llm, model_dir) as engine:
            in_engine = time.perf_counter()
            rows, failures = make_archetypes(
                engine,
                items,
                context.item_type,
                context.recipe,
                context.max_prompt_tokens,
                _run_id(),
            )
            out_of_engine = time.perf_counter()
        write_archetype_batch(
            store,
            context.recipe.model_id,
            batch.key,
            keyed_by_item(context.recipe, rows),
            keyed_by_item(context.recipe, failures),
        )
    ended = time.perf_counter()
    run_logger().info(
        "archetypes: batch of %d in %.1f s: %.1f s to read the items and get the engine, %.1f s "
        "generating and embedding, %.1f s writing",
        len(items),
        ended - started,
        in_engine - started,
        out_of_engine - in_engine,
        ended - out_of_engine,
    )
    return {
        "generated": len(rows),
        "failed": len(failures),
        "truncated": sum(bool(r["truncated"]) for r in rows),
        "completion_tokens": sum(int(r["completion_tokens"]) for r in rows),
    }


@task(name="drop-replaced-archetypes", **TASK_DEFAULTS)
def drop_replaced(settings: Settings, recipe: ArchetypeRecipe) -> dict[str, object]:
    """After archetypes were generated again (a backfill, or the rerun of one cut short): the
    older row of each regenerated key is removed, so every archetype key has one row."""
    progress.end("archetypes")
    removed = drop_replaced_archetypes(store_for(settings), recipe.model_id)
    if removed:
        get_run_logger().info("archetypes: removed %d rows replaced by newer ones", removed)
    return {"replaced_rows_removed": removed}


@task(name="report-backfill-plan", **TASK_DEFAULTS)
def report_backfill_plan(plan: ArchetypePlan, then: list[str]) -> dict[str, object]:
    """A dry run's answer: what the backfill would regenerate, logged and as a Markdown
    artifact (`genair-backfill-dry-run`)."""
    summary, markdown = backfill_report(plan, then)
    create_markdown_artifact(
        key="genair-backfill-dry-run", markdown=markdown, description="backfill dry run"
    )
    get_run_logger().info(
        "backfill dry run: would regenerate %d items in %d batches (%s), then %s; nothing written",
        summary["items"],
        summary["batches"],
        ", ".join(map(str, summary["item_ids"])),
        ", ".join(then) or "nothing",
    )
    return summary


@task(name="record-archetype-failure", **TASK_DEFAULTS)
def record_engine_failure(
    settings: Settings, context: BatchContext, batch: ArchetypeBatch, error: str
) -> None:
    """An item whose batch of one kept failing: recorded (under its item key, like every
    failure), then skipped by this run and by later ones unless llm.retry_failed is set."""
    store = store_for(settings)
    items = batch_items(batch, read_batch_items(store, batch.item_ids))
    rows = [engine_failure(item, context.recipe, error, _run_id()) for item in items]
    write_failures(store, context.recipe.model_id, keyed_by_item(context.recipe, rows))
    progress.advance("archetypes", len(items), detail=f"item {batch.item_ids[0]} failed")
    get_run_logger().warning("archetypes: item %s failed and is skipped: %s", batch.item_ids, error)


def _run_id() -> str:
    """The flow run's id ("local" when a task function is called outside any run)."""
    try:
        context = get_run_context()
    except MissingContextError:
        return "local"
    task_run = getattr(context, "task_run", None)
    return str(task_run.flow_run_id) if task_run is not None else "local"
