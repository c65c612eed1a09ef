"""The recommender stages: fixed evaluation negatives, one task per (backbone, variant, seed),
and the results table over all of them."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from genair_core.experiment import (
    RunInputs,
    RunSpec,
    eval_negatives,
    popularity_baseline,
    resolve_device,
    resume_from,
    score_run,
    train_run,
)
from genair_core.results import results_report
from storage.checkpoints import RunCheckpoints
from storage.recommenders import (
    FINAL,
    read_run_ranks,
    read_run_tables,
    read_test_results,
    write_trained_run,
)
from storage.store import fingerprint
from tasks.common import TASK_DEFAULTS, run_step, store_for
from tasks.settings import Settings

NEGATIVES_VERSION = 1
RESULTS_REPORT = "recommenders"


@task(name="eval-negatives", **TASK_DEFAULTS)
def sample_eval_negatives(settings: Settings, force: bool = False) -> dict[str, object]:
    """The sampled protocol's candidates, drawn once per user and shared by every run."""
    store = store_for(settings)
    cfg = settings.recommenders.evaluation
    inputs = fingerprint(
        NEGATIVES_VERSION,
        cfg.negatives,
        cfg.negatives_seed,
        store.table_info("sequences").sha256,
        store.table_info("item_index").sha256,
    )

    def produce() -> tuple[dict, dict]:
        data = RunInputs.from_tables(read_run_tables(store, ["sequences"])).data
        table = eval_negatives(data, cfg.negatives, cfg.negatives_seed)
        info = store.write_table("eval_negatives", table)
        return {"eval_negatives": info}, {"users": data.n_users, "per_user": cfg.negatives}

    return run_step(store, "negatives", inputs, produce, force=force)


@task(name="train-recommender", task_run_name="train-{backbone}-{variant}-s{seed}", **TASK_DEFAULTS)
def train_recommender(
    settings: Settings, backbone: str, variant: str, seed: int, force: bool = False
) -> dict[str, object]:
    """Train and evaluate one run, then score it. A retry or a rerun resumes from the run's last
    epoch checkpoint; a run whose inputs and settings are unchanged since it finished is skipped,
    and only rescored when the user groups of its metrics changed."""
    store = store_for(settings)
    run = RunSpec.of(settings.recommenders, backbone, variant, seed)
    hashes = {name: store.table_info(name).sha256 for name in run.tables}
    key = fingerprint(*run.cache_key(settings.pooling.input_dims, hashes))
    run_id = key[:16]
    columns = run.columns(run_id, settings.dataset.name)
    checkpoints = RunCheckpoints(store.checkpoint_dir(run.name, run_id))
    tail_share = settings.recommenders.evaluation.tail_share

    def train() -> tuple[dict, dict]:
        if resumed := resume_from(checkpoints, run.training, restart=force):
            get_run_logger().info("%s: resuming after epoch %d", run.name, resumed)
        inputs = RunInputs.from_tables(read_run_tables(store, run.tables))
        device = resolve_device(settings.recommenders.device)
        trained = train_run(run, inputs, checkpoints, columns, settings.pooling.input_dims, device)
        get_run_logger().info("%s: %s", run.name, trained.summary)
        outputs = write_trained_run(
            store,
            run.name,
            run_id,
            trained.ranks,
            trained.log,
            trained.best_weights,
            trained.best_epoch,
        )
        return outputs, trained.summary

    def score() -> tuple[dict, dict]:
        data = RunInputs.from_tables(read_run_tables(store, ["sequences"])).data
        rows = score_run(data, read_run_ranks(store, run.name), tail_share, columns)
        return {"metrics": store.write_part("metrics", run.name, FINAL, rows)}, {}

    with checkpoints.exclusive():
        summary = run_step(store, f"train-{run.name}", key, train, force=force)
    run_step(store, f"score-{run.name}", fingerprint(key, tail_share), score, force=force)
    return summary


@task(name="recommender-results", **TASK_DEFAULTS)
def publish_results(settings: Settings, runs: list[tuple[str, str, int]]) -> str:
    """The results table (backbone × variant, mean ± std over seeds, paired test against `id`)
    for both protocols, as a Prefect artifact and as reports/recommenders.md. Runs that have not
    finished are left out (the Seeds column says how many each row has)."""
    store = store_for(settings)
    cfg = settings.recommenders
    inputs = RunInputs.from_tables(read_run_tables(store, ["sequences", "eval_negatives"]))
    rows, popularity = popularity_baseline(inputs, cfg.evaluation.tail_share, settings.dataset.name)
    store.write_part("metrics", "popularity", FINAL, rows)
    names = {run_name(settings, *run): run for run in runs}
    ranks, group_rows = read_test_results(store, list(names))
    test_ranks = {names[name]: by_protocol for name, by_protocol in ranks.items()}
    popular = {"full": popularity.full, "sampled": popularity.sampled}
    markdown = results_report(settings.dataset.name, cfg, test_ranks, popular, group_rows)
    path = store.write_report(RESULTS_REPORT, markdown)
    create_markdown_artifact(
        key="genair-recommenders", markdown=markdown, description="recommender results"
    )
    get_run_logger().info("results written to %s", path)
    return markdown


def run_name(settings: Settings, backbone: str, variant: str, seed: int) -> str:
    return RunSpec.of(settings.recommenders, backbone, variant, seed).name
