"""Cold start measured as it happens: models trained as of a time T score every interaction after
it, new items included, against the whole catalog (the protocol of "Let It Go? Not Quite",
RecSys 2025).

    log = ColdStartLog.of(interactions, as_of, trained_ids, catalog_ids)
    scores = ModelScores(model, items)     # a served run (genair_core.recommenders.serving)
    rows = evaluate(log, scores)           # one row per target

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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from scipy import sparse

from genair_core.metrics import full_ranks, rank_metrics
from genair_core.recommenders.models import SequentialRecommender
from genair_core.recommenders.serving import ServingItems, gather, left_padded
from genair_core.report.results import paired_test
from genair_core.tables import COLD_START_TARGETS

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
    is_first: np.ndarray  # (P,) bool: the user's first interaction, which has no history
    first_seen: np.ndarray  # (N + 1,) int64: each item's first interaction (never: int64 max)
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
            is_first,
            first_seen,
            position,
            user_codes[position].astype(np.int64),
            window,
        )

    @cached_property
    def counts_up_to_t(self) -> np.ndarray:
        """(N + 1,) each item's interactions up to T (the padding's 0), counted once a log."""
        counts = np.bincount(
            self.items[self.seconds <= self.as_of.timestamp()],
            minlength=len(self.candidate_ids) + 1,
        )
        counts[0] = 0
        return counts

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
    """A served model's scores (genair_core.recommenders.serving.serving_model); items it cannot
    represent score -inf and are left out of the histories it reads."""

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

    def __post_init__(self) -> None:
        padded = np.concatenate([np.zeros((1, self.vectors.shape[1])), self.vectors])
        object.__setattr__(self, "_table", padded)  # row 0: the padding's zeros

    @classmethod
    def of(cls, log: ColdStartLog, item_ids: Sequence[str], vectors: np.ndarray) -> ContentScores:
        """From the vectors of `item_ids` (any order; every candidate's among them)."""
        row = {item_id: i for i, item_id in enumerate(item_ids)}
        missing = [i for i in log.candidate_ids if i not in row]
        if missing:
            raise ValueError(f"{len(missing)} candidates have no vector, e.g. {missing[0]!r}")
        return cls(vectors[[row[i] for i in log.candidate_ids]])

    def __call__(self, log: ColdStartLog, targets: np.ndarray) -> torch.Tensor:
        table = self._table
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
        counts = log.counts_up_to_t
        return cls(counts.astype(np.float32))

    @classmethod
    def random_new(cls, log: ColdStartLog, seed: int) -> FixedScores:
        rng = np.random.default_rng(seed)
        scores = rng.random(len(log.candidate_ids) + 1).astype(np.float32)
        scores[log.kind_of_item == 0] += 1
        return cls(scores)

    def __call__(self, log: ColdStartLog, targets: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.scores).expand(len(targets), -1)


class LastBatch:
    """A scorer that keeps its last batch's scores: the methods built on it and scored in one
    pass (`evaluate_all`) compute them once. The batch is known by identity, as `evaluate_all`
    hands the same array to every method."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self._targets: np.ndarray | None = None
        self._scores = torch.empty(0)

    def __call__(self, log: ColdStartLog, targets: np.ndarray) -> torch.Tensor:
        if targets is not self._targets:
            self._targets, self._scores = targets, self.scorer(log, targets)
        return self._scores


def standardised(scores: torch.Tensor, over: torch.Tensor) -> torch.Tensor:
    """`scores` moved and scaled so that, in each row, the entries where `over` is True have mean
    0 and deviation 1 (the others follow the same map; a row with none is only moved by 0)."""
    count = over.sum(dim=1, keepdim=True).clamp(min=1)
    mean = torch.where(over, scores, 0.0).sum(dim=1, keepdim=True) / count
    spread = (torch.where(over, scores - mean, 0.0) ** 2).sum(dim=1, keepdim=True) / count
    return (scores - mean) / spread.sqrt().clamp(min=1e-12)


@dataclass(frozen=True)
class Standardised:
    """A scorer's scores, each row's finite ones over the candidates (column 0 aside) to mean 0
    and deviation 1; -inf stays -inf."""

    scorer: Scorer

    def __call__(self, log: ColdStartLog, targets: np.ndarray) -> torch.Tensor:
        scores = self.scorer(log, targets)
        finite = torch.isfinite(scores)
        finite[:, 0] = False
        return standardised(scores, finite)


def cold_items(log: ColdStartLog, few: int) -> torch.Tensor:
    """(N + 1,) True for the items with fewer than `few` interactions up to T: every new item,
    and the old items the remedies treat as new (the padding aside)."""
    cold = torch.from_numpy(log.counts_up_to_t < few)
    cold[0] = False
    return cold


@dataclass(frozen=True)
class MixedScores:
    """A remedy for cold items: the sequence model's score plus `weight` times the content-only
    score on the items with fewer than `few` interactions up to T (every new item). Both scorers
    give standardised scores (`Standardised`, in a `LastBatch` where several mixes share them).
    Items the model cannot score stay unscored."""

    model: Scorer
    content: Scorer
    weight: float
    few: int = 5

    @classmethod
    def of(cls, model: Scorer, content: Scorer, weight: float) -> MixedScores:
        """From a model's and the content-only scorer's raw scores."""
        return cls(Standardised(model), Standardised(content), weight)

    def __call__(self, log: ColdStartLog, targets: np.ndarray) -> torch.Tensor:
        model, content = self.model(log, targets), self.content(log, targets)
        cold = cold_items(log, self.few)
        return torch.where(cold & torch.isfinite(model), model + self.weight * content, model)


@dataclass(frozen=True)
class AlignedScores:
    """A remedy for the cold items' score scale: for each target, the warm items' scores are
    standardised among the warm items and the cold items' (fewer than `few` interactions up to
    T) among the cold items, then moved by `offset` deviations. Each group keeps its own order;
    only how the two interleave changes: a score-level form of aligning the cold items'
    distribution with the warm items' (ALDI, SIGIR 2023, does it for their embeddings).

    `cold_scores` orders the cold items: the model's own scores (`+align`) or the content-only
    baseline's (`+switch`, a switching hybrid: the model for warm items, content for cold).
    Items the model cannot score stay unscored."""

    model: Scorer
    cold_scores: Scorer
    offset: float
    few: int = 5

    def __call__(self, log: ColdStartLog, targets: np.ndarray) -> torch.Tensor:
        model = self.model(log, targets)
        scored = torch.isfinite(model)
        scored[:, 0] = False
        cold = scored & cold_items(log, self.few)
        warm = scored & ~cold
        shifted = standardised(self.cold_scores(log, targets), cold) + self.offset
        return torch.where(cold, shifted, torch.where(warm, standardised(model, warm), -torch.inf))


def evaluate(log: ColdStartLog, scorer: Scorer) -> pa.Table:
    """One row per target (genair_core.tables.COLD_START_TARGETS): user, window, kind, and its
    NDCG@10 and HR@10 against the whole catalog; for a new target among the new items only, for
    another with the new items left out of the candidates; whether its top 10 holds a new
    item."""
    return evaluate_all(log, {"": scorer})[""]


def evaluate_all(log: ColdStartLog, scorers: Mapping[str, Scorer]) -> dict[str, pa.Table]:
    """`evaluate` for several scorers in one pass over the targets: each batch's histories are
    gathered once, and scorers that share a `LastBatch` compute its scores once."""
    ranks = {name: _TargetRanks.empty(len(log.position)) for name in scorers}
    is_new = torch.from_numpy(log.kind_of_item == 0)
    # Targets by history length, so each forward pass is as wide as its longest history.
    lengths = log.position - log.ptr[log.user]
    by_length = np.argsort(lengths, kind="stable")
    for start in range(0, len(by_length), BATCH):
        batch = by_length[start : start + BATCH]
        ptr, seen = gather(log.items, *log.history(batch))
        targets = torch.from_numpy(log.items[log.position[batch]])
        exclude = (torch.from_numpy(ptr), torch.from_numpy(seen))
        owner = torch.repeat_interleave(torch.arange(len(batch)), torch.from_numpy(np.diff(ptr)))
        for name, scorer in scorers.items():
            scores = scorer(log, batch).clone()
            scores[:, 0] = -torch.inf
            found = ranks[name]
            found.full[batch] = full_ranks(scores, targets, *exclude).numpy()
            among_new = scores.masked_fill(~is_new, -torch.inf)
            found.new_only[batch] = full_ranks(among_new, targets, *exclude).numpy()
            without_new = scores.masked_fill(is_new, -torch.inf)
            found.old_only[batch] = full_ranks(without_new, targets, *exclude).numpy()
            scores[owner, torch.from_numpy(seen)] = -torch.inf
            # An item scored -inf is not recommended, only left over (an `id` model's new items).
            shown = top_by_index(scores, AT) & is_new & torch.isfinite(scores)
            found.top_holds_new[batch] = shown.any(dim=1).numpy()
    return {name: found.table(log) for name, found in ranks.items()}


@dataclass(frozen=True)
class _TargetRanks:
    """Each target's 0-based ranks in the three views, and whether its top 10 holds a new item."""

    full: np.ndarray
    new_only: np.ndarray
    old_only: np.ndarray
    top_holds_new: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _TargetRanks:
        zeros = partial(np.zeros, n, dtype=np.int64)
        return cls(zeros(), zeros(), zeros(), np.zeros(n, dtype=bool))

    def table(self, log: ColdStartLog) -> pa.Table:
        full = rank_metrics(self.full, (AT,))
        among = rank_metrics(self.new_only, (AT,))
        without = rank_metrics(self.old_only, (AT,))
        new = log.kind == 0
        return pa.table(
            {
                "user_id": pa.array(log.user_ids, pa.string()).take(pa.array(log.user)),
                "window": pa.array(np.asarray(WINDOWS)[log.window]),
                "kind": pa.array(np.asarray(KINDS)[log.kind]),
                "rank": pa.array(self.full),
                f"ndcg@{AT}": pa.array(full[f"ndcg@{AT}"]),
                f"hr@{AT}": pa.array(full[f"hr@{AT}"]),
                f"new_only_ndcg@{AT}": pa.array(among[f"ndcg@{AT}"], mask=~new),
                f"new_only_hr@{AT}": pa.array(among[f"hr@{AT}"], mask=~new),
                f"old_only_ndcg@{AT}": pa.array(without[f"ndcg@{AT}"], mask=new),
                f"old_only_hr@{AT}": pa.array(without[f"hr@{AT}"], mask=new),
                "top_holds_new": pa.array(self.top_holds_new),
            },
            schema=COLD_START_TARGETS,
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
    catalog = pc.unique(interactions["item_id"]).to_pylist()
    log = ColdStartLog.of(interactions, datetime.fromtimestamp(0, tz=UTC), [], catalog)
    first_seen = log.first_seen[1:]
    item_first = log.first_seen[log.items]
    end, start = int(log.seconds.max()), int(log.seconds.min())
    cut = end - end % 86_400
    while cut > start:
        half = cut + (end - cut) / 2
        on_new = (item_first > cut) & ~log.is_first
        seconds = log.seconds
        halves = (int((on_new & (seconds <= half)).sum()), int((on_new & (seconds > half)).sum()))
        new_items = int((first_seen > cut).sum())
        if new_items >= min_new_share * len(first_seen) and min(halves) >= min_new_targets:
            return datetime.fromtimestamp(cut, tz=UTC)
        cut -= 86_400
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


def top_by_index(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) True at the k highest scores of each row, ties at the k-th by the lower column."""
    kth = torch.topk(scores, min(k, scores.shape[1]), dim=1).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(dim=1, keepdim=True)
    return above | (tied & (torch.cumsum(tied, dim=1) <= room))


# --- the results ------------------------------------------------------------------------------

# (target kind or "all", metric): the views reported, in the table's order.
VIEWS = (
    ("new", "ndcg@10"),
    ("new", "hr@10"),
    ("new", "new_only_ndcg@10"),
    ("warm", "ndcg@10"),
    ("warm", "hr@10"),
    ("warm", "old_only_ndcg@10"),
    ("untrained", "ndcg@10"),
    ("all", "ndcg@10"),
    ("all", "hr@10"),
)
GENAIR_FAMILY = ("genair", "genair-warm", "genair-id")
CONTENT = ("content-raw", "content-calibrated")


@dataclass(frozen=True)
class Scored:
    """One method's rows (`evaluate`) for one seed: a run `<backbone>-<variant>` or a baseline
    (`popularity`, `content-raw`, `content-calibrated`, `random-new`)."""

    method: str
    seed: int
    rows: pa.Table


def per_user(scored: Sequence[Scored], window: str, kind: str, metric: str) -> dict[str, float]:
    """{user: the metric over the user's targets, averaged over the method's seeds}; every seed
    of one method has the same targets, so the same users."""
    by_seed = [user_means(s.rows, metric, window, _kind(kind)) for s in scored]
    users = sorted(set().union(*by_seed)) if by_seed else []
    return {u: float(np.mean([m[u] for m in by_seed if u in m])) for u in users}


def valid_new_ndcg(scored: Sequence[Scored], method: str) -> float:
    """`method`'s new-target NDCG@10 on the validation window (-inf without such a target): what
    every choice is made on."""
    users = per_user([s for s in scored if s.method == method], "valid", "new", "ndcg@10")
    return float(np.mean(list(users.values()))) if users else float("-inf")


def mean_over_users(scored: Sequence[Scored], window: str, kind: str, metric: str) -> float:
    """The metric per user, then over users (nan without a target of that kind)."""
    users = per_user(scored, window, kind, metric)
    return float(np.mean(list(users.values()))) if users else float("nan")


def warm_change(
    scored: Sequence[Scored], window: str, unremedied: Sequence[Scored] | None = None
) -> float:
    """The relative change of a method's warm-target NDCG@10 when the new items join the
    candidates (target 3's measure): against its own without them or, given `unremedied` (the
    rows of the run a remedy is applied to), against that run's without them, which also counts
    what the remedy costs on its own (it moves the old cold items too)."""
    with_new = mean_over_users(scored, window, "warm", "ndcg@10")
    without = mean_over_users(unremedied or scored, window, "warm", "old_only_ndcg@10")
    return with_new / without - 1


def unremedied_run(method: str) -> str:
    """The run a remedy is applied to (`sasrec-genair@adrop+mix0.5` -> `sasrec-genair@adrop`);
    a run or a baseline is its own."""
    return method.partition("+")[0]


def _paired(ours: Mapping[str, float], theirs: Mapping[str, float]) -> tuple[float, list[str]]:
    """The paired test's p-value over the users both hold, and those users (p 1.0: none)."""
    users = sorted(ours.keys() & theirs.keys())
    if not users:
        return 1.0, users
    a, b = np.array([ours[u] for u in users]), np.array([theirs[u] for u in users])
    return paired_test(a, b), users


def results_table(
    scored: Sequence[Scored], window: str, against: str | None = None
) -> list[dict[str, object]]:
    """One row per method: each view's mean over users (per user first, seeds averaged), the
    spread of the per-seed means, the share of targets whose top 10 holds a new item and the
    share of targets that are new; with `against` (a method), the paired Wilcoxon p-value of
    each method's new-target NDCG@10 against it, over the users both have."""
    methods: dict[str, list[Scored]] = {}
    for s in scored:
        methods.setdefault(s.method, []).append(s)
    baseline = per_user(methods[against], window, "new", "ndcg@10") if against else {}
    rows = []
    for method, runs in methods.items():
        row: dict[str, object] = {"method": method, "seeds": len(runs)}
        for kind, metric in VIEWS:
            users = per_user(runs, window, kind, metric)
            by_seed = (user_means(r.rows, metric, window, _kind(kind)) for r in runs)
            seeds = [np.mean(list(m.values())) for m in by_seed if m]
            row[f"{kind} {metric}"] = float(np.mean(list(users.values()))) if users else None
            row[f"{kind} {metric} sd"] = float(np.std(seeds)) if len(seeds) > 1 else None
        chosen = [r.rows.filter(pc.equal(r.rows["window"], window)) for r in runs]
        holds = [pc.mean(c["top_holds_new"]).as_py() for c in chosen]
        row["top-10 holds new"] = float(np.mean(holds))
        new = pc.equal(chosen[0]["kind"], "new")
        row["targets new"] = pc.mean(pc.cast(new, pa.float64())).as_py()
        row["targets"] = chosen[0].num_rows
        p_value, users = _paired(per_user(runs, window, "new", "ndcg@10"), baseline)
        row["p new"] = p_value if users and method != against else None
        rows.append(row)
    return rows


def _kind(kind: str) -> str | None:
    return None if kind == "all" else kind


def method_name(backbone: str, variant: str, tag: str = "") -> str:
    """A run's method: `sasrec-genair-id`, or with its tag (runs of other settings, named
    apart by `[recommenders] tag`): `sasrec-genair-id@adrop`."""
    return f"{backbone}-{variant}@{tag}" if tag else f"{backbone}-{variant}"


def run_tag(run_name: str, seed: int) -> str:
    """The tag a run's name ends with (genair_core.recommenders.run_spec.RunSpec.name), or ""."""
    return run_name.partition(f"-s{seed}")[2].removeprefix("-")


def variant_of(method: str) -> str | None:
    """The variant of a run's method (`sasrec-genair-warm` -> `genair-warm`, and so with a tag
    or a remedy: `sasrec-genair@adrop+mix0.5`); None: a baseline."""
    backbone, _, variant = method.partition("+")[0].partition("@")[0].partition("-")
    return variant if backbone in ("sasrec", "gru4rec", "bert4rec") else None


@dataclass(frozen=True)
class Verdict:
    """The issue's three targets for the GenAIR-family method and the content-only space chosen
    on the validation window, measured on the test window."""

    method: str
    content: str
    new_ndcg: float
    content_new_ndcg: float
    p_value: float  # paired Wilcoxon over the users with a new-item target, seeds averaged
    users: int
    warm_ndcg: float
    warm_ndcg_without_new: float  # the unremedied run's (unremedied_run), the new items left out
    own_warm_ndcg_without_new: float  # the method's own, the new items left out

    @property
    def beats_content(self) -> bool:
        return self.new_ndcg > self.content_new_ndcg and self.p_value < 0.05

    @property
    def new_to_warm(self) -> float:
        return self.new_ndcg / self.warm_ndcg if self.warm_ndcg else float("nan")

    @property
    def warm_change(self) -> float:
        """The relative change of warm-target NDCG@10 when the new items join the candidates
        with the remedy, against the unremedied run without them (target 3, strictly read)."""
        return self.warm_ndcg / self.warm_ndcg_without_new - 1

    @property
    def own_warm_change(self) -> float:
        """The same against the method's own value without the new items (target 3 to the
        letter: a remedy's cost on the old cold items counts on both sides)."""
        return self.warm_ndcg / self.own_warm_ndcg_without_new - 1


def verdict(scored: Sequence[Scored], warm_within: float | None = None) -> Verdict:
    """The GenAIR-family method with the best new-target NDCG@10 on the validation window, and
    the content-only space likewise, measured on the test window. `warm_within`: choose only
    among the methods whose warm-target NDCG@10 on validation, the new items among the
    candidates, is within this share of the unremedied run's without them (target 3 held on
    validation, strictly read: `warm_change`); None: among all."""
    methods: dict[str, list[Scored]] = {}
    for s in scored:
        methods.setdefault(s.method, []).append(s)

    family = [m for m in methods if variant_of(m) in GENAIR_FAMILY]
    if warm_within is not None:
        family = [
            m
            for m in family
            if abs(warm_change(methods[m], "valid", methods.get(unremedied_run(m)))) <= warm_within
        ]
    content = [m for m in CONTENT if m in methods]
    if not family or not content:
        raise ValueError("a verdict needs a GenAIR-family run and a content-only baseline")
    best = max(family, key=lambda m: (valid_new_ndcg(scored, m), m))
    space = max(content, key=lambda m: (valid_new_ndcg(scored, m), m))
    ours = per_user(methods[best], "test", "new", "ndcg@10")
    theirs = per_user(methods[space], "test", "new", "ndcg@10")
    p_value, users = _paired(ours, theirs)
    if not users:
        raise ValueError("the test window holds no target on a new item")

    def test_mean(kind: str, metric: str, method: str = best) -> float:
        return mean_over_users(methods[method], "test", kind, metric)

    base = unremedied_run(best) if unremedied_run(best) in methods else best
    return Verdict(
        best,
        space,
        float(np.mean([ours[u] for u in users])),
        float(np.mean([theirs[u] for u in users])),
        p_value,
        len(users),
        test_mean("warm", "ndcg@10"),
        test_mean("warm", "old_only_ndcg@10", base),
        test_mean("warm", "old_only_ndcg@10"),
    )


_HEADERS = {
    ("new", "ndcg@10"): "new NDCG@10",
    ("new", "hr@10"): "new HR@10",
    ("new", "new_only_ndcg@10"): "new NDCG@10, among new",
    ("warm", "ndcg@10"): "warm NDCG@10",
    ("warm", "hr@10"): "warm HR@10",
    ("warm", "old_only_ndcg@10"): "warm NDCG@10, new items out",
    ("untrained", "ndcg@10"): "untrained NDCG@10",
    ("all", "ndcg@10"): "all NDCG@10",
    ("all", "hr@10"): "all HR@10",
}


def render_results(rows: Sequence[Mapping[str, object]], window: str) -> list[str]:
    """A Markdown table of `results_table` rows: mean over users (± the spread of the seeds)."""
    header = ["method", "seeds", *_HEADERS.values(), "top-10 holds new", "p (new NDCG@10)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"`{row['method']}`", str(row["seeds"])]
        for kind, metric in VIEWS:
            value, spread = row[f"{kind} {metric}"], row[f"{kind} {metric} sd"]
            cell = "–" if value is None else f"{value:.4f}"
            if value is not None and spread is not None:
                cell += f" ± {spread:.4f}"
            cells.append(cell)
        cells.append(f"{100 * float(row['top-10 holds new']):.1f}%")
        cells.append("–" if row.get("p new") is None else f"{row['p new']:.2g}")
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0] if rows else {"targets": 0, "targets new": 0.0}
    lines.append("")
    lines.append(
        f"{window} window: {first['targets']:,} targets, {100 * float(first['targets new']):.1f}% "
        "of them on new items"
    )
    return lines
