"""One recommender run end to end: build its model, train it (resumable), evaluate its best
epoch, and hand back the rows it adds to the eval_ranks and training_log tables.

    run = RunSpec.of(RecommenderConfig(), "sasrec", "genair", seed=44)  # recommenders.run_spec
    tables = read_run_tables(store, run.tables)  # storage.recommenders
    columns = run.columns(run_key, dataset="movielens-100k")
    trained = train_run(run, tables, checkpointer, columns, input_dims=384, device="cpu")

The run's metrics are scored from its stored ranks afterwards
(genair_core.recommenders.scoring.score_run). No Prefect and no files here: `tasks.recommenders`
passes in what storage read and writes what comes back.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from genair_core.config import TrainingConfig
from genair_core.devices import resolve_device, seeded
from genair_core.metrics import rank_metrics
from genair_core.recommenders.models import build_model, get_variant
from genair_core.recommenders.run_inputs import RunInputs, RunTables
from genair_core.recommenders.run_spec import RunSpec
from genair_core.recommenders.scoring import log_rows, rank_rows
from genair_core.recommenders.training import (
    Checkpointer,
    Evaluation,
    FitSettings,
    TrainerState,
    evaluate,
    fit,
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
    settings = FitSettings(
        spec.training, spec.seed, calibrated=variant.calibrated, device=device, label=spec.name
    )
    lookup = inputs.lookup if variant.calibrated else None
    state = fit(model, data, settings, checkpointer, lookup=lookup, stop=stop)
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
            "eval_ranks": rank_rows(inputs.data, outcome.valid, outcome.test, columns),
            "training_log": log_rows(outcome.state, columns),
        },
        best_weights=outcome.best_weights,
        best_epoch=outcome.state.best_epoch,
        summary=trained_run_summary(outcome, str(columns["run_key"]), where, resumed),
    )


def trained_run_summary(
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
