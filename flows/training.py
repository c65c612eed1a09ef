"""The recommender runs: every configured (backbone, variant, seed) as its own task in a
sub-flow, with a progress artifact in the UI."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from prefect import flow, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from genair_core import progress
from genair_core.devices import cpu_shared_by
from tasks.common import with_retries
from tasks.recommenders import train_recommender
from tasks.settings import Settings

if TYPE_CHECKING:
    from flows.pipeline import StageRun


def train_recommenders(run: StageRun) -> dict[str, dict]:
    """The `recommenders` stage: every configured (backbone, variant, seed) as its own task, at
    most `workers` training at once: a sub-flow whose thread pool has `workers` threads takes the
    runs in order."""
    runner = ThreadPoolTaskRunner(max_workers=run.settings.recommenders.workers)
    train_runs = _train_runs.with_options(task_runner=runner)
    return {"recommenders": train_runs(run.settings, run.force_training)}


@flow(name="train-recommenders", persist_result=False, validate_parameters=False)
def _train_runs(settings: Settings, force: bool) -> dict[str, object]:
    started = time.perf_counter()
    cfg = settings.recommenders
    with cpu_shared_by(cfg.workers) as threads:
        summaries = _train_side_by_side(settings, force, threads)
    return {
        "runs": len(summaries),
        "trained": sum(not s["skipped"] for s in summaries),
        "workers": cfg.workers,
        "threads_per_run": threads,
        "seconds": round(time.perf_counter() - started, 3),
        "test_ndcg@10 (full ranking)": {s["run"]: s["test_ndcg@10"] for s in summaries},
    }


def _train_side_by_side(settings: Settings, force: bool, threads: int) -> list[dict]:
    """Every run's summary, `workers` runs training at a time with `threads` torch threads each,
    a progress artifact and the live view advanced as each one ends."""
    logger = get_run_logger()
    cfg = settings.recommenders
    runs = cfg.runs()
    train = with_retries(train_recommender, settings.prefect)
    side_by_side = f"{cfg.workers} at a time, {threads} torch thread{'s' * (threads != 1)} each"
    logger.info("recommenders: %d runs, %s", len(runs), side_by_side)
    artifact = create_progress_artifact(
        progress=0.0 if runs else 100.0,
        key="genair-training",
        description=f"recommenders: {len(runs)} runs planned",
    )
    progress.begin("recommenders", total=len(runs), unit="runs")
    progress.note("recommenders", side_by_side)
    backbones, variants, seeds = ([run[i] for run in runs] for i in range(3))
    # Set when the flow is interrupted (Ctrl-C, SIGTERM): every run ends at its next batch.
    stop = threading.Event()
    futures = train.map(
        unmapped(settings), backbones, variants, seeds, force=unmapped(force), stop=unmapped(stop)
    )
    try:
        for done, future in enumerate(as_completed(list(futures)), start=1):
            future.wait()
            update_progress_artifact(artifact, progress=100.0 * done / len(runs))
            logger.info("recommenders: %d of %d runs done", done, len(runs))
            progress.advance("recommenders", detail=_run_outcome(future))
    except BaseException:  # Ctrl-C, or SIGTERM (Prefect's TerminationSignal): stop, don't finish
        stop.set()
        raise
    progress.end("recommenders")
    return futures.result()


def _run_outcome(future: PrefectFuture) -> str:
    """One line on a finished run for the progress display: its test NDCG@10, or its failure."""
    if not future.state.is_completed():  # failed, crashed, cancelled: result() would raise
        return f"a run {future.state.type.value.lower()}: {future.state.message or ''}".strip()
    summary = future.result()
    state = "up to date" if summary.get("skipped") else "trained"
    ndcg = summary.get("test_ndcg@10")
    score = f": test NDCG@10 {ndcg:.4f}" if isinstance(ndcg, float) else ""
    return f"{summary.get('run', 'a run')} {state}{score}"
