"""The rows a recommender run writes, and its scores: the eval_ranks and training_log rows of a
trained run, the metrics rows computed from its stored ranks, the popularity baseline's, and the
results report over every run of the grid.

    columns = run.columns(run_key, dataset="movielens-100k")  # genair_core.recommenders.run_spec
    metrics = score_run(tables, ranks, tail_share=0.2, columns=columns)

Metrics are computed from the stored ranks rather than from the run itself, so a change of how
users are grouped (`tail_share`) rescores a run without retraining it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from genair_core.config import RecommenderConfig
from genair_core.data.sequences import UserSequences
from genair_core.metrics import group_metrics, short_history, tail_items
from genair_core.recommenders.run_inputs import RunInputs, RunTables
from genair_core.recommenders.run_spec import RunSpec
from genair_core.recommenders.training import Evaluation, TrainerState, popularity_ranks
from genair_core.report.results import results_report

LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "rec_loss",
    "cal_loss",
    "valid_hr@10",
    "valid_ndcg@10",
    "seconds",
)


def score_run(
    tables: RunTables, ranks: pa.Table, tail_share: float, columns: dict[str, object]
) -> list[dict]:
    """A run's METRICS rows from its EVAL_RANKS rows (`tables` needs only the sequences)."""
    data = UserSequences.from_table(tables.sequences, tables.n_items)
    valid, test = evaluations_from_ranks(data, ranks)
    return recommender_metric_rows(data, valid, test, tail_share, columns)


def rank_rows(
    data: UserSequences, valid: Evaluation, test: Evaluation, columns: dict[str, object]
) -> list[dict]:
    """EVAL_RANKS rows: every evaluated user's rank of the held-out item, valid then test."""
    return [
        {
            **columns,
            "split": split,
            "user_idx": int(user),
            "item_idx": int(item),
            "rank_full": int(full),
            "rank_sampled": int(sampled),
        }
        for split, ev in (("valid", valid), ("test", test))
        for user, item, full, sampled in zip(
            data.user_idx[ev.users], ev.targets, ev.full, ev.sampled, strict=True
        )
    ]


def log_rows(state: TrainerState, columns: dict[str, object]) -> list[dict]:
    """TRAINING_LOG rows: one per epoch."""
    return [
        {**columns, **{k: v for k, v in epoch.items() if k in LOG_COLUMNS}}
        for epoch in state.history
    ]


def evaluations_from_ranks(data: UserSequences, ranks: pa.Table) -> tuple[Evaluation, Evaluation]:
    """The validation and test evaluations a run's EVAL_RANKS rows hold."""
    split = ranks["split"].to_numpy(zero_copy_only=False)
    evaluations = []
    for name in ("valid", "test"):
        rows = ranks.filter(pa.array(split == name))
        evaluations.append(
            Evaluation(
                users=np.searchsorted(data.user_idx, rows["user_idx"].to_numpy()),
                targets=rows["item_idx"].to_numpy(),
                full=rows["rank_full"].to_numpy(),
                sampled=rows["rank_sampled"].to_numpy(),
            )
        )
    return evaluations[0], evaluations[1]


def user_groups(
    data: UserSequences, evaluation: Evaluation, tail_share: float
) -> dict[str, np.ndarray]:
    """Boolean masks over the evaluated users: target in the long tail (least popular items
    holding `tail_share` of training interactions) or head; training history at most the median
    length (short) or longer."""
    tail = tail_items(data.train_counts(), tail_share)[evaluation.targets]
    short, _ = short_history(data.n_train[evaluation.users])
    return {"tail": tail, "head": ~tail, "short": short, "long": ~short}


def recommender_metric_rows(
    data: UserSequences,
    valid: Evaluation,
    test: Evaluation,
    tail_share: float,
    columns: dict[str, object],
) -> list[dict]:
    """METRICS rows: every protocol × split × group × metric."""
    rows = []
    for split, evaluation in (("valid", valid), ("test", test)):
        groups = user_groups(data, evaluation, tail_share)
        for protocol, ranks in (("full", evaluation.full), ("sampled", evaluation.sampled)):
            for group, values in group_metrics(ranks, groups).items():
                users = int(values.pop("users"))
                rows += [
                    {
                        **columns,
                        "protocol": protocol,
                        "split": split,
                        "group": group,
                        "metric": metric,
                        "value": value,
                        "users": users,
                    }
                    for metric, value in values.items()
                ]
    return rows


def popularity_baseline(
    inputs: RunInputs, tail_share: float, dataset: str
) -> tuple[list[dict], Evaluation]:
    """The most-popular-item baseline's METRICS rows (run "popularity") and its test
    evaluation."""
    valid = popularity_ranks(inputs.data, "valid", inputs.negatives)
    test = popularity_ranks(inputs.data, "test", inputs.negatives)
    columns = {
        "run_key": "popularity",
        "dataset": dataset,
        "backbone": "popularity",
        "variant": "-",
        "seed": 0,
        "loss": "-",
    }
    return recommender_metric_rows(inputs.data, valid, test, tail_share, columns), test


def recommender_results(
    config: RecommenderConfig,
    dataset: str,
    tables: RunTables,
    test_ranks: dict[str, dict[str, np.ndarray]],
) -> tuple[list[dict], str]:
    """The popularity baseline's METRICS rows and reports/recommenders.md (results_report).

    `tables`: the sequences and eval_negatives; `test_ranks`: {run name: {"full": ranks,
    "sampled": ranks}} of the grid's runs that finished, over the test users by user_idx."""
    inputs = RunInputs.from_tables(tables)
    tail_share = config.evaluation.tail_share
    rows, popularity = popularity_baseline(inputs, tail_share, dataset)
    grid = {run.name: (run.backbone, run.variant, run.seed) for run in RunSpec.grid(config)}
    by_run = {grid[name]: ranks for name, ranks in test_ranks.items()}
    baseline = {"full": popularity.full, "sampled": popularity.sampled}
    groups = test_user_groups(inputs.data, tail_share)
    return rows, results_report(dataset, config, by_run, baseline, groups)


def test_user_groups(data: UserSequences, tail_share: float) -> dict[str, np.ndarray]:
    """user_groups of the test users, in user_idx order (that of read_test_results' ranks)."""
    test_users = np.flatnonzero(data.held_out)
    evaluation = Evaluation(test_users, data.targets(test_users, "test"), np.zeros(0), None)
    by_user_idx = np.argsort(data.user_idx[test_users], kind="stable")
    return {
        group: mask[by_user_idx]
        for group, mask in user_groups(data, evaluation, tail_share).items()
    }
