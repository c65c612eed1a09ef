"""What every genair task shares: which failures are worth a retry, and step caching."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.logging import get_run_logger
from prefect.states import State

from storage.store import StepManifest, Store, TableInfo
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


# What every task is declared with: the [prefect] section's default retries (the flow applies the
# configured ones). Results stay in the tables, never in Prefect's result store (which would
# pickle them).
_PREFECT = PrefectConfig()
TASK_DEFAULTS: dict[str, object] = {
    "retries": _PREFECT.task_retries,
    "retry_delay_seconds": _PREFECT.retry_delay_s,
    "retry_condition_fn": retry_if_transient,
    "persist_result": False,
}


def store_for(settings: Settings) -> Store:
    return Store(settings.storage.root)


@contextlib.contextmanager
def exclusive_run(
    settings: Settings, flow: str, parameters: Mapping[str, object]
) -> Iterator[Settings]:
    """One run at a time per storage root; a second run logs that it waits, then waits. Yields
    the settings the run's tasks get. `flow` and `parameters` name the run (for its lineage)."""
    store = store_for(settings)

    def waiting() -> None:
        get_run_logger().warning("another genair run holds %s; waiting for it", store.root)

    with store.exclusive(on_wait=waiting):
        yield settings


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
    done = None if force else store.fresh_manifest(step, fingerprint)
    if done is not None:
        logger.info("%s: up to date (inputs unchanged since %s)", step, done.completed_at)
        return {**done.summary, "skipped": True}
    outputs, summary = produce()
    store.write_manifest(StepManifest(step, fingerprint, outputs, summary))
    for info in outputs.values():
        logger.info("%s: wrote %s (%d rows)", step, info.name, info.rows)
    return {**summary, "skipped": False}
