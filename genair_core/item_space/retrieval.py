"""Next-item retrieval in item space: how much of what a user consumes next does an item space
alone predict, with no recommender on top?

Protocol (issue 10): for each user with held-out items, the query is the user's LAST TRAINING item;
every item 1..n_items is scored against it and the held-out item's rank decides HR@k and NDCG@k
(genair_core.metrics.full_ranks and rank_metrics: 0-based, ties and NaN count against, the
user's history masked). The history masked for the validation target is every training item (the
query among them); for the test target also the validation item. Validation numbers are for
tuning (e.g. the calibration settings); test numbers are the ones reported.

Spaces compared, each as a score of (query item, candidate item):
- "raw": cosine of the pooled LLM vectors (item_embeddings);
- "calibrated": cosine of the behaviourally calibrated vectors (calibrated_embeddings);
- "cooccurrence": the number of users whose training prefix holds both items (the behavioural
  ceiling an LLM space should approach; items that never co-occurred with the query tie at 0);
- "popularity": the candidate's training interactions, the same for every query;
- "random": uniform scores from a stream seeded by (RANDOM_SEED, user_idx).

An item without a vector in a space scores -inf there: as a candidate it ranks below every item
that has one; as a target it ranks last (every candidate scores >= -inf), a miss; a user whose
query has no vector gets -inf everywhere, a miss. Coverage rows say how many items have a vector.

Whether a space beats another is the two-sided Wilcoxon signed-rank test on the per-user values
(genair_core.report.results.paired_test), against raw, co-occurrence and popularity. Collapse
diagnostics (mean pairwise cosine, effective rank) are taken over the L2-normalised vectors, the
space the cosine ranks in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch

from genair_core.data.sequences import TEST, VALID, Split, UserSequences
from genair_core.metrics import (
    KS,
    effective_rank,
    full_ranks,
    mean_pairwise_cosine,
    rank_metrics,
)
from genair_core.report.results import paired_test
from genair_core.tables import RETRIEVAL_METRICS, VECTOR_SPACES

# Part of the stage's cache key: bump when the same inputs would give different numbers.
# 2: p-values against popularity too.
RETRIEVAL_VERSION = 2
SPACES = (*VECTOR_SPACES, "cooccurrence", "popularity", "random")
BASELINE, CEILING, POPULARITY = "raw", "cooccurrence", "popularity"
SPLITS: tuple[Split, ...] = (VALID, TEST)
REPORT_K = 10
RANDOM_SEED = 0
# Scores held at once while ranking: (users in a chunk) x (n_items + 1) float32 cells.
CHUNK_CELLS = 1 << 24
DIAGNOSTICS_SPLIT = "vectors"  # the `split` of the rows that describe a space, not a ranking


@dataclass(frozen=True)
class Queries:
    """Who is evaluated and against what: the users (row order of every per-user array) that have
    a validation and a test item and at least one training item."""

    n_items: int
    user_idx: np.ndarray  # (U,)
    query: np.ndarray  # (U,) item_idx of each user's last training item
    targets: dict[str, np.ndarray]  # split -> (U,) item_idx
    history: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (ptr (U + 1,), items) masked

    @classmethod
    def from_sequences(cls, data: UserSequences) -> Queries:
        rows = np.flatnonzero(data.held_out & (data.n_train >= 1))
        if rows.size == 0:
            raise ValueError("sequences: no user has a training item and held-out items")
        query = data.items[data.ptr[rows] + data.n_train[rows] - 1]
        return cls(
            n_items=data.n_items,
            user_idx=data.user_idx[rows],
            query=query,
            targets={split: data.targets(rows, split) for split in SPLITS},
            history={split: data.history_csr(rows, split) for split in SPLITS},
        )

    @property
    def n_users(self) -> int:
        return self.user_idx.size


class Space(Protocol):
    """Scores (B, n_items + 1) float32 of every item (column 0 padding) for B users' queries."""

    def scores(self, query: np.ndarray, user_idx: np.ndarray) -> np.ndarray: ...

    def coverage(self) -> int:
        """How many of the items 1..n_items this space can score at all."""
        ...


