"""Training and evaluating one (backbone, variant, seed) run, resumable after a crash.

    settings = FitSettings(TrainingConfig(), seed=44, calibrated=True, label="sasrec-genair-s44")
    state = fit(model, data, settings, checkpointer, lookup=lookup)

Determinism: everything random in epoch e — batch order, negatives, BERT4Rec's masks, dropout —
is drawn from the run's own generators seeded with (seed, e), never from the global RNG or from
state carried over from epoch e − 1.
So a run that resumes from the checkpoint of epoch e continues exactly as if it had never stopped,
given the model and optimizer state, which the checkpoint holds. (Same device and thread count:
floating-point reductions may differ between CPU and CUDA.)

Batches group users of similar history length (`length_batches`), so a batch is padded to its
longest window rather than to max_len: on ml-100k that is ~3× fewer attention FLOPs than padding
every window to 200 (bench/bench_training.py), with a random jitter so that batch composition
still changes every epoch.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch

from genair_core import progress
from genair_core.config import TrainingConfig
from genair_core.data.sequences import Split, UserSequences
from genair_core.losses import (
    CooccurrenceLookup,
    calibration_loss,
    sampled_bce,
    softmax_cross_entropy,
)
from genair_core.metrics import full_ranks, rank_metrics, sampled_ranks
from genair_core.recommenders.models import SequentialRecommender
from genair_core.recommenders.models.item_encoders import AdapterEncoder
from genair_core.recommenders.models.transformer import use_generator

SELECTION_METRIC = "ndcg@10"  # validation metric for early stopping and model selection
LENGTH_JITTER = 0.5  # noise on log(length) when grouping users into batches
EVAL_BATCH_SIZE = 256


class TrainingStopped(Exception):
    """`fit` ended between two batches because its `stop` event was set; the last epoch's
    checkpoint stands, and a later fit resumes from it."""


@dataclass
class TrainerState:
    """What a checkpoint needs besides the tensors; `to_dict` is plain JSON."""

    epoch: int = 0  # epochs completed
    best_epoch: int = 0
    best_score: float = -math.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def finished(self, config: TrainingConfig) -> bool:
        return self.epoch >= config.max_epochs or self.bad_epochs >= config.patience

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainerState:
        return cls(**data)


class Checkpointer(Protocol):
    """Where a run's checkpoints live; storage.checkpoints implements it with safetensors. The
    trainer state travels as `TrainerState.to_dict()`, the model and Adam as their state dicts."""

    def load(self) -> tuple[dict, dict[str, torch.Tensor], dict] | None: ...

    def save(
        self,
        state: dict,
        model: dict[str, torch.Tensor],
        optimizer: dict,
        best: dict[str, torch.Tensor] | None,
    ) -> None: ...

    def load_best(self) -> dict[str, torch.Tensor]: ...

    def clear(self) -> None: ...


@dataclass(frozen=True)
class FitSettings:
    """How one run trains: its TrainingConfig and what the run adds to it."""

    training: TrainingConfig
    seed: int  # the run's: epoch e draws everything random from generators seeded by (seed, e)
    calibrated: bool = False  # add alpha x the calibration loss (needs the co-occurrence lookup)
    device: torch.device | str = "cpu"
    label: str | None = None  # the run's name in the progress events; None: "<backbone>-s<seed>"


@dataclass(frozen=True)
class Evaluation:
    users: np.ndarray  # (U,) user rows of UserSequences that were evaluated
    targets: np.ndarray  # (U,) the held-out item of each
    full: np.ndarray  # (U,) 0-based rank among all items, history masked
    sampled: np.ndarray | None  # (U,) rank among the user's fixed sampled negatives


def fit(
    model: SequentialRecommender,
    data: UserSequences,
    settings: FitSettings,
    checkpointer: Checkpointer,
    *,
    lookup: CooccurrenceLookup | None = None,
    stop: threading.Event | None = None,
) -> TrainerState:
    """Train with early stopping on validation NDCG@10, checkpointing every epoch; resume from the
    last checkpoint if there is one. Leaves the best epoch's weights in `model`.

    `lookup`: the co-occurrence pairs of a calibrated run. Progress events (genair_core.progress)
    come one per epoch under the stage "recommenders/<settings.label>". `stop`: once set, from
    any thread, the fit raises TrainingStopped before its next batch."""
    if settings.calibrated and (lookup is None or not isinstance(model.encoder, AdapterEncoder)):
        raise ValueError("calibration needs the co-occurrence lookup and frozen item vectors")
    config, device = settings.training, torch.device(settings.device)
    model.to(device)
    lookup = lookup.to(device) if lookup is not None else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    state = TrainerState()
    saved = checkpointer.load()
    if saved is not None:
        state_dict, model_state, optimizer_state = saved
        state = TrainerState.from_dict(state_dict)
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)

    train_rows = np.flatnonzero(data.n_train >= 2)
    valid_rows = np.flatnonzero(data.held_out)
    exclude = _user_item_keys(data, device)
    stage = f"recommenders/{settings.label or f'{type(model).__name__.lower()}-s{settings.seed}'}"
    progress.begin(stage, total=config.max_epochs, unit="epochs", completed=state.epoch)
    while not state.finished(config):
        epoch = state.epoch + 1
        started = time.perf_counter()
        losses = _train_epoch(
            model, data, train_rows, settings, epoch, optimizer, exclude, lookup, stop
        )
        ranks = rank_users(model, data, valid_rows, "valid", EVAL_BATCH_SIZE, device)
        valid = {k: float(v.mean()) for k, v in rank_metrics(ranks).items()}
        score = valid[SELECTION_METRIC]
        improved = score > state.best_score
        if improved:
            state.best_epoch, state.best_score, state.bad_epochs = epoch, score, 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        state.stopped_early = state.bad_epochs >= config.patience and epoch < config.max_epochs
        state.history.append(
            {
                "epoch": epoch,
                **losses,
                **{f"valid_{k}": v for k, v in valid.items()},
                "seconds": time.perf_counter() - started,
            }
        )
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        checkpointer.save(
            state.to_dict(), weights, optimizer.state_dict(), weights if improved else None
        )
        progress.advance(
            stage,
            detail=f"epoch {epoch}: valid NDCG@10 {score:.4f} (best {state.best_score:.4f} at "
            f"epoch {state.best_epoch})",
        )
    progress.end(stage, "stopped early" if state.stopped_early else "")
    model.load_state_dict(checkpointer.load_best())
    return state


def _train_epoch(
    model: SequentialRecommender,
    data: UserSequences,
    rows: np.ndarray,
    settings: FitSettings,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    exclude: torch.Tensor,
    lookup: CooccurrenceLookup | None,
    stop: threading.Event | None,
) -> dict[str, float]:
    config, device = settings.training, torch.device(settings.device)
    generator = torch.Generator().manual_seed(_epoch_seed(settings.seed, epoch))
    dropout = torch.Generator(device=device).manual_seed(_epoch_seed(settings.seed, epoch))
    use_generator(model, dropout)
    model.train()
    window = model.config.max_len + 1
    lengths = np.minimum(data.n_train[rows], window)
    totals = {"train_loss": 0.0, "rec_loss": 0.0, "cal_loss": 0.0}
    batches = epoch_batches(lengths, config.batch_size, generator)
    for batch, width in batches:
        if stop is not None and stop.is_set():
            raise TrainingStopped(f"stopped in epoch {epoch}, before it ended")
        batch_rows = rows[batch]
        items = torch.from_numpy(data.train_window(batch_rows, width)).to(device)
        inputs, targets = model.training_pairs(items, generator)
        positions = targets != 0
        hidden = model(inputs)[positions]  # (P, h)
        positives = targets[positions]  # (P,)
        if config.loss == "ce":
            rec_loss = softmax_cross_entropy(hidden, model.encoder.all_items(), positives)
        else:
            user_of = torch.from_numpy(batch_rows).to(device).unsqueeze(1).expand_as(targets)
            negatives = _sample_negatives(user_of[positions], data.n_items, exclude, generator)
            rec_loss = sampled_bce(hidden, model.encoder(positives), model.encoder(negatives))
        loss = rec_loss
        cal_loss = torch.zeros((), device=device)
        if settings.calibrated:
            distinct = torch.unique(positives)
            vectors = model.encoder.adapt(distinct)
            cal_loss = calibration_loss(vectors, lookup.pair_scores(distinct), config.tau)
            loss = rec_loss + config.alpha * cal_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for name, value in (("train_loss", loss), ("rec_loss", rec_loss), ("cal_loss", cal_loss)):
            totals[name] += float(value.detach()) / len(batches)
    return totals


def epoch_batches(
    lengths: np.ndarray, batch_size: int, generator: torch.Generator
) -> list[tuple[np.ndarray, int]]:
    """An epoch's batches: row positions of similar length (length_batches), each with the
    window width it is padded to, its longest length."""
    batches = length_batches(lengths, batch_size, LENGTH_JITTER, generator)
    return [(batch, int(lengths[batch].max())) for batch in batches]


def length_batches(
    lengths: np.ndarray, batch_size: int, jitter: float, generator: torch.Generator
) -> list[np.ndarray]:
    """Batches of row positions of similar length, in random order.

    Sorting by log(length) + uniform noise of ±jitter groups users of similar length (little
    padding) while letting the grouping change every epoch; jitter 0 is a fixed sort."""
    noise = (torch.rand(lengths.size, generator=generator).numpy() - 0.5) * 2 * jitter
    order = np.argsort(np.log(np.maximum(lengths, 1)) + noise, kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in shuffled]


@torch.no_grad()
def rank_users(
    model: SequentialRecommender,
    data: UserSequences,
    rows: np.ndarray,
    split: Split,
    batch_size: int,
    device: torch.device | str,
    negatives: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Full-ranking ranks of `split`'s target for the given user rows (history masked); with
    `negatives` (len(rows), m), also the ranks among those sampled negatives."""
    model.eval()
    items = model.encoder.all_items()  # (n_items + 1, h)
    # Users in order of history length, each batch one wider than its longest history (BERT4Rec
    # gives the first column to its [MASK]): the models read left-padded windows whatever their
    # width (positions count from the most recent item), so this gives the ranks of a
    # max_len-wide batch at a fraction of the cost.
    seen = data.history_lengths(rows, split)
    order = np.argsort(seen, kind="stable")
    rows, seen = rows[order], np.minimum(seen[order] + 1, model.config.max_len)
    if negatives is not None:
        negatives = negatives[order]
    full, sampled = [], []
    for start in range(0, rows.size, batch_size):
        batch = rows[start : start + batch_size]
        width = int(seen[start : start + batch_size].max())
        history = torch.from_numpy(data.history(batch, split, width)).to(device)
        targets = torch.from_numpy(data.targets(batch, split)).to(device)
        ptr, masked = data.history_csr(batch, split)
        scores = model.user_vectors(history) @ items.T  # (B, n_items + 1)
        full.append(
            full_ranks(
                scores,
                targets,
                torch.from_numpy(ptr).to(device),
                torch.from_numpy(masked).to(device),
            ).cpu()
        )
        if negatives is not None:
            negative = torch.from_numpy(negatives[start : start + batch_size]).long().to(device)
            target_scores = scores.gather(1, targets.unsqueeze(1)).squeeze(1)
            sampled.append(sampled_ranks(target_scores, scores.gather(1, negative)).cpu())
    restore = np.argsort(order, kind="stable")
    full_ranks_all = torch.cat(full).numpy()[restore]
    if negatives is None:
        return full_ranks_all
    return full_ranks_all, torch.cat(sampled).numpy()[restore]


