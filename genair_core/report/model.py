"""What the HTML report shows, as plain data, and how it is computed from what storage read.

Every section is either its data or `Missing`: what is not there yet and the command that writes
it, so a report of a partial run (`genair run --until pooling`, no recommender finished yet)
explains itself instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import faiss
import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from genair_core.config import EvaluationConfig
from genair_core.item_space.index import neighbours
from genair_core.metrics import rank_metrics
from genair_core.report.results import RESULT_METRICS, RunResult, summarize_runs, table_order

PROTOCOLS = ("full", "sampled")
MAP_LABELS = 9  # the most frequent labels get a colour each on the item map; the rest are "other"
OTHER = "other"


@dataclass(frozen=True)
class Missing:
    """A section that has no data yet: what is missing, and the command that writes it."""

    what: str
    command: str


@dataclass(frozen=True)
class ResultsSection:
    """The results table of each protocol: summarize_runs() rows (backbone × variant, mean ± std
    over seeds, paired test against `id`), and the popularity baseline's test means."""

    rows: dict[str, list[dict]]  # {"full" | "sampled": summarize_runs() rows}
    popularity: dict[str, dict[str, float]]  # {protocol: {metric: mean}}; empty if not scored
    finished: int  # runs with test ranks
    planned: int  # runs in the configured grid
    negatives: int  # sampled protocol: negatives per user


@dataclass(frozen=True)
class TrainingCurve:
    """One run's validation NDCG@10 and loss terms per epoch (training_log)."""

    backbone: str
    variant: str
    seed: int
    epochs: list[int]
    valid_ndcg: list[float]
    rec_loss: list[float]  # L_rec
    cal_loss: list[float]  # L_cal (0 for variants without calibration)


@dataclass(frozen=True)
class GroupSection:
    """Full-ranking test metrics per user group, mean over seeds: {(backbone, variant): {group:
    {metric: value}}} in table order, and each group's number of users."""

    cells: dict[tuple[str, str], dict[str, dict[str, float]]]
    users: dict[str, int]
    tail_share: float


@dataclass(frozen=True)
class ItemMap:
    """The 2-D PCA projection of each space's item vectors, the same items in the same order."""

    points: dict[str, np.ndarray]  # {"raw" | "calibrated": (N, 2)}
    explained: dict[str, tuple[float, float]]  # share of the variance each axis holds
    labels: list[str]  # (N,) the colour group of each item
    label_kind: str  # what the labels are ("genre", "category"), "" when there are none
    total_items: int  # items with a raw vector; N < total_items when the map is a sample
    notes: list[str] = field(default_factory=list)  # e.g. the calibrated space is missing


@dataclass(frozen=True)
class Neighbour:
    item_id: str
    title: str | None
    score: float  # cosine


@dataclass(frozen=True)
class ArchetypeExample:
    """An item, its metadata and archetype, and its nearest neighbours in each space (a list, or
    why there is none)."""

    item_id: str
    title: str | None
    metadata: dict[str, str]
    archetype: str
    interactions: int
    neighbours: dict[str, list[Neighbour] | str]


@dataclass(frozen=True)
class RunManifest:
    run: dict[str, object] | None  # the run record (storage.runs.RunRecord fields)
    settings: dict[str, object]  # the effective settings, as JSON
    tables: list[dict[str, object]]  # storage_status()["tables"]
    runs_total: int


@dataclass(frozen=True)
class Report:
    dataset: str
    profile: str | None
    smoke_run: bool  # the profile trims data or training: its numbers are not results
    generated_at: str
    results: ResultsSection | Missing
    curves: list[TrainingCurve] | Missing
    groups: GroupSection | Missing
    item_map: ItemMap | Missing
    archetypes: list[ArchetypeExample] | Missing
    manifest: RunManifest


RECOMMENDERS_COMMAND = "genair run --from negatives"


