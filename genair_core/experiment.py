"""One recommender run end to end — build, train (resumable), evaluate — and the rows it adds to
the eval_ranks, training_log and metrics tables; then the results report over every run.

    run = RunSpec.of(RecommenderConfig(), "sasrec", "genair", seed=44)
    tables = read_run_tables(store, run.tables)  # storage.recommenders
    columns = run.columns(run_key, dataset="movielens-100k")
    trained = train_run(run, tables, checkpointer, columns, input_dims=384, device="cpu")
    metrics = score_run(tables, pa.Table.from_pylist(trained.rows["eval_ranks"]), 0.2, columns)

Metrics are computed from the stored ranks rather than from the run itself, so a change of how
users are grouped (`tail_share`) rescores a run without retraining it. No Prefect and no files
here: `tasks.recommenders` passes in what storage read and writes what comes back.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from genair_core.calibration import Adapter
from genair_core.config import ModelConfig, RecommenderConfig, TrainingConfig
from genair_core.devices import resolve_device, seeded
from genair_core.losses import CooccurrenceLookup
from genair_core.metrics import (
    group_metrics,
    rank_metrics,
    sample_negatives,
    short_history,
    tail_items,
)
from genair_core.models import build_model, get_variant
from genair_core.models.item_encoders import frozen_table
from genair_core.results import results_report
from genair_core.sequences import UserSequences
from genair_core.training import (
    Checkpointer,
    Evaluation,
    TrainerState,
    evaluate,
    fit,
    popularity_ranks,
)

# Part of every run's cache key: bump when the same inputs would train or score differently.
# 2: the key became RunSpec.cache_key's explicit list instead of every setting.
TRAINING_VERSION = 2
RUN_TABLES = ("sequences", "item_index", "eval_negatives")
LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "rec_loss",
    "cal_loss",
    "valid_hr@10",
    "valid_ndcg@10",
    "seconds",
)
BERT4REC_ONLY = {"mask_prob", "mask_last_prob"}
CALIBRATION_ONLY = {"tau", "alpha"}


@dataclass(frozen=True)
class RunSpec:
    """One (backbone, variant, seed) with the model and training settings it runs with."""

    backbone: str
    variant: str
    seed: int
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tag: str = ""  # RecommenderConfig.tag: part of the name, not of the cache key

    @classmethod
    def of(cls, config: RecommenderConfig, backbone: str, variant: str, seed: int) -> RunSpec:
        """The run with `backbone`'s `per_backbone` settings applied."""
        model, training = config.for_backbone(backbone)
        return cls(backbone, variant, seed, model, training, config.tag)

    @classmethod
    def grid(cls, config: RecommenderConfig) -> list[RunSpec]:
        """Every run of `config`'s grid, in the order of RecommenderConfig.runs."""
        return [cls.of(config, *run) for run in config.runs()]

    @property
    def name(self) -> str:
        name = f"{self.backbone}-{self.variant}-{self.training.loss}-s{self.seed}"
        return f"{name}-{self.tag}" if self.tag else name

    @property
    def tables(self) -> list[str]:
        """The tables the run reads: item vectors for frozen variants, co-occurrence for
        calibrated ones."""
        kind = get_variant(self.variant)
        return [
            *RUN_TABLES,
            *(["item_embeddings"] if kind.frozen else []),
            *(["cooccurrence"] if kind.calibrated else []),
        ]

    @property
    def warm_start(self) -> bool:
        """Whether the run starts its adapter from the calibration job's (`genair-warm`)."""
        return get_variant(self.variant).warm

    def check_warm_start(self, calibration_hidden: int) -> None:
        """A `genair-warm` run needs the calibration adapter's output size to be its own: one
        error naming both settings rather than a resized (no longer trained) adapter."""
        if self.warm_start and calibration_hidden != self.model.hidden:
            raise ValueError(
                f"{self.variant} starts its adapter from the calibration job's, but "
                f"calibration.hidden is {calibration_hidden} and recommenders.model.hidden is "
                f"{self.model.hidden} for {self.backbone} (with its per_backbone settings): set "
                "them equal"
            )

    def cache_key(
        self, input_dims: int, table_hashes: dict[str, str], adapter: str | None = None
    ) -> list[object]:
        """What decides the run's ranks and training log, for its cache key: the run, its model
        and training settings (BERT4Rec's masking only for BERT4Rec, the calibration weights only
        for calibrated variants), the split of the item vectors for the half variants, and the
        hashes of `self.tables`; for `genair-warm` only, `adapter`, the identity of the
        calibration adapter it starts from (a retrained calibration retrains those runs and no
        others). Left out: the grid, `workers` and `device` (which runs, how many at a time,
        where) and the evaluation settings (the negatives are in eval_negatives' hash;
        `tail_share` only groups the metrics, which are rescored without training)."""
        kind = get_variant(self.variant)
        model = self.model.model_dump(
            mode="json", exclude=set() if self.backbone == "bert4rec" else BERT4REC_ONLY
        )
        training = self.training.model_dump(
            mode="json", exclude=set() if kind.calibrated else CALIBRATION_ONLY
        )
        key = [
            TRAINING_VERSION,
            self.backbone,
            self.variant,
            self.seed,
            model,
            training,
            input_dims if kind.half is not None else None,
            {name: table_hashes[name] for name in self.tables},
        ]
        if kind.warm:  # appended, so that every other run's key stays what it was
            if adapter is None:
                raise ValueError(f"the key of a {self.variant} run needs its calibration adapter")
            key.append({"calibration_adapter": adapter})
        return key

    def columns(self, run_key: str, dataset: str) -> dict[str, object]:
        """The columns that say which run wrote a row, on every row it writes."""
        return {
            "run_key": run_key,
            "dataset": dataset,
            "backbone": self.backbone,
            "variant": self.variant,
            "seed": self.seed,
            "loss": self.training.loss,
        }


