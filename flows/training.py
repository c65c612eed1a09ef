"""The recommender runs: every configured (backbone, variant, seed) as its own task in a
sub-flow, with a progress artifact in the UI."""

from __future__ import annotations

import time

from prefect import flow, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from genair_core.experiment import share_cpu
from tasks.recommenders import train_recommender
from tasks.settings import Settings


def train_recommenders(settings: Settings, force: bool) -> dict[str, object]:
    """Every configured (backbone, variant, seed) as its own task, at most `workers` training at
    once: a sub-flow whose thread pool has `workers` threads takes the runs in order."""
    runner = ThreadPoolTaskRunner(max_workers=settings.recommenders.workers)
    return _train_runs.with_options(task_runner=runner)(settings, force)


@flow(name="train-recommenders", persist_result=False, validate_parameters=False)
def _train_runs(settings: Settings, force: bool) -> dict[str, object]:
    started = time.perf_counter()
    logger = get_run_logger()
    cfg = settings.recommenders
    runs = cfg.runs()
    threads = share_cpu(cfg.workers)
    train = train_recommender.with_options(
        retries=settings.prefect.task_retries, retry_delay_seconds=settings.prefect.retry_delay_s
    )
    logger.info(
        "recommenders: %d runs, %d at a time, %d threads each", len(runs), cfg.workers, threads
    )
    progress = create_progress_artifact(
        progress=0.0 if runs else 100.0,
        key="genair-training",
        description=f"recommenders: {len(runs)} runs planned",
    )
    backbones, variants, seeds = ([run[i] for run in runs] for i in range(3))
    futures = train.map(unmapped(settings), backbones, variants, seeds, force=unmapped(force))
    for done, future in enumerate(as_completed(list(futures)), start=1):
        future.wait()
        update_progress_artifact(progress, progress=100.0 * done / len(runs))
        logger.info("recommenders: %d of %d runs done", done, len(runs))
    summaries = futures.result()
    return {
        "runs": len(runs),
        "trained": sum(not s["skipped"] for s in summaries),
        "workers": cfg.workers,
        "threads_per_run": threads,
        "seconds": round(time.perf_counter() - started, 3),
        "test_ndcg@10 (full ranking)": {s["run"]: s["test_ndcg@10"] for s in summaries},
    }