def results_section(
    runs: Mapping[str, tuple[str, str, int]],
    test_ranks: Mapping[str, Mapping[str, np.ndarray]],
    popularity_rows: Sequence[Mapping[str, object]],
    negatives: int,
) -> ResultsSection | Missing:
    """The results tables from the finished runs' test ranks ({run name: {protocol: ranks}}),
    `runs` naming each planned run's (backbone, variant, seed); popularity from its METRICS rows
    (protocol, split, group, metric, value)."""
    finished = {runs[name]: ranks for name, ranks in test_ranks.items() if name in runs}
    if not finished:
        return Missing(
            f"no recommender run has written test ranks yet (0 of {len(runs)} runs)",
            RECOMMENDERS_COMMAND,
        )
    try:
        rows = {
            protocol: summarize_runs(
                [RunResult(*key, rank_metrics(ranks[protocol])) for key, ranks in finished.items()]
            )
            for protocol in PROTOCOLS
        }
    except ValueError as err:  # runs scored on different test users: some are stale
        return Missing(f"the finished runs cannot be compared ({err})", RECOMMENDERS_COMMAND)
    popularity: dict[str, dict[str, float]] = {}
    for row in popularity_rows:
        if row["split"] == "test" and row["group"] == "all" and row["metric"] in RESULT_METRICS:
            popularity.setdefault(str(row["protocol"]), {})[str(row["metric"])] = float(
                row["value"]  # type: ignore[arg-type]
            )
    return ResultsSection(rows, popularity, len(finished), len(runs), negatives)


def training_curves(rows: Sequence[Mapping[str, object]]) -> list[TrainingCurve] | Missing:
    """One curve per run from training_log rows (backbone, variant, seed, epoch, rec_loss,
    cal_loss, valid_ndcg@10), epochs in order."""
    by_run: dict[tuple[str, str, int], list[Mapping[str, object]]] = {}
    for row in rows:
        key = (str(row["backbone"]), str(row["variant"]), int(row["seed"]))  # type: ignore[call-overload]
        by_run.setdefault(key, []).append(row)
    if not by_run:
        return Missing("no recommender run has logged an epoch yet", RECOMMENDERS_COMMAND)
    curves = []
    for (backbone, variant, seed), epochs in by_run.items():
        epochs = sorted(epochs, key=lambda r: int(r["epoch"]))  # type: ignore[call-overload]
        curves.append(
            TrainingCurve(
                backbone,
                variant,
                seed,
                [int(r["epoch"]) for r in epochs],  # type: ignore[call-overload]
                [float(r["valid_ndcg@10"]) for r in epochs],  # type: ignore[arg-type]
                [float(r["rec_loss"]) for r in epochs],  # type: ignore[arg-type]
                [float(r["cal_loss"]) for r in epochs],  # type: ignore[arg-type]
            )
        )
    return sorted(curves, key=lambda c: (c.backbone, c.variant, c.seed))


def group_section(
    rows: Sequence[Mapping[str, object]], tail_share: float
) -> GroupSection | Missing:
    """Mean over seeds of each metric per user group, from full-ranking test METRICS rows."""
    values: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = {}
    users: dict[str, int] = {}
    for row in rows:
        if row["metric"] not in RESULT_METRICS or row["group"] == "all":
            continue
        group = str(row["group"])
        cell = values.setdefault((str(row["backbone"]), str(row["variant"])), {})
        cell.setdefault(group, {}).setdefault(str(row["metric"]), []).append(float(row["value"]))  # type: ignore[arg-type]
        users[group] = int(row["users"])  # type: ignore[call-overload]
    if not values:
        return Missing(
            "no finished recommender run has been scored by user group yet",
            "genair run --from recommenders",
        )
    ordered = table_order(list(values))
    cells = {
        key: {g: {m: float(np.mean(v)) for m, v in ms.items()} for g, ms in values[key].items()}
        for key in ordered
    }
    return GroupSection(cells, users, tail_share)