@dataclass(frozen=True)
class WarmStart:
    """The calibration job's adapter as a `genair-warm` run starts from it."""

    weights: dict[str, np.ndarray]  # the adapter's state dict (Linear, LayerNorm, Linear)
    identity: str  # "<version>:<hash of the weights>", part of those runs' cache keys

    @classmethod
    def from_stored(
        cls, tensors: Mapping[str, np.ndarray], manifest: Mapping[str, object]
    ) -> WarmStart:
        """From what storage.calibration keeps. The identity hashes the weights themselves
        besides the manifest's version, so an adapter retrained under the same version (on
        another device) is still another adapter."""
        adapter = Adapter.from_stored(tensors, manifest)
        digest = hashlib.sha256()
        for name in sorted(adapter.weights):
            array = np.ascontiguousarray(adapter.weights[name], dtype=np.float32)
            digest.update(f"{name}:{array.shape}".encode())
            digest.update(array.tobytes())
        return cls(
            weights=dict(adapter.weights),
            identity=f"{adapter.info['version']}:{digest.hexdigest()[:32]}",
        )


class RunTables(Protocol):
    """What a run reads from its tables, as storage.recommenders hands it over (Arrow tables,
    numpy arrays); the fields of the tables it does not read are None."""

    n_items: int
    sequences: pa.Table  # user_idx, position, item_idx, split
    negative_users: np.ndarray | None  # (U,) the user_idx of each row of `negatives`
    negatives: np.ndarray | None  # (U, m) eval_negatives
    item_ids: list[str] | None  # item_id by item_idx, from 1
    vector_item_ids: list[str] | None  # the item of each row of `vectors`
    vectors: np.ndarray | None  # (N, d) item_embeddings
    pairs: pa.Table | None  # cooccurrence i, j, s


@dataclass(frozen=True)
class RunInputs:
    data: UserSequences
    negatives: np.ndarray | None  # (n_users, m) by row of `data`
    table: torch.Tensor | None  # (n_items + 1, d) frozen item vectors by item index
    lookup: CooccurrenceLookup | None

    @classmethod
    def from_tables(cls, tables: RunTables) -> RunInputs:
        """A missing or unreadable co-occurrence table fails before this (the reference silently
        trains with w = 1 instead)."""
        data = UserSequences.from_table(tables.sequences, tables.n_items)
        negatives = None
        if tables.negatives is not None:
            negatives = negatives_by_row(data, tables.negative_users, tables.negatives)
        table = None
        if tables.vectors is not None:
            table = frozen_table(tables.item_ids, tables.vector_item_ids, tables.vectors)
        lookup = None
        if tables.pairs is not None:
            pairs = tables.pairs
            lookup = CooccurrenceLookup.from_pairs(
                pairs["i"].to_numpy(), pairs["j"].to_numpy(), pairs["s"].to_numpy(), data.n_items
            )
        return cls(data, negatives, table, lookup)


