"""What every genair task shares: which failures are worth a retry, step caching, and the run
record (lineage) every flow run leaves in the storage root."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.states import State

from genair_core.llm.prompts import PROMPT_VERSION
from storage.model_cache import default_model_dir, model_id
from storage.runs import (
    COMPLETED,
    CRASHED,
    FAILED,
    RUNNING,
    RunRecord,
    StepRecord,
    abandon_runs,
    code_version,
    finish_run,
    input_snapshot,
    write_run,
    write_step,
)
from storage.sources import input_fingerprint
from storage.store import StepManifest, Store, TableInfo, fingerprint
from tasks.datasets import open_dataset
from tasks.settings import PrefectConfig, Settings

# Failures a second attempt can cure: the disk or the network hiccuped. A bad input file, a wrong
# setting or a bug fails the same way every time, so those fail the run at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    BlockingIOError,
    InterruptedError,
)


def retry_if_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect retry condition: retry only errors in TRANSIENT_ERRORS."""
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except BaseException:
        return False
    return False


# What every task is declared with. Results stay in the tables, never in Prefect's result store
# (which would pickle them). Retries come from the settings, through `with_retries`.
TASK_DEFAULTS: dict[str, object] = {
    "retry_condition_fn": retry_if_transient,
    "persist_result": False,
}


def with_retries(task: Task, prefect: PrefectConfig, retries: int | None = None) -> Task:
    """`task` retried as the [prefect] section says: `task_retries` times (or `retries`), after
    `retry_delay_s`. The one place a task's retries are set."""
    return task.with_options(
        retries=prefect.task_retries if retries is None else retries,
        retry_delay_seconds=prefect.retry_delay_s,
    )


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's logger of the current flow or task run (its lines show in the UI), or genair's
    own logger where there is no run, e.g. a stage driven from a notebook."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("genair")


def store_for(settings: Settings) -> Store:
    """The storage root's tables, writing rows stamped with the settings' run."""
    return Store(settings.storage.root, run_id=settings.run_id)


@contextlib.contextmanager
def exclusive_run(
    settings: Settings, flow: str, parameters: Mapping[str, object]
) -> Iterator[Settings]:
    """One run at a time per storage root; a second run logs that it waits, then waits. Yields
    the settings the run's tasks get, carrying the run's id (the Prefect flow run's id).

    Holding the lock, it records the run in `runs` (storage.runs: flow, `parameters`, input
    hashes, model, prompt and code versions, config hash) and, on the way out, how it ended:
    Completed, Failed (an exception) or Crashed (an interrupt). Runs still recorded as Running
    then are dead (they would hold the lock) and are marked Crashed."""
    store = store_for(settings)
    logger = run_logger()

    def waiting() -> None:
        logger.warning("another genair run holds %s; waiting for it", store.root)

    with store.exclusive(on_wait=waiting):
        run_id = _flow_run_id()
        for dead in abandon_runs(store, run_id):
            logger.warning(
                "run %s (%s, started %s) never finished; marked Crashed: %s",
                dead.run_id,
                dead.flow,
                dead.started_at.isoformat(timespec="seconds"),
                dead.error,
            )
        record = RunRecord(
            run_id=run_id,
            flow=flow,
            parameters=dict(parameters),
            state=RUNNING,
            started_at=datetime.now(UTC),
            inputs=_input_snapshot(settings, store),
            model_id=_model_id(settings),
            prompt_version=PROMPT_VERSION,
            code_version=code_version(),
            config_hash=config_hash(settings),
        )
        write_run(store, record)
        logger.info("run %s (%s) recorded in %s", run_id, flow, store.run_path(run_id))
        try:
            yield settings.model_copy(update={"run_id": run_id})
        except Exception as err:
            _finish(store, record, settings, FAILED, err)
            raise
        except BaseException as err:  # an interrupt, a cancellation: not the code's failure
            _finish(store, record, settings, CRASHED, err)
            raise
        _finish(store, record, settings, COMPLETED, None)


def config_hash(settings: Settings) -> str:
    """A digest of the effective settings (the run id left out, as every dump leaves it)."""
    return fingerprint(settings.model_dump(mode="json"))


def _finish(
    store: Store, record: RunRecord, settings: Settings, state: str, err: BaseException | None
) -> None:
    if record.model_id is None:  # the model was converted by this run
        record = replace(record, model_id=_model_id(settings))
    error = None if err is None else f"{type(err).__name__}: {err}"
    finish_run(store, record, state, error)
    run_logger().info("run %s: %s", record.run_id, state)


def _flow_run_id() -> str:
    """The Prefect flow run's id, so the UI and the `runs` table name a run alike; a fresh id
    outside a flow run."""
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        return str(context.flow_run.id)
    return str(uuid.uuid4())


def _input_snapshot(settings: Settings, store: Store) -> dict[str, str]:
    """Hashes of what the run starts from: the dataset's source files and every stored table."""
    snapshot = input_snapshot(store)
    try:
        files = open_dataset(settings.dataset, settings.storage.cache_dir)
        snapshot["source files"] = input_fingerprint(files.input_files)
    except (OSError, ValueError) as err:  # ingest reports it; the record says it too
        snapshot["source files"] = f"unreadable: {err}"
    return snapshot


def _model_id(settings: Settings) -> str | None:
    """The archetype model's id (storage.model_cache.model_id); None while the default model has
    not been converted yet."""
    llm = settings.llm
    folder = (
        default_model_dir(settings.storage.cache_dir) if llm.model == "default" else Path(llm.model)
    )
    return model_id(folder) if (folder / "config.json").is_file() else None


def run_step(
    store: Store,
    step: str,
    fingerprint: str,
    produce: Callable[[], tuple[dict[str, TableInfo], dict[str, object]]],
    *,
    force: bool = False,
) -> dict[str, object]:
    """Run `produce` unless the step already ran on these exact inputs (or `force`); return its
    summary.

    The manifest is written only after every output table is in place, so a crash at any point
    means the next run redoes the step; outputs are replaced, never appended to.
    """
    logger = get_run_logger()
    started, rows_before = time.perf_counter(), store.rows_read
    done = None if force else store.fresh_manifest(step, fingerprint)
    if done is not None:
        logger.info("%s: up to date (inputs unchanged since %s)", step, done.completed_at)
        _record_step(store, step, done.outputs, started, rows_before, skipped=True)
        return {**done.summary, "skipped": True}
    outputs, summary = produce()
    store.write_manifest(StepManifest(step, fingerprint, outputs, summary, run_id=store.run_id))
    for info in outputs.values():
        logger.info("%s: wrote %s (%d rows)", step, info.name, info.rows)
    _record_step(store, step, outputs, started, rows_before, skipped=False)
    return {**summary, "skipped": False}


def _record_step(
    store: Store,
    step: str,
    outputs: Mapping[str, TableInfo],
    started: float,
    rows_before: int,
    *,
    skipped: bool,
) -> None:
    """The step's figures for the run summary, under the run (none outside a run)."""
    if store.run_id is None:
        return
    rows_out: Counter[str] = Counter()
    for info in outputs.values():
        rows_out[info.name] += info.rows
    record = StepRecord(
        step=step,
        skipped=skipped,
        seconds=round(time.perf_counter() - started, 3),
        rows_in=store.rows_read - rows_before,
        rows_out=dict(rows_out),
        finished_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    write_step(store, store.run_id, record)
