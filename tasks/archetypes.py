"""Archetype generation: plan which items need one, generate a batch, record an item that fails.

The engine is loaded once per process and reused by every batch task of the run (tasks run in
the flow's process); `shutdown_engines` stops its processes at the end of the flow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from genair_core.archetypes import (
    ArchetypeBatch,
    Identity,
    engine_failure,
    item_key,
    make_archetypes,
    pending,
    plan_batches,
    settings_id,
)
from genair_core.config import Settings
from genair_core.datasets import open_dataset
from genair_core.engines import ArchetypeEngine, GenerationSettings, make_engine
from genair_core.prompts import PROMPT_VERSION
from storage.model_cache import context_length, model_id, resolve_model
from storage.store import Store
from tasks.common import TASK_DEFAULTS, store_for

_engines: dict[tuple[str, str, GenerationSettings, float], ArchetypeEngine] = {}


@dataclass(frozen=True)
class BatchContext:
    """What every batch task needs besides its batch: small, so task inputs stay small."""

    identity: Identity
    item_type: str
    max_prompt_tokens: int


@dataclass(frozen=True)
class ArchetypePlan:
    identity: Identity
    batches: tuple[ArchetypeBatch, ...]
    candidates: int  # items that should have an archetype
    up_to_date: int  # of those, items whose archetype already exists
    failed_before: int  # of those, items whose archetype failed in an earlier run (skipped)
    item_type: str
    max_prompt_tokens: int

    @property
    def context(self) -> BatchContext:
        return BatchContext(self.identity, self.item_type, self.max_prompt_tokens)


def generation_settings(settings: Settings) -> GenerationSettings:
    llm = settings.llm
    return GenerationSettings(
        temperature=llm.temperature,
        top_p=llm.top_p,
        repetition_penalty=llm.repetition_penalty,
        max_new_tokens=llm.max_new_tokens,
        seed=llm.seed,
        dtype=llm.dtype,
    )


@task(name="plan-archetypes", **TASK_DEFAULTS)
def plan_archetypes(settings: Settings) -> ArchetypePlan:
    llm = settings.llm
    store = store_for(settings)
    model_dir = resolve_model(llm.model, settings.storage.cache_dir)
    identity = Identity(
        model_id=model_id(model_dir),
        prompt_version=PROMPT_VERSION,
        settings_id=settings_id(
            llm.engine, generation_settings(settings), max_prompt_tokens=llm.max_prompt_tokens
        ),
        engine=llm.engine,
    )
    candidates = _candidates(store, settings)
    done = store.read_parts(
        "archetypes",
        partition=identity.model_id,
        columns=["item_id", "content_hash"],
        filter=(pc.field("prompt_version") == identity.prompt_version)
        & (pc.field("settings_id") == identity.settings_id),
    )
    done_pairs = _pairs(done)
    failed_pairs = (
        []
        if llm.retry_failed
        else _pairs(
            store.read_parts(
                "archetype_failures",
                partition=identity.model_id,
                columns=["item_id", "content_hash"],
                filter=(pc.field("prompt_version") == identity.prompt_version)
                & (pc.field("settings_id") == identity.settings_id),
            )
        )
    )
    todo = pending(candidates, done_pairs + failed_pairs)
    max_prompt = llm.max_prompt_tokens or context_length(model_dir) - llm.max_new_tokens
    if max_prompt < 1:
        raise ValueError(
            f"llm.max_new_tokens ({llm.max_new_tokens}) leaves no room for a prompt in the "
            f"model's context ({context_length(model_dir)} tokens)"
        )
    plan = ArchetypePlan(
        identity=identity,
        batches=tuple(plan_batches(todo, llm.batch_size, identity)),
        candidates=len(candidates),
        up_to_date=len(done_pairs),
        failed_before=len(failed_pairs),
        item_type=open_dataset(settings.dataset, settings.storage.cache_dir).item_type,
        max_prompt_tokens=max_prompt,
    )
    get_run_logger().info(
        "archetypes: %d items, %d up to date, %d failed before (skipped), %d to generate in "
        "%d batches (%s, %s, %s)",
        plan.candidates,
        plan.up_to_date,
        plan.failed_before,
        len(todo),
        len(plan.batches),
        identity.model_id,
        identity.prompt_version,
        identity.settings_id,
    )
    return plan


def _pairs(table: pa.Table | None) -> list[tuple[str, str]]:
    if table is None:
        return []
    return list(zip(table["item_id"].to_pylist(), table["content_hash"].to_pylist(), strict=True))


def _candidates(store: Store, settings: Settings) -> list[tuple[str, str]]:
    items = store.read_table("items", columns=["item_id", "content_hash"])
    if settings.llm.items == "kcore":
        kept = store.read_table("item_index", columns=["item_id"])["item_id"]
        items = items.filter(pc.is_in(items["item_id"], value_set=kept.combine_chunks()))
    items = items.sort_by("item_id")
    if settings.llm.max_items:
        items = items.slice(0, settings.llm.max_items)
    return list(zip(items["item_id"].to_pylist(), items["content_hash"].to_pylist(), strict=True))


@task(name="generate-archetypes", **{**TASK_DEFAULTS, "retry_condition_fn": None})
def generate_archetype_batch(
    settings: Settings, context: BatchContext, batch: ArchetypeBatch
) -> dict[str, int]:
    """Generate, embed, validate and write one batch (its part files replace earlier attempts)."""
    store = store_for(settings)
    items = _batch_items(store, batch)
    engine = _engine(settings)
    try:
        rows, failures = make_archetypes(
            engine,
            items,
            context.item_type,
            context.identity,
            context.max_prompt_tokens,
            _run_id(),
        )
    except (ValueError, TypeError):
        raise  # a bad input: the engine is fine
    except Exception:
        _drop_engine(settings)  # it may have died: a retry starts a fresh one
        raise
    partition = context.identity.model_id
    # Failures are kept one part per item, so an item's failure is replaced when it fails again
    # and removed when it succeeds, however the items were batched.
    for row in failures:
        store.write_part("archetype_failures", partition, _item_key(context.identity, row), [row])
    if rows:
        store.write_part("archetypes", partition, batch.key, rows)
    for row in rows:
        store.delete_part("archetype_failures", partition, _item_key(context.identity, row))
    return {
        "generated": len(rows),
        "failed": len(failures),
        "truncated": sum(bool(r["truncated"]) for r in rows),
        "completion_tokens": sum(int(r["completion_tokens"]) for r in rows),
    }


@task(name="record-archetype-failure", **TASK_DEFAULTS)
def record_engine_failure(
    settings: Settings, context: BatchContext, batch: ArchetypeBatch, error: str
) -> None:
    """An item whose batch of one kept failing: recorded (under its item key, like every
    failure), then skipped by this run and by later ones unless llm.retry_failed is set."""
    store = store_for(settings)
    for item in _batch_items(store, batch):
        row = engine_failure(item, context.identity, error, _run_id())
        key = _item_key(context.identity, row)
        store.write_part("archetype_failures", context.identity.model_id, key, [row])
    get_run_logger().warning("archetypes: item %s failed and is skipped: %s", batch.item_ids, error)


def shutdown_engines() -> None:
    """Stop every engine this process started (vLLM's engine-core processes included). A close
    that fails is logged and the others are still closed."""
    while _engines:
        _, engine = _engines.popitem()
        _close_quietly(engine)


def _close_quietly(engine: ArchetypeEngine) -> None:
    try:
        engine.close()
    except Exception:  # the error being handled, if any, matters more than this one
        logging.getLogger(__name__).exception("closing the %s engine failed", engine.name)


def _engine(settings: Settings) -> ArchetypeEngine:
    key = _engine_key(settings)
    if key not in _engines:
        model_dir = resolve_model(settings.llm.model, settings.storage.cache_dir)
        options = (
            {"kv_cache_gib": settings.llm.kv_cache_gib} if settings.llm.engine == "vllm" else {}
        )
        _engines[key] = make_engine(
            settings.llm.engine, model_dir, generation_settings(settings), **options
        )
    return _engines[key]


def _drop_engine(settings: Settings) -> None:
    engine = _engines.pop(_engine_key(settings), None)
    if engine is not None:
        _close_quietly(engine)


def _engine_key(settings: Settings) -> tuple[str, str, GenerationSettings, float]:
    llm = settings.llm
    return (llm.engine, llm.model, generation_settings(settings), llm.kv_cache_gib)


def _batch_items(store: Store, batch: ArchetypeBatch) -> list[dict]:
    table = store.read_table_where("items", "item_id", batch.item_ids)
    by_id = {row["item_id"]: row for row in table.to_pylist()}
    items = []
    for item_id, content_hash in batch.items:
        row = by_id.get(item_id)
        if row is None or row["content_hash"] != content_hash:
            raise ValueError(
                f"item {item_id!r} changed or vanished since the plan was made; rerun the flow"
            )
        items.append(row)
    return items


def _run_id() -> str:
    """The flow run's id ("local" when a task function is called outside any run)."""
    try:
        context = get_run_context()
    except MissingContextError:
        return "local"
    task_run = getattr(context, "task_run", None)
    return str(task_run.flow_run_id) if task_run is not None else "local"


def _item_key(identity: Identity, row: dict) -> str:
    return item_key(identity, str(row["item_id"]), str(row["content_hash"]))
