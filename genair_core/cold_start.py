"""Cold start measured as it happens: models trained as of a time T score every interaction after
it, new items included, against the whole catalog (the protocol of "Let It Go? Not Quite",
RecSys 2025).

    log = ColdStartLog.of(interactions, as_of, trained_ids, catalog_ids)
    scores = ModelScores(model, items)              # a served run (genair_core.serving)
    rows = evaluate(log, scores)                    # one row per target

- **Targets**: every interaction after T. Its history is the user's interactions before it,
  those after T included, as a service refreshed nightly sees them; a user's first interaction
  has no history and is no target (a user first seen after T counts from the second on).
- **Kinds**: `new`, an item first interacted with after T; `warm`, an item the models trained
  on; `untrained`, an item present before T that training never saw (dropped by the k-core).
- **Windows**: the targets in the first half of the time after T validate every choice
  (`valid`), the second half reports (`test`).
- **Candidates**: every catalog item, history masked; the target's rank counts the candidates
  scored at or above it (genair_core.metrics.full_ranks), so an item a model cannot score
  (-inf) is ranked last. A second view ranks new targets among the new items only.
- **Aggregation**: per user, then over users (`user_means`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from scipy import sparse

from genair_core.metrics import full_ranks, rank_metrics
from genair_core.models import SequentialRecommender
from genair_core.serving import ServingItems, gather, left_padded

KINDS = ("new", "warm", "untrained")
WINDOWS = ("valid", "test")
AT = 10
BATCH = 512  # targets per forward pass and scoring block


@dataclass(frozen=True)
class ColdStartLog:
    """The whole log, by user then time, with the targets after T marked.

    `items[p]` is interaction p's catalog index (1..N: `candidate_ids[i - 1]`; 0 for an item
    outside the catalog). User u's interactions are `ptr[u]:ptr[u + 1]`; target j is interaction
    `position[j]`, of user `user[j]`, its history `ptr[user[j]]:position[j]`."""

    as_of: datetime
    candidate_ids: list[str]
    kind_of_item: np.ndarray  # (N + 1,) int8: index into KINDS, -1 for padding
    user_ids: list[str]
    ptr: np.ndarray
    items: np.ndarray
    seconds: np.ndarray  # (P,) int64: each interaction's time
    position: np.ndarray  # (M,) int64
    user: np.ndarray  # (M,) int64
    window: np.ndarray  # (M,) int8: index into WINDOWS

    @classmethod
    def of(
        cls,
        interactions: pa.Table,
        as_of: datetime,
        trained_ids: Sequence[str],
        candidate_ids: Sequence[str],
    ) -> ColdStartLog:
        """`interactions` (user_id, item_id, timestamp): the whole log; `trained_ids`: the items
        the models trained on; `candidate_ids`: today's catalog items with a vector."""
        candidate_ids = sorted(candidate_ids)
        users, user_codes = np.unique(
            interactions["user_id"].to_numpy(zero_copy_only=False), return_inverse=True
        )
        item_ids = interactions["item_id"].to_numpy(zero_copy_only=False)
        seconds = _seconds(interactions["timestamp"])
        order = np.lexsort((item_ids, seconds, user_codes))
        index = pc.index_in(interactions["item_id"], pa.array(candidate_ids, pa.string()))
        items = (pc.fill_null(index, -1).to_numpy().astype(np.int64) + 1)[order]
        seconds, user_codes = seconds[order], user_codes[order]
        ptr = np.searchsorted(user_codes, np.arange(len(users) + 1)).astype(np.int64)

        cut = int(as_of.timestamp())
        end = int(seconds.max())
        first_seen = np.full(len(candidate_ids) + 1, np.iinfo(np.int64).max)
        np.minimum.at(first_seen, items, seconds)
        trained = np.isin(np.asarray(candidate_ids, dtype=object), list(trained_ids))
        kind = np.where(first_seen[1:] > cut, 0, np.where(trained, 1, 2)).astype(np.int8)
        kind_of_item = np.concatenate([[-1], kind]).astype(np.int8)

        is_first = np.zeros(len(items), dtype=bool)
        is_first[ptr[:-1][np.diff(ptr) > 0]] = True
        target = (seconds > cut) & ~is_first & (items > 0)
        position = np.flatnonzero(target).astype(np.int64)
        half = cut + (end - cut) / 2
        window = (seconds[position] > half).astype(np.int8)
        return cls(
            as_of,
            candidate_ids,
            kind_of_item,
            users.tolist(),
            ptr,
            items,
            seconds,
            position,
            user_codes[position].astype(np.int64),
            window,
        )

    @property
    def target_items(self) -> np.ndarray:
        return self.items[self.position]

    @property
    def kind(self) -> np.ndarray:
        """(M,) each target's kind (index into KINDS)."""
        return self.kind_of_item[self.target_items]

    def history(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start and end (in `items`) of each target's history."""
        return self.ptr[self.user[targets]], self.position[targets]


# (log, target indices) -> (B, N + 1) float32 scores, column 0 the padding's.
Scorer = Callable[[ColdStartLog, np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class ModelScores:
    """A served model's scores (genair_core.serving.serving_model); items it cannot represent
    score -inf and are left out of the histories it reads."""

    model: SequentialRecommender
    items: ServingItems

    @torch.no_grad()
    def __call__(self, log: ColdStartLog, targets: np.ndarray) -> torch.Tensor:
        to_model = _index_map(log.candidate_ids, self.items.item_ids)  # (N + 1,)
        model_items = to_model[log.items]
        kept = np.concatenate([[0], np.cumsum(model_items > 0)])
        starts, ends = log.history(targets)
        seen = model_items[model_items > 0]
        starts, ends = kept[starts], kept[ends]
        width = max(1, min(int((ends - starts).max(initial=0)) + 1, self.model.config.max_len))
        history = torch.from_numpy(left_padded(seen, starts, ends, width))
        vectors = self.model.user_vectors(history)  # (B, h)
        table = self.model.encoder.all_items()  # (n + 1, h)
        model_scores = vectors @ table.T
        scores = torch.full((len(targets), len(log.candidate_ids) + 1), -torch.inf)
        columns = torch.from_numpy(np.flatnonzero(to_model > 0))
        scores[:, columns] = model_scores[:, torch.from_numpy(to_model[to_model > 0])]
        # A user with no item the model can represent has no state: nothing is ranked above
        # anything, every candidate counts against the target.
        scores[torch.from_numpy(ends == starts)] = -torch.inf
        return scores


@dataclass(frozen=True)
class ContentScores:
    """The content-only baseline: the mean of the user's history vectors, scored by dot product
    against every item's vector (`vectors` (N, d), in `log.candidate_ids` order)."""

    vectors: np.ndarray

    def __call__(self, log: ColdStartLog, targets: np.ndarray) -> torch.Tensor:
        table = np.concatenate([np.zeros((1, self.vectors.shape[1])), self.vectors])
        ptr, flat = gather(log.items, *log.history(targets))
        known = (flat > 0).astype(np.float64)  # an item outside the catalog has no vector
        counts = np.add.reduceat(known, ptr[:-1]) if flat.size else np.zeros(len(targets))
        counts[np.diff(ptr) == 0] = 0  # reduceat's value for an empty range is not 0
        weights = known / np.repeat(np.maximum(counts, 1), np.diff(ptr))
        mean = sparse.csr_matrix((weights, flat, ptr), shape=(len(targets), len(table)))
        return torch.from_numpy(((mean @ table) @ table.T).astype(np.float32))


@dataclass(frozen=True)
class FixedScores:
    """The same scores for every target: popularity (interactions up to T per item) or a random
    order of the new items above a random order of the others (`random_new`)."""

    scores: np.ndarray  # (N + 1,)

    @classmethod
    def popularity(cls, log: ColdStartLog) -> FixedScores:
        known = log.items[log.seconds <= log.as_of.timestamp()]
        counts = np.bincount(known, minlength=len(log.candidate_ids) + 1)
        counts[0] = 0
        return cls(counts.astype(np.float32))

    @classmethod
    def random_new(cls, log: ColdStartLog, seed: int) -> FixedScores:
        rng = np.random.default_rng(seed)
        scores = rng.random(len(log.candidate_ids) + 1).astype(np.float32)
        scores[log.kind_of_item == 0] += 1
        return cls(scores)

    def __call__(self, log: ColdStartLog, targets: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.scores).expand(len(targets), -1)


def evaluate(log: ColdStartLog, scorer: Scorer) -> pa.Table:
    """One row per target: user, window, kind, and its NDCG@10 and HR@10 against the whole
    catalog and, for a new target, among the new items only; whether its top 10 holds a new
    item."""
    n = len(log.position)
    ranks = np.zeros(n, dtype=np.int64)
    new_ranks = np.zeros(n, dtype=np.int64)
    top_has_new = np.zeros(n, dtype=bool)
    is_new = torch.from_numpy(log.kind_of_item == 0)
    # Targets by history length, so each forward pass is as wide as its longest history.
    lengths = log.position - log.ptr[log.user]
    by_length = np.argsort(lengths, kind="stable")
    for start in range(0, n, BATCH):
        batch = by_length[start : start + BATCH]
        scores = scorer(log, batch).clone()
        scores[:, 0] = -torch.inf
        starts, ends = log.history(batch)
        ptr, seen = gather(log.items, starts, ends)
        targets = torch.from_numpy(log.items[log.position[batch]])
        exclude = (torch.from_numpy(ptr), torch.from_numpy(seen))
        ranks[batch] = full_ranks(scores, targets, *exclude).numpy()
        among_new = scores.masked_fill(~is_new, -torch.inf)
        new_ranks[batch] = full_ranks(among_new, targets, *exclude).numpy()
        masked = scores.clone()
        owner = torch.repeat_interleave(torch.arange(len(batch)), torch.from_numpy(np.diff(ptr)))
        masked[owner, torch.from_numpy(seen)] = -torch.inf
        top = _top_by_index(masked, AT)
        # An item scored -inf is not recommended, only left over (an `id` model's new items).
        shown = is_new[top] & torch.isfinite(masked.gather(1, top))
        top_has_new[batch] = shown.any(dim=1).numpy()
    full = rank_metrics(ranks, (AT,))
    among = rank_metrics(new_ranks, (AT,))
    new = log.kind == 0
    nan = np.full(n, np.nan)
    return pa.table(
        {
            "user_id": pa.array(log.user_ids, pa.string()).take(pa.array(log.user)),
            "window": pa.array(np.asarray(WINDOWS)[log.window]),
            "kind": pa.array(np.asarray(KINDS)[log.kind]),
            "rank": pa.array(ranks),
            f"ndcg@{AT}": pa.array(full[f"ndcg@{AT}"]),
            f"hr@{AT}": pa.array(full[f"hr@{AT}"]),
            f"new_only_ndcg@{AT}": pa.array(np.where(new, among[f"ndcg@{AT}"], nan)),
            f"new_only_hr@{AT}": pa.array(np.where(new, among[f"hr@{AT}"], nan)),
            "top_holds_new": pa.array(top_has_new),
        }
    )


def user_means(rows: pa.Table, metric: str, window: str, kind: str | None) -> dict[str, float]:
    """{user: the mean of `metric` over the user's targets of `window` and `kind` (None: all
    kinds)}; users without such a target are absent."""
    keep = pc.equal(rows["window"], window)
    if kind is not None:
        keep = pc.and_(keep, pc.equal(rows["kind"], kind))
    chosen = rows.filter(keep)
    values = chosen[metric].to_numpy(zero_copy_only=False).astype(np.float64)
    users = chosen["user_id"].to_numpy(zero_copy_only=False)
    out: dict[str, float] = {}
    if not len(users):
        return out
    names, codes = np.unique(users, return_inverse=True)
    sums = np.bincount(codes, weights=values)
    counts = np.bincount(codes)
    return dict(zip(names.tolist(), (sums / counts).tolist(), strict=True))


def choose_as_of(
    interactions: pa.Table, *, min_new_share: float = 0.05, min_new_targets: int = 200
) -> datetime:
    """The latest midnight (UTC) after which at least `min_new_share` of the items are first
    interacted with, and each half of the time after it holds at least `min_new_targets`
    interactions with those items, a user's first interaction aside."""
    seconds = _seconds(interactions["timestamp"])
    end, start = int(seconds.max()), int(seconds.min())
    catalog = pc.unique(interactions["item_id"]).to_pylist()
    cut = datetime.fromtimestamp(end - end % 86_400, tz=UTC)
    while cut.timestamp() > start:
        log = ColdStartLog.of(interactions, cut, [], catalog)
        new_targets = log.kind == 0
        halves = [int((new_targets & (log.window == w)).sum()) for w in range(len(WINDOWS))]
        new_items = int((log.kind_of_item == 0).sum())
        if new_items >= min_new_share * len(catalog) and min(halves) >= min_new_targets:
            return cut
        cut -= timedelta(days=1)
    raise ValueError(
        f"no day of the log leaves {min_new_share:.0%} of the items new with "
        f"{min_new_targets} new-item targets in each half of the time after it"
    )


def _seconds(column: pa.ChunkedArray) -> np.ndarray:
    """Seconds since the epoch, whatever the column's unit (ingest keeps whole seconds)."""
    seconds = pc.cast(column, pa.timestamp("s", tz="UTC"), safe=False)
    return pc.cast(seconds, pa.int64()).to_numpy()


def _index_map(candidate_ids: Sequence[str], model_ids: Sequence[str]) -> np.ndarray:
    """(N + 1,) each candidate's index in the model's items (1..n), 0 where it has none."""
    position = {item_id: i for i, item_id in enumerate(model_ids, start=1)}
    return np.array([0, *(position.get(i, 0) for i in candidate_ids)], dtype=np.int64)


def _top_by_index(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) the columns of the k highest scores of each row, ties by the lower column."""
    n = scores.shape[1]
    # Within a tie, a lower column first: sort by score, then stable by column.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, : min(k, n)]