@dataclass(frozen=True)
class VectorSpace:
    """Cosine between item vectors. `unit` (n_items + 1, d) float32: L2-normalised rows by item
    index, zero rows where `present` (n_items + 1,) is False (row 0, items without a vector)."""

    unit: np.ndarray
    present: np.ndarray

    @classmethod
    def from_vectors(
        cls, item_ids: list[str], vector_item_ids: list[str], vectors: np.ndarray, table: str
    ) -> VectorSpace:
        """From a vector table's rows (any order, items outside `item_ids` ignored); `item_ids`
        is item_id by item_idx from 1. Duplicate, non-finite or all-zero vectors raise
        ValueError naming `table`."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(vector_item_ids):
            raise ValueError(
                f"{table}.vector: expected one row per item_id, got shape {vectors.shape} for "
                f"{len(vector_item_ids)} ids"
            )
        if len(set(vector_item_ids)) != len(vector_item_ids):
            raise ValueError(f"{table}.item_id: an item has more than one vector")
        index = {item_id: i for i, item_id in enumerate(item_ids, start=1)}
        source = np.array([j for j, item in enumerate(vector_item_ids) if item in index], np.int64)
        target = np.array([index[vector_item_ids[j]] for j in source], dtype=np.int64)
        kept = vectors[source]
        if not np.isfinite(kept).all():
            raise ValueError(f"{table}.vector holds NaN or inf values")
        norms = np.linalg.norm(kept, axis=1)
        if (norms == 0).any():
            zero = vector_item_ids[int(source[np.flatnonzero(norms == 0)[0]])]
            raise ValueError(f"{table}.vector of item {zero!r} is all zeros: no direction")
        unit = np.zeros((len(item_ids) + 1, vectors.shape[1]), dtype=np.float32)
        unit[target] = kept / norms[:, None]
        present = np.zeros(len(item_ids) + 1, dtype=bool)
        present[target] = True
        return cls(unit, present)

    def scores(self, query: np.ndarray, user_idx: np.ndarray) -> np.ndarray:
        out = self.unit[query] @ self.unit.T  # (B, d) @ (d, n_items + 1)
        out[:, ~self.present] = -np.inf
        out[~self.present[query]] = -np.inf
        return out

    def coverage(self) -> int:
        return int(self.present.sum())

    def diagnostics(self) -> dict[str, float]:
        """Mean pairwise cosine and effective rank of the vectors present (unit rows)."""
        unit = self.unit[self.present]
        if unit.shape[0] < 2:
            return {}
        return {
            "dimension": float(unit.shape[1]),
            "mean_pairwise_cosine": mean_pairwise_cosine(unit),
            "effective_rank": effective_rank(unit),
        }


@dataclass(frozen=True)
class CooccurrenceSpace:
    """Score = count(query, candidate): users whose training prefix holds both items."""

    counts: sp.csr_matrix  # (n_items + 1, n_items + 1) symmetric, zero diagonal

    @classmethod
    def from_pairs(
        cls, i: np.ndarray, j: np.ndarray, count: np.ndarray, n_items: int
    ) -> CooccurrenceSpace:
        """From cooccurrence rows (i < j, item indices in 1..n_items)."""
        i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
        count = np.asarray(count, np.float32)
        if i.size and (min(i.min(), j.min()) < 1 or max(i.max(), j.max()) > n_items):
            raise ValueError(f"cooccurrence.i/j hold item indices outside 1..{n_items}")
        if (i >= j).any():
            raise ValueError("cooccurrence: every pair must have i < j")
        shape = (n_items + 1, n_items + 1)
        upper = sp.coo_matrix((count, (i, j)), shape=shape)
        return cls((upper + upper.T).tocsr())

    def scores(self, query: np.ndarray, user_idx: np.ndarray) -> np.ndarray:
        return self.counts[query].toarray().astype(np.float32, copy=False)

    def coverage(self) -> int:
        return int((self.counts.getnnz(axis=1)[1:] > 0).sum())


@dataclass(frozen=True)
class PopularitySpace:
    """Score = the candidate's training interactions, whatever the query."""

    train_counts: np.ndarray  # (n_items + 1,)

    def scores(self, query: np.ndarray, user_idx: np.ndarray) -> np.ndarray:
        row = self.train_counts.astype(np.float32)
        return np.broadcast_to(row, (query.size, row.size)).copy()

    def coverage(self) -> int:
        return int((self.train_counts[1:] > 0).sum())