def project_2d(vectors: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """(N, 2) coordinates of the (N, D) rows on their first two principal components, and the
    share of the variance each holds. Each axis's sign is fixed (its largest loading positive),
    so the same vectors always give the same picture.

    PCA rather than t-SNE: exact and far faster. The components are the top eigenvectors of the
    smaller of the two Gram matrices, computed on one BLAS thread, which a busy machine slows far
    less than a threaded SVD (docs/benchmarks.md, "Figures measured in passing")."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an (N >= 2, D) matrix to project, got shape {x.shape}")
    x = x - x.mean(axis=0)
    with threadpool_limits(limits=1):
        if x.shape[1] <= x.shape[0]:  # (D, D) covariance: its eigenvectors are the components
            values, eigenvectors = np.linalg.eigh(x.T @ x)
            components = eigenvectors[:, ::-1][:, :2].T
        else:  # (N, N) Gram matrix: its eigenvectors u give the components as xᵀu / |xᵀu|
            values, eigenvectors = np.linalg.eigh(x @ x.T)
            components = (x.T @ eigenvectors[:, ::-1][:, :2]).T
            components /= np.maximum(np.linalg.norm(components, axis=1, keepdims=True), 1e-300)
    top = np.clip(values[::-1][:2], 0.0, None)
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    points = x @ components.T
    if points.shape[1] < 2:  # one-dimensional input: a flat second axis
        points = np.hstack([points, np.zeros((len(points), 1))])
    total = float((x**2).sum()) or 1.0
    shares = [float(v / total) for v in top] + [0.0]
    return points.astype(np.float32), (shares[0], shares[1])


def category_labels(categories: Sequence[Sequence[str] | None]) -> list[str | None]:
    """One label per item from its category path: the entry at the first depth where items
    differ (ml-100k's first genre; for Amazon the level below the category every item shares).
    None for an item without one."""
    depth = 0
    while True:
        present = {c[depth] for c in categories if c is not None and len(c) > depth}
        if len(present) != 1:
            break
        depth += 1
    return [c[depth] if c is not None and len(c) > depth else None for c in categories]


def item_map(
    vectors: Mapping[str, tuple[list[str], np.ndarray]],
    categories: Mapping[str, Sequence[str] | None],
    total_items: int,
    label_kind: str,
) -> ItemMap | Missing:
    """The raw and calibrated spaces ({space: (item_ids, (N, D) vectors)}) projected to 2-D over
    the items both hold, coloured by `category_labels` (the MAP_LABELS most frequent, the rest
    OTHER; a single colour when no item has a category)."""
    if "raw" not in vectors:
        return Missing("no item vectors (item_embeddings)", "genair run --until pooling")
    raw_ids = vectors["raw"][0]
    notes = []
    if "calibrated" in vectors:
        shared = set(vectors["calibrated"][0])
        kept = [i for i in raw_ids if i in shared]
    else:
        kept = list(raw_ids)
        notes.append(
            "No calibrated vectors (calibrated_embeddings): only the raw space is shown; "
            "`genair run --from calibrate --until calibrate` writes them."
        )
    if len(kept) < 2:
        return Missing("fewer than two items with vectors", "genair run --until pooling")
    points, explained = {}, {}
    for space, (ids, matrix) in vectors.items():
        row_of = {item: n for n, item in enumerate(ids)}
        rows = np.array([row_of[item] for item in kept], dtype=np.int64)
        points[space], explained[space] = project_2d(matrix[rows])
    found = category_labels([categories.get(item) for item in kept])
    counts: dict[str, int] = {}
    for label in found:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    top = sorted(counts, key=lambda k: (-counts[k], k))[:MAP_LABELS]
    labels = [label if label in top else OTHER for label in found]
    if not counts:
        label_kind = ""
        notes.append("No item has a genre or category: one colour for all.")
    return ItemMap(points, explained, labels, label_kind, total_items, notes)


def archetype_examples(
    examples: Sequence[Mapping[str, object]],
    indexes: Mapping[str, tuple[faiss.Index, pa.Table] | str],
    titles: Callable[[list[str]], Mapping[str, str | None]],
    k: int = 5,
) -> list[ArchetypeExample] | Missing:
    """Each example item (item_id, title, metadata, archetype, interactions) with its `k` nearest
    neighbours in each space's FAISS index (genair_core.item_space.index.neighbours, as `genair
    similar` finds them; an index given as a string is missing, and says why). `titles` looks up the
    neighbours' titles."""
    if not examples:
        return Missing(
            "no item has an archetype that its current item vector was pooled from",
            "genair run --until pooling",
        )
    found: dict[str, dict[str, list[tuple[str, float]] | str]] = {}
    wanted: set[str] = set()
    for example in examples:
        item = str(example["item_id"])
        found[item] = {}
        for space, loaded in indexes.items():
            if isinstance(loaded, str):
                found[item][space] = loaded
                continue
            try:
                hits = neighbours(loaded[0], loaded[1], item, k)
            except LookupError as err:  # the item has no vector in this index
                found[item][space] = str(err)
                continue
            found[item][space] = hits
            wanted.update(hit for hit, _ in hits)
    names = titles(sorted(wanted))
    return [
        ArchetypeExample(
            item_id=str(example["item_id"]),
            title=example.get("title"),  # type: ignore[arg-type]
            metadata=dict(example.get("metadata") or {}),  # type: ignore[call-overload]
            archetype=str(example["archetype"]),
            interactions=int(example.get("interactions") or 0),  # type: ignore[call-overload]
            neighbours={
                space: hits
                if isinstance(hits, str)
                else [Neighbour(hit, names.get(hit), score) for hit, score in hits]
                for space, hits in found[str(example["item_id"])].items()
            },
        )
        for example in examples
    ]


class ReportSources(Protocol):
    """What storage read for the report (storage.report.ReportTables); empty where a table is
    missing."""

    test_ranks: dict[str, dict[str, np.ndarray]]  # {run name: {protocol: test ranks}}
    group_rows: list[dict]  # the finished runs' full-ranking test METRICS rows
    popularity_rows: list[dict]  # the popularity baseline's test METRICS rows
    training_log: list[dict]  # TRAINING_LOG rows of the runs
    vectors: dict[str, tuple[list[str], np.ndarray]]  # {space: (item_ids, (N, D) vectors)}
    vector_items: int  # items with a raw vector
    categories: dict[str, list[str] | None]  # of the mapped items
    examples: list[dict]  # item_id, title, metadata, archetype, interactions
    indexes: dict[str, tuple[faiss.Index, pa.Table] | str]  # {space: (index, ids) or why not}
    run: dict[str, object] | None  # the run record
    status: dict[str, object]  # storage.runs.storage_status


def build_report(
    sources: ReportSources,
    *,
    dataset: str,
    profile: str | None,
    smoke_run: bool = False,
    runs: Mapping[str, tuple[str, str, int]],
    evaluation: EvaluationConfig,
    settings: dict[str, object],
    titles: Callable[[list[str]], Mapping[str, str | None]],
    generated_at: str,
) -> Report:
    """The report of a storage root: `runs` maps each planned recommender run's name to its
    (backbone, variant, seed); `settings` is the effective settings as JSON; `titles` looks up
    item titles (for the archetype examples' neighbours)."""
    return Report(
        dataset=dataset,
        profile=profile,
        smoke_run=smoke_run,
        generated_at=generated_at,
        results=results_section(
            runs, sources.test_ranks, sources.popularity_rows, evaluation.negatives
        ),
        curves=training_curves(sources.training_log),
        groups=group_section(sources.group_rows, evaluation.tail_share),
        item_map=item_map(
            sources.vectors,
            sources.categories,
            sources.vector_items,
            "genre" if dataset.startswith("movielens") else "category",
        ),
        archetypes=archetype_examples(sources.examples, sources.indexes, titles),
        manifest=RunManifest(
            run=sources.run,
            settings=settings,
            tables=list(sources.status.get("tables", [])),  # type: ignore[call-overload]
            runs_total=int(sources.status.get("runs_total", 0)),  # type: ignore[call-overload]
        ),
    )