def negatives_by_row(data: UserSequences, users: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """(n_users, m) the rows of `negatives` (one per user in `users`) in the row order of
    `data`."""
    by_user = dict(zip(users.tolist(), range(len(users)), strict=True))
    missing = [int(u) for u in data.user_idx if int(u) not in by_user]
    if missing:
        raise ValueError(
            f"eval_negatives has no row for {len(missing)} users (first: {missing[:5]}); "
            "rerun the negatives stage"
        )
    return negatives[np.array([by_user[int(u)] for u in data.user_idx])]


def eval_negatives(data: UserSequences, n: int, seed: int) -> pa.Table:
    """The sampled protocol's candidates: `n` items per user that the user never had, drawn once
    and shared by every run (an EVAL_NEGATIVES table)."""
    ptr, items = data.all_items_csr()
    negatives = sample_negatives(ptr, items, data.n_items, n, seed)
    return pa.table(
        {
            "user_idx": pa.array(data.user_idx, pa.int32()),
            "negatives": pa.array(list(negatives), pa.list_(pa.int32())),
        }
    )


@dataclass(frozen=True)
class RunOutcome:
    spec: RunSpec
    state: TrainerState
    valid: Evaluation
    test: Evaluation
    best_weights: dict[str, torch.Tensor]


def resume_from(checkpointer: Checkpointer, training: TrainingConfig, restart: bool) -> int:
    """The epoch a run resumes after (0: from scratch). `restart` clears the checkpoints of a
    finished run, so that it trains again; an unfinished one (a retry) resumes even then."""
    saved = checkpointer.load()
    if saved is None:
        return 0
    state = TrainerState.from_dict(saved[0])
    if restart and state.finished(training):
        checkpointer.clear()
        return 0
    return state.epoch


def train_and_evaluate(
    spec: RunSpec,
    inputs: RunInputs,
    checkpointer: Checkpointer,
    input_dims: int,
    device: torch.device | str = "cpu",
    adapter_weights: Mapping[str, np.ndarray] | None = None,
    stop: threading.Event | None = None,
) -> RunOutcome:
    """Train `spec` (resuming from `checkpointer`) and evaluate its best epoch on validation and
    test with both protocols. `adapter_weights`: the calibration adapter's state dict, which a
    `genair-warm` run starts from; `stop`: ends the training early (fit)."""
    variant = get_variant(spec.variant)
    data = inputs.data
    with seeded(spec.seed):  # initial weights come from the global generator
        model = build_model(
            spec.backbone,
            spec.variant,
            spec.model,
            data.n_items,
            inputs.table,
            input_dims=input_dims,
            adapter_weights=adapter_weights if variant.warm else None,
            trained_items=torch.from_numpy(data.train_counts() > 0) if variant.ids else None,
        )
    state = fit(
        model,
        data,
        spec.training,
        checkpointer,
        seed=spec.seed,
        lookup=inputs.lookup if variant.calibrated else None,
        calibrated=variant.calibrated,
        device=device,
        label=spec.name,
        stop=stop,
    )
    valid = evaluate(model, data, inputs.negatives, "valid", device=device)
    test = evaluate(model, data, inputs.negatives, "test", device=device)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return RunOutcome(spec, state, valid, test, weights)


@dataclass(frozen=True)
class TrainedRun:
    rows: dict[str, list[dict]]  # the run's rows of eval_ranks and of training_log
    best_weights: dict[str, torch.Tensor]
    best_epoch: int
    summary: dict[str, object]  # what the flow and the step's manifest show


def train_run(
    spec: RunSpec,
    tables: RunTables,
    checkpointer: Checkpointer,
    columns: dict[str, object],
    input_dims: int,
    device: str,
    restart: bool = False,
    adapter_weights: Mapping[str, np.ndarray] | None = None,
    stop: threading.Event | None = None,
) -> TrainedRun:
    """train_and_evaluate on `tables` (those `spec.tables` names), and the rows the run adds to
    the tables (`columns` on each). The run resumes after the last epoch `checkpointer` holds;
    `restart` trains a finished run again from scratch (resume_from). `device`: a
    `recommenders.device` setting; `adapter_weights`: the calibration adapter (`genair-warm`);
    `stop`: ends the training early (fit)."""
    if spec.warm_start and adapter_weights is None:
        raise ValueError(f"{spec.name} starts from the calibration adapter: pass its weights")
    resumed = resume_from(checkpointer, spec.training, restart)
    inputs = RunInputs.from_tables(tables)
    where = resolve_device(device, "recommenders.device")
    outcome = train_and_evaluate(
        spec, inputs, checkpointer, input_dims, where, adapter_weights, stop
    )
    return TrainedRun(
        rows={
            "eval_ranks": rank_rows(outcome, inputs.data, columns),
            "training_log": log_rows(outcome.state, columns),
        },
        best_weights=outcome.best_weights,
        best_epoch=outcome.state.best_epoch,
        summary=run_summary(outcome, str(columns["run_key"]), where, resumed),
    )


def score_run(
    tables: RunTables, ranks: pa.Table, tail_share: float, columns: dict[str, object]
) -> list[dict]:
    """A run's METRICS rows from its EVAL_RANKS rows (`tables` needs only the sequences)."""
    data = UserSequences.from_table(tables.sequences, tables.n_items)
    valid, test = evaluations_from_ranks(data, ranks)
    return metric_rows(data, valid, test, tail_share, columns)


def rank_rows(outcome: RunOutcome, data: UserSequences, columns: dict[str, object]) -> list[dict]:
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
        for split, ev in (("valid", outcome.valid), ("test", outcome.test))
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


def run_summary(
    outcome: RunOutcome, run_key: str, device: torch.device, resumed_after: int
) -> dict[str, object]:
    test = {k: float(v.mean()) for k, v in rank_metrics(outcome.test.full).items()}
    seconds = [epoch["seconds"] for epoch in outcome.state.history]
    return {
        "run": outcome.spec.name,
        "run_key": run_key,
        "device": str(device),
        "resumed_after_epoch": resumed_after,
        "epochs": outcome.state.epoch,
        "best_epoch": outcome.state.best_epoch,
        "valid_ndcg@10": outcome.state.best_score,
        "test_hr@10": test["hr@10"],
        "test_ndcg@10": test["ndcg@10"],
        "median_epoch_seconds": float(np.median(seconds)) if seconds else 0.0,
    }


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


def metric_rows(
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
    return metric_rows(inputs.data, valid, test, tail_share, columns), test


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