def evaluate(
    model: SequentialRecommender,
    data: UserSequences,
    negatives: np.ndarray,
    split: Split = "test",
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Both protocols on every user with held-out items; `negatives` (n_users, m) by user row."""
    rows = np.flatnonzero(data.held_out)
    full, sampled = rank_users(model, data, rows, split, batch_size, device, negatives[rows])
    return Evaluation(rows, data.targets(rows, split), full, sampled)


def popularity_ranks(data: UserSequences, split: Split, negatives: np.ndarray) -> Evaluation:
    """The most-popular-item baseline (training counts), ranked like a model."""
    counts = torch.from_numpy(data.train_counts().astype(np.float32))
    rows = np.flatnonzero(data.held_out)
    targets = torch.from_numpy(data.targets(rows, split))
    ptr, masked = data.history_csr(rows, split)
    scores = counts.expand(rows.size, -1)
    full = full_ranks(scores, targets, torch.from_numpy(ptr), torch.from_numpy(masked))
    target_scores = scores.gather(1, targets.unsqueeze(1)).squeeze(1)
    sampled = sampled_ranks(
        target_scores, scores.gather(1, torch.from_numpy(negatives[rows]).long())
    )
    return Evaluation(rows, targets.numpy(), full.numpy(), sampled.numpy())


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _user_item_keys(data: UserSequences, device: torch.device) -> torch.Tensor:
    """Sorted keys row * (n_items + 1) + item of every training item of every user."""
    rows = np.repeat(np.arange(data.n_users), data.n_train)
    start = np.repeat(data.ptr[:-1], data.n_train)
    offset = np.arange(rows.size) - np.repeat(np.cumsum(data.n_train) - data.n_train, data.n_train)
    keys = rows * (data.n_items + 1) + data.items[start + offset]
    return torch.from_numpy(np.unique(keys)).to(device)


def _sample_negatives(
    users: torch.Tensor, n_items: int, exclude: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """One item per entry, uniform over 1..n_items minus that user's training items (redrawn
    until none collides; a user who has had every item would loop, and k-core data has none)."""
    negatives = torch.randint(1, n_items + 1, users.shape, generator=generator).to(users.device)
    while True:
        keys = users * (n_items + 1) + negatives
        found = torch.searchsorted(exclude, keys).clamp(max=exclude.numel() - 1)
        clash = exclude[found] == keys
        if not clash.any():
            return negatives
        redraw = torch.randint(1, n_items + 1, (int(clash.sum()),), generator=generator)
        negatives[clash] = redraw.to(users.device)