@dataclass(frozen=True)
class RandomSpace:
    """Uniform scores; a user's stream depends on (seed, user_idx) alone, not on the chunking."""

    n_items: int
    seed: int = RANDOM_SEED

    def scores(self, query: np.ndarray, user_idx: np.ndarray) -> np.ndarray:
        return np.stack(
            [
                np.random.default_rng([self.seed, int(u)]).random(self.n_items + 1, np.float32)
                for u in user_idx
            ]
        ).reshape(len(user_idx), self.n_items + 1)

    def coverage(self) -> int:
        return self.n_items


def space_ranks(space: Space, queries: Queries, split: Split) -> np.ndarray:
    """(U,) 0-based rank of each user's `split` target among all items, by chunks of users."""
    ptr, masked = queries.history[split]
    targets = queries.targets[split]
    chunk = max(1, CHUNK_CELLS // (queries.n_items + 1))
    ranks = np.empty(queries.n_users, dtype=np.int64)
    for start in range(0, queries.n_users, chunk):
        stop = min(start + chunk, queries.n_users)
        scores = space.scores(queries.query[start:stop], queries.user_idx[start:stop])
        ranks[start:stop] = full_ranks(
            torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)),
            torch.from_numpy(targets[start:stop]),
            torch.from_numpy(ptr[start : stop + 1]),
            torch.from_numpy(masked),
        ).numpy()
    return ranks


class RetrievalTables(Protocol):
    """What the stage reads, as storage.retrieval hands it over."""

    n_items: int
    sequences: pa.Table  # user_idx, position, item_idx, split
    item_ids: list[str]  # item_id by item_idx, from 1
    vectors: dict[str, tuple[list[str], np.ndarray]]  # space -> (item_id per row, (N, d))
    calibrated_version: str | None  # the calibrated_embeddings version, if that space is read
    pairs: pa.Table  # cooccurrence i, j, count


@dataclass(frozen=True)
class RetrievalOutcome:
    table: pa.Table  # RETRIEVAL_METRICS
    markdown: str
    summary: dict[str, object]


def build_spaces(tables: RetrievalTables, data: UserSequences) -> dict[str, Space]:
    """Every space the tables allow, in SPACES order (no vectors for a space: no such space)."""
    spaces: dict[str, Space] = {}
    for name in SPACES:
        if name in VECTOR_SPACES and name in tables.vectors:
            ids, vectors = tables.vectors[name]
            spaces[name] = VectorSpace.from_vectors(
                tables.item_ids, ids, vectors, VECTOR_SPACES[name]
            )
        elif name == "cooccurrence":
            pairs = tables.pairs
            spaces[name] = CooccurrenceSpace.from_pairs(
                pairs["i"].to_numpy(),
                pairs["j"].to_numpy(),
                pairs["count"].to_numpy(),
                data.n_items,
            )
        elif name == "popularity":
            spaces[name] = PopularitySpace(data.train_counts())
        elif name == "random":
            spaces[name] = RandomSpace(data.n_items)
    return spaces


