"""One recommender run end to end — build, train (resumable), evaluate — and its metric rows.

    run = RunSpec("sasrec", "genair", seed=44)
    outcome = train_and_evaluate(run, settings.recommenders, data, negatives, checkpointer,
                                 table=table, lookup=lookup)
    rows = metric_rows(outcome, groups_for(data, outcome.test, tail_share=0.2))

No Prefect and no files here: `tasks.recommenders` reads the tables, passes them in and writes
what comes back.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from genair_core.config import RecommenderConfig
from genair_core.losses import CooccurrenceLookup
from genair_core.metrics import group_metrics, short_history, tail_items
from genair_core.models import BackboneConfig, build_model, get_variant
from genair_core.sequences import UserSequences
from genair_core.training import Checkpointer, Evaluation, TrainConfig, TrainerState, evaluate, fit

# Part of every run's cache key: bump when the same inputs would train or score differently.
TRAINING_VERSION = 1
PROTOCOLS = ("full", "sampled")
_GLOBAL_RNG = threading.Lock()


@dataclass(frozen=True)
class RunSpec:
    backbone: str
    variant: str
    seed: int
    loss: str = "bce"

    @property
    def name(self) -> str:
        return f"{self.backbone}-{self.variant}-{self.loss}-s{self.seed}"


@dataclass(frozen=True)
class RunOutcome:
    spec: RunSpec
    state: TrainerState
    valid: Evaluation
    test: Evaluation
    best_weights: dict[str, torch.Tensor]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("recommenders.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def share_cpu(workers: int) -> int:
    """Split the CPU cores between `workers` runs training side by side; returns the threads each
    gets."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    return threads


def train_config(config: RecommenderConfig, seed: int) -> TrainConfig:
    return TrainConfig(
        seed=seed,
        loss=config.loss,
        batch_size=config.batch_size,
        lr=config.lr,
        max_epochs=config.max_epochs,
        patience=config.patience,
        tau=config.tau,
        alpha=config.alpha,
    )


def train_and_evaluate(
    spec: RunSpec,
    config: RecommenderConfig,
    data: UserSequences,
    negatives: np.ndarray,
    checkpointer: Checkpointer,
    table: torch.Tensor | None = None,
    lookup: CooccurrenceLookup | None = None,
    input_dims: int = 384,
    device: torch.device | str = "cpu",
) -> RunOutcome:
    """Train `spec` (resuming from `checkpointer`) and evaluate its best epoch on validation and
    test with both protocols. `negatives` (n_users, m): the fixed sampled candidates by user row.
    `config`'s `per_backbone` settings for `spec.backbone` apply."""
    config = config.for_backbone(spec.backbone)
    if spec.loss != config.loss:
        raise ValueError(f"run {spec.name} says loss {spec.loss!r}, its settings {config.loss!r}")
    variant = get_variant(spec.variant)
    backbone_config = BackboneConfig(
        n_items=data.n_items,
        hidden=config.hidden,
        max_len=config.max_len,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        dropout=config.dropout,
        mask_prob=config.mask_prob,
        mask_last_prob=config.mask_last_prob,
    )
    with _GLOBAL_RNG:  # initial weights come from the global RNG; runs may share a process
        torch.manual_seed(spec.seed)
        model = build_model(spec.backbone, spec.variant, backbone_config, table, input_dims)
    state = fit(
        model,
        data,
        train_config(config, spec.seed),
        checkpointer,
        lookup=lookup if variant.calibrated else None,
        calibrated=variant.calibrated,
        device=device,
    )
    valid = evaluate(model, data, negatives, "valid", device=device)
    test = evaluate(model, data, negatives, "test", device=device)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return RunOutcome(spec, state, valid, test, weights)


def user_groups(
    data: UserSequences, evaluation: Evaluation, tail_share: float = 0.2
) -> dict[str, np.ndarray]:
    """Boolean masks over the evaluated users: target in the long tail (least popular items
    holding `tail_share` of training interactions) or head; training history at most the median
    length (short) or longer."""
    tail = tail_items(data.train_counts(), tail_share)[evaluation.targets]
    short, _ = short_history(data.n_train[evaluation.users])
    return {"tail": tail, "head": ~tail, "short": short, "long": ~short}


def metric_rows(
    valid: Evaluation, test: Evaluation, data: UserSequences, tail_share: float
) -> list[dict]:
    """Rows of the METRICS table (without the run columns): every protocol × split × group ×
    metric."""
    rows = []
    for split, evaluation in (("valid", valid), ("test", test)):
        groups = user_groups(data, evaluation, tail_share)
        for protocol, ranks in (("full", evaluation.full), ("sampled", evaluation.sampled)):
            for group, values in group_metrics(ranks, groups).items():
                users = int(values.pop("users"))
                rows += [
                    {
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
