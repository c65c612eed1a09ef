"""The recommender stages: fixed evaluation negatives, one task per (backbone, variant, seed),
and the results table over all of them."""

from __future__ import annotations

import threading

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from genair_core.data.limits import check_negatives
from genair_core.item_space.calibration import calibration_settings_id
from genair_core.recommenders.experiment import train_run
from genair_core.recommenders.run_inputs import RunInputs, eval_negatives
from genair_core.recommenders.run_spec import RunSpec, WarmStart
from genair_core.recommenders.scoring import recommender_results, score_run
from genair_core.report.run_summary import latest_metrics
from storage.checkpoints import RunCheckpoints
from storage.recommenders import (
    FINAL,
    read_calibration_adapter,
    read_run_ranks,
    read_run_tables,
    read_test_results,
    read_user_ids,
    write_trained_run,
)
from storage.store import Store, fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.settings import ConfigError, Settings

NEGATIVES_VERSION = 1
RESULTS_REPORT = "recommenders"


@task(name="eval-negatives", **TASK_DEFAULTS)
def sample_eval_negatives(settings: Settings, force: bool = False) -> dict[str, object]:
    """The sampled protocol's candidates, drawn once per user and shared by every run."""
    store = store_for(settings)
    cfg = settings.recommenders.evaluation
    hashes = store.table_hashes(["sequences", "item_index"])
    inputs = fingerprint(NEGATIVES_VERSION, cfg.negatives, cfg.negatives_seed, *hashes.values())

    def produce() -> tuple[dict, dict]:
        data = RunInputs.from_tables(read_run_tables(store, ["sequences"])).data
        user_ids = read_user_ids(store)
        problems = check_negatives(cfg.negatives, data, user_ids)
        if problems:
            raise ConfigError(problems[0])
        table = eval_negatives(data, cfg.negatives, cfg.negatives_seed)
        info = store.write_table("eval_negatives", table)
        return {"eval_negatives": info}, {"users": data.n_users, "per_user": cfg.negatives}

    return run_step(store, "negatives", inputs, produce, force=force)


# The stop event is no input of the result; nothing is cached (results live in the tables).
@task(
    name="train-recommender",
    task_run_name="train-{backbone}-{variant}-s{seed}",
    cache_policy=NO_CACHE,
    **TASK_DEFAULTS,
)
def train_recommender(
    settings: Settings,
    backbone: str,
    variant: str,
    seed: int,
    force: bool = False,
    stop: threading.Event | None = None,
) -> dict[str, object]:
    """Train and evaluate one run, then score it. A retry or a rerun resumes from the run's last
    epoch checkpoint; a run whose inputs and settings are unchanged since it finished is skipped,
    and only rescored when the user groups of its metrics changed. A `genair-warm` run starts
    from the calibration adapter stored for the current calibration settings. Once `stop` is set
    (the flow was interrupted) the run ends at its next batch, its last checkpoint kept."""
    store = store_for(settings)
    cfg, input_dims = settings.recommenders, settings.pooling.input_dims
    tail_share = cfg.evaluation.tail_share
    run = RunSpec.of(cfg, backbone, variant, seed)
    adapter = warm_start(settings, store, run)
    key = run_key(store, run, input_dims, adapter)
    run_id = key[:16]
    columns = run.columns(run_id, settings.dataset.name)
    checkpoints = RunCheckpoints(store.checkpoint_dir(run.name, run_id))

    def train() -> tuple[dict, dict]:
        tables = read_run_tables(store, run.tables)
        trained = train_run(
            run,
            tables,
            checkpoints,
            columns,
            input_dims,
            cfg.device,
            restart=force,
            adapter_weights=adapter.weights if adapter is not None else None,
            stop=stop,
        )
        get_run_logger().info("%s: %s", run.name, trained.summary)
        served_with = {
            "backbone": run.backbone,
            "variant": run.variant,
            "seed": str(run.seed),
            "model": run.model.model_dump_json(),
            "input_dims": str(input_dims),
        }
        outputs = write_trained_run(
            store,
            run.name,
            run_id,
            trained.rows,
            trained.best_weights,
            trained.best_epoch,
            served_with,
        )
        return outputs, trained.summary

    def score() -> tuple[dict, dict]:
        tables = read_run_tables(store, ["sequences"])
        rows = score_run(tables, read_run_ranks(store, run.name), tail_share, columns)
        return {"metrics": store.write_part("metrics", run.name, FINAL, rows)}, {}

    with checkpoints.exclusive():
        summary = run_step(store, f"train-{run.name}", key, train, force=force)
    run_step(store, f"score-{run.name}", fingerprint(key, tail_share), score, force=force)
    return summary


def warm_start(settings: Settings, store: Store, run: RunSpec) -> WarmStart | None:
    """The calibration adapter a `genair-warm` run starts from (None for the other variants)."""
    if not run.warm_start:
        return None
    run.check_warm_start(settings.calibration.hidden)
    stored = read_calibration_adapter(store, calibration_settings_id(settings.calibration))
    return WarmStart.from_stored(*stored)


def run_key(store: Store, run: RunSpec, input_dims: int, adapter: WarmStart | None) -> str:
    """The run's cache key on the stored tables (its first 16 characters are its run_key)."""
    identity = adapter.identity if adapter is not None else None
    return fingerprint(*run.cache_key(input_dims, store.table_hashes(run.tables), identity))


@task(name="recommender-results", **TASK_DEFAULTS)
def publish_results(settings: Settings) -> dict[str, object]:
    """The results table (backbone × variant, mean ± std over seeds, paired test against `id`)
    for both protocols, as a Prefect artifact and as a report file, and the latest test metrics of
    every finished run as a table artifact `genair-metrics`; returns how many runs it holds and
    the file's path. Runs that have not finished are left out (the Seeds column says how many
    each row has)."""
    store = store_for(settings)
    runs = [run.name for run in RunSpec.grid(settings.recommenders)]
    ranks, group_rows = read_test_results(store, runs)
    tables = read_run_tables(store, ["sequences", "eval_negatives"])
    popularity, markdown = recommender_results(
        settings.recommenders, settings.dataset.name, tables, ranks
    )
    store.write_part("metrics", "popularity", FINAL, popularity)
    if settings.smoke_run:
        markdown = (
            f"> **Smoke run (profile `{settings.profile}`), not a result**: trimmed data and "
            f"training, to check that the pipeline runs end to end.\n\n{markdown}"
        )
    path = store.write_report(RESULTS_REPORT, markdown)
    create_markdown_artifact(
        key="genair-recommenders", markdown=markdown, description="recommender results"
    )
    create_table_artifact(
        key="genair-metrics",
        table=latest_metrics(group_rows),
        description="test metrics (full ranking, all users) of every finished recommender run",
    )
    get_run_logger().info("results written to %s", path)
    return {"runs": len(runs), "finished": len(ranks), "report": str(path)}