def evaluate_spaces(
    spaces: dict[str, Space], queries: Queries, ks: tuple[int, ...] = KS
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{space: {split: {"hr@k"/"ndcg@k": per-user values (U,)}}}."""
    return {
        name: {split: rank_metrics(space_ranks(space, queries, split), ks) for split in SPLITS}
        for name, space in spaces.items()
    }


def retrieval_metric_rows(
    per_user: dict[str, dict[str, dict[str, np.ndarray]]],
    spaces: dict[str, Space],
    n_items: int,
) -> list[dict]:
    """RETRIEVAL_METRICS rows: each space's mean metrics per split with paired p-values against
    `raw`, `cooccurrence` and `popularity` (None for the space itself or when that space is
    absent),
    then its coverage and, for vector spaces, the collapse diagnostics (split "vectors")."""
    rows = []
    for name, by_split in per_user.items():
        for split, metrics in by_split.items():
            for metric, values in metrics.items():
                rows.append(
                    {
                        "space": name,
                        "split": split,
                        "metric": metric,
                        "value": float(values.mean()),
                        "users": int(values.size),
                        "p_vs_raw": _p(per_user, name, BASELINE, split, metric),
                        "p_vs_cooccurrence": _p(per_user, name, CEILING, split, metric),
                        "p_vs_popularity": _p(per_user, name, POPULARITY, split, metric),
                    }
                )
    for name, space in spaces.items():
        described = {"items": float(space.coverage()), "item_coverage": space.coverage() / n_items}
        if isinstance(space, VectorSpace):
            described.update(space.diagnostics())
        for metric, value in described.items():
            rows.append(
                {
                    "space": name,
                    "split": DIAGNOSTICS_SPLIT,
                    "metric": metric,
                    "value": value,
                    "users": None,
                    "p_vs_raw": None,
                    "p_vs_cooccurrence": None,
                    "p_vs_popularity": None,
                }
            )
    return rows


def _p(per_user: dict, name: str, other: str, split: str, metric: str) -> float | None:
    if name == other or other not in per_user:
        return None
    return paired_test(per_user[name][split][metric], per_user[other][split][metric])


def retrieval_evaluation(tables: RetrievalTables, dataset: str) -> RetrievalOutcome:
    """The stage's one core call: spaces, ranks, metrics rows, the report and a summary."""
    data = UserSequences.from_table(tables.sequences, tables.n_items)
    queries = Queries.from_sequences(data)
    spaces = build_spaces(tables, data)
    per_user = evaluate_spaces(spaces, queries)
    rows = retrieval_metric_rows(per_user, spaces, data.n_items)
    markdown = render_retrieval_report(
        rows, dataset, queries.n_users, data.n_items, tables.calibrated_version
    )
    key = f"ndcg@{REPORT_K}"
    test = {r["space"]: r for r in rows if r["split"] == TEST and r["metric"] == key}
    summary: dict[str, object] = {
        "users": queries.n_users,
        "spaces": list(spaces),
        f"test_{key}": {name: round(r["value"], 4) for name, r in test.items()},
    }
    if "calibrated" in test and test["calibrated"]["p_vs_raw"] is not None:
        summary["p_calibrated_vs_raw"] = test["calibrated"]["p_vs_raw"]
    table = pa.Table.from_pylist(rows, schema=RETRIEVAL_METRICS)
    return RetrievalOutcome(table, markdown, summary)


def _value(rows: list[dict], space: str, split: str, metric: str) -> dict | None:
    for row in rows:
        if (row["space"], row["split"], row["metric"]) == (space, split, metric):
            return row
    return None


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def render_retrieval_report(
    rows: list[dict],
    dataset: str,
    n_users: int,
    n_items: int,
    calibrated_version: str | None,
    k: int = REPORT_K,
    alpha: float = 0.05,
) -> str:
    """reports/retrieval.md: the comparison table, the gap to co-occurrence and the diagnostics."""
    hr, ndcg = f"hr@{k}", f"ndcg@{k}"
    spaces = list(dict.fromkeys(r["space"] for r in rows))
    lines = [
        f"# Next-item retrieval in item space: {dataset}",
        "",
        f"{n_users} users, {n_items} items. Query: the user's last training item; every other "
        "item ranked by the space's score, the user's history masked (training items; for the "
        "test target also the validation item). Ties count against the target; an item without "
        "a vector in a space scores −inf there (a miss as target).",
        "",
        f"| space | items scored | valid HR@{k} | valid NDCG@{k} | test HR@{k} | test NDCG@{k} "
        "| p vs raw | p vs co-occurrence | p vs popularity |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for space in spaces:
        items = int(_value(rows, space, DIAGNOSTICS_SPLIT, "items")["value"])
        cells = [space, f"{items} ({100.0 * items / n_items:.0f}%)"]
        for split in SPLITS:
            for metric in (hr, ndcg):
                cells.append(f"{_value(rows, space, split, metric)['value']:.4f}")
        test = _value(rows, space, TEST, ndcg)
        cells += [_fmt_p(test[f"p_vs_{other}"]) for other in ("raw", CEILING, POPULARITY)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"p: two-sided Wilcoxon signed-rank test over users on per-user test NDCG@{k} "
        "(retrieval_metrics holds them for every split and metric).",
    ]
    if "calibrated" in spaces:
        lines += ["", *_gap_lines(rows, ndcg, alpha)]
    else:
        lines += ["", "No calibrated_embeddings yet: the calibrated space is not in this table."]
    if calibrated_version is not None:
        lines.append(f"Calibrated vectors: version `{calibrated_version}`.")
    vector_spaces = [s for s in spaces if _value(rows, s, DIAGNOSTICS_SPLIT, "effective_rank")]
    if vector_spaces:
        lines += [
            "",
            "## Collapse diagnostics (L2-normalised vectors)",
            "",
            "| space | items | mean pairwise cosine | effective rank | dimension |",
            "|---|---:|---:|---:|---:|",
        ]
        for space in vector_spaces:
            cos = _value(rows, space, DIAGNOSTICS_SPLIT, "mean_pairwise_cosine")["value"]
            erank = _value(rows, space, DIAGNOSTICS_SPLIT, "effective_rank")["value"]
            items = int(_value(rows, space, DIAGNOSTICS_SPLIT, "items")["value"])
            dim = int(_value(rows, space, DIAGNOSTICS_SPLIT, "dimension")["value"])
            lines.append(f"| {space} | {items} | {cos:.4f} | {erank:.1f} | {dim} |")
        lines += [
            "",
            "Mean pairwise cosine 1 and effective rank 1 would be a collapsed space; effective "
            "rank = exp(entropy of the normalised singular values), at most min(items, dimension).",
        ]
    return "\n".join(lines) + "\n"


def _gap_lines(rows: list[dict], ndcg: str, alpha: float) -> list[str]:
    cal = _value(rows, "calibrated", TEST, ndcg)
    raw = _value(rows, BASELINE, TEST, ndcg)
    cooc = _value(rows, CEILING, TEST, ndcg)
    out = []
    if raw is not None and cal["p_vs_raw"] is not None:
        out.append(_versus(cal, raw, "raw", cal["p_vs_raw"], alpha))
    if cooc is not None:
        gap = cooc["value"] - cal["value"]
        share = 100.0 * gap / cooc["value"] if cooc["value"] else math.nan
        text = (
            f"Gap to co-occurrence counts: {gap:+.4f} NDCG ({share:.1f}% of co-occurrence's "
            f"{cooc['value']:.4f}, p = {_fmt_p(cal['p_vs_cooccurrence'])})"
        )
        if raw is not None and cooc["value"] != raw["value"]:
            closed = 100.0 * (cal["value"] - raw["value"]) / (cooc["value"] - raw["value"])
            text += f"; calibration closes {closed:.1f}% of the raw space's gap"
        out.append(text + ".")
    pop = _value(rows, POPULARITY, TEST, ndcg)
    if pop is not None and cal["p_vs_popularity"] is not None:
        out.append(_versus(cal, pop, "popularity", cal["p_vs_popularity"], alpha))
    return out


def _versus(cal: dict, other: dict, name: str, p: float, alpha: float) -> str:
    verdict = "beats" if cal["value"] > other["value"] else "does not beat"
    significance = "significant" if p < alpha else "not significant"
    return (
        f"Calibrated {verdict} {name} on test NDCG: {cal['value']:.4f} vs {other['value']:.4f} "
        f"(p = {_fmt_p(p)}, {significance} at {alpha})."
    )


__all__ = [
    "RETRIEVAL_VERSION",
    "SPACES",
    "CooccurrenceSpace",
    "PopularitySpace",
    "Queries",
    "RandomSpace",
    "RetrievalOutcome",
    "RetrievalTables",
    "VectorSpace",
    "build_spaces",
    "evaluate_spaces",
    "render_retrieval_report",
    "retrieval_evaluation",
    "retrieval_metric_rows",
    "space_ranks",
]
