"""Pinned results of a pipeline run, compared in the way each table's values allow across CPUs.

Tables that are exact by construction (ingest, split, co-occurrence, scripted archetypes, sampled
negatives: strings, integers and float32 values computed element by element) are pinned by a
digest of their rows. Tables of learnt or reduced floats are pinned as Parquet and compared with
a tolerance, because the same code with the same seeds gives other last bits on another CPU:
oneDNN and MKL choose other kernels there (AMX on Intel Xeon, AVX-512 on AMD Zen 4), which sum in
another order. Each tolerance below says where it comes from. The differences seen between the
two CPUs of this project's machines, for the golden run of tests/test_pipeline_golden.py (AMD EPYC
Zen 4 against the Intel Xeon run in shared/data/golden-run-intel-amx, commit dbe6ca2):

    item_embeddings        0 (identical)
    calibrated_embeddings  largest ||a - b|| / ||b|| of a row 1.5e-5 (99% of entries within 4.3e-7)
    training_log losses    largest relative difference 1.4e-7
    retrieval_metrics      vector statistics: largest relative difference 1.2e-7
    eval_ranks, metrics    identical: no rank moved

Ranks, and metrics computed from ranks, move only when two scores are within float error of each
other: the two items swap, and the target's rank moves by exactly one. So a rank may differ from
the pinned one by one, for at most MAX_MOVED_RANKS users of a run and split; and a metric that is
a mean over n users of per-user values in [0, 1] may differ by (users whose rank moved) / n. Where
no rank moved, the metric must equal the pinned value to float64 rounding. A real change (another
objective, another metric, another sampler) moves far more than that, and fails.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.store import Store

# Columns that say when or where a row was written, not what it holds.
VOLATILE = {"source", "created_at", "run_id", "run_key", "seconds", "flow_run_id", "updated_at"}
EXACT = [
    "archetypes",
    "cooccurrence",
    "eval_negatives",
    "interactions",
    "item_index",
    "items",
    "rejects",
    "sequences",
    "user_index",
]
RUN = ["dataset", "backbone", "variant", "seed", "loss"]
# Float tables: the columns that name a row.
KEYS = {
    "item_embeddings": ["item_id"],
    "calibrated_embeddings": ["item_id"],
    "training_log": [*RUN, "epoch"],
    "eval_ranks": [*RUN, "split", "user_idx"],
    "metrics": [*RUN, "protocol", "split", "group", "metric"],
    "retrieval_metrics": ["space", "split", "metric"],
}
REPORT = "reports/recommenders.md"

# Float64 means and sums of up to a few thousand values: n * 2**-53 is below 1e-12; 1e-9 leaves
# room for other summation orders and for scipy's special functions (p-values) on other SIMD paths.
FLOAT64_RTOL = 1e-9
# PCA of 40 scripted vectors of 6 dimensions, float32: the accumulation error of a covariance of
# n = 40 rows is about n * 2**-24 = 2.4e-6 relative; identical on both CPUs seen.
PCA_RTOL = 1e-5
# The calibration adapter trains 160 Adam steps in float32; the last-bit differences of each step
# grow with training. Seen: 1.5e-5 of a row's norm. Ten times that; a changed objective moves
# rows by 1e-2 or more (the module's test of a one-line change: tests/test_golden_compare.py).
CALIBRATED_RTOL = 1e-4
# Training losses: float32 means over batches of float32 losses after 3 epochs of training on
# weights that differ in their last bits. Seen: 1.4e-7 relative; seventy times that.
LOSS_RTOL = 1e-5
# Effective rank and mean pairwise cosine of float32 item vectors (40 x 128): a sum of 40 * 128
# products has a relative error up to about 5e3 * 2**-24 = 3e-4 in the worst case and near
# sqrt(5e3) * 2**-24 = 4e-6 in practice; seen 1.2e-7 (their inputs differ by CALIBRATED_RTOL).
VECTOR_STAT_RTOL = 1e-4
VECTOR_STAT_ATOL = 1e-6  # a mean cosine near 0 has no relative scale
# At most this many users of one run, split and protocol may have a rank that moved by one.
MAX_MOVED_RANKS = 1


@dataclass
class Comparison:
    """What differs between a run and the pinned one, as lines a failed assert prints."""

    problems: list[str] = field(default_factory=list)
    moved_ranks: Counter = field(default_factory=Counter)  # (run..., split, protocol) -> users

    def add(self, line: str) -> None:
        if len(self.problems) < 40:
            self.problems.append(line)
        elif len(self.problems) == 40:
            self.problems.append("... (more)")


def read(store: Store, name: str) -> pa.Table:
    table = store.read_table(name) if name in store.existing_tables() else store.read_parts(name)
    return table.drop_columns([c for c in table.column_names if c in VOLATILE])


def digest(table: pa.Table) -> str:
    """A digest of a table's rows, whatever their order."""
    rows = sorted(json.dumps(row, sort_keys=True, default=str) for row in table.to_pylist())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def pin(root: Path, golden: Path) -> None:
    """Write the run under `root` as the pinned one: digests.json and a Parquet file per float
    table in `golden`."""
    store = Store(root)
    golden.mkdir(parents=True, exist_ok=True)
    digests = {name: digest(read(store, name)) for name in EXACT}
    digests[REPORT] = hashlib.sha256((root / REPORT).read_bytes()).hexdigest()
    (golden / "digests.json").write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
    for name, key in KEYS.items():
        table = read(store, name).sort_by([(k, "ascending") for k in key])
        pq.write_table(table, golden / f"{name}.parquet")


def compare(root: Path, golden: Path) -> Comparison:
    """Every table of the run under `root` against the pinned run in `golden`."""
    store, result = Store(root), Comparison()
    names = {*store.existing_tables(), *store.existing_datasets()}
    if names != {*EXACT, *KEYS}:
        result.add(f"tables: {sorted(names)}, pinned {sorted({*EXACT, *KEYS})}")
        return result
    digests = json.loads((golden / "digests.json").read_text())
    for name in EXACT:
        if digest(read(store, name)) != digests[name]:
            result.add(f"{name}: rows differ from the pinned digest (an exact table)")
    tables = {name: rows_by_key(read(store, name), key) for name, key in KEYS.items()}
    pinned = {
        name: rows_by_key(pq.read_table(golden / f"{name}.parquet"), KEYS[name]) for name in KEYS
    }
    for name in KEYS:
        if tables[name].keys() != pinned[name].keys():
            extra, missing = tables[name].keys() - pinned[name], pinned[name].keys() - tables[name]
            result.add(
                f"{name}: rows {sorted(extra)[:3]} not pinned, {sorted(missing)[:3]} missing"
            )
            return result
    compare_vectors(result, "item_embeddings", tables, pinned, PCA_RTOL)
    compare_vectors(result, "calibrated_embeddings", tables, pinned, CALIBRATED_RTOL)
    compare_ranks(result, tables["eval_ranks"], pinned["eval_ranks"])
    compare_metrics(result, tables["metrics"], pinned["metrics"])
    compare_training_log(result, tables, pinned)
    compare_retrieval(result, tables["retrieval_metrics"], pinned["retrieval_metrics"])
    report = hashlib.sha256((root / REPORT).read_bytes()).hexdigest()
    if not result.moved_ranks and report != digests[REPORT]:
        # With every rank as pinned, the report (metrics rounded to 4 digits) is the same text.
        result.add(f"{REPORT}: differs from the pinned digest, with no rank moved")
    return result


def rows_by_key(table: pa.Table, key: list[str]) -> dict[tuple, dict]:
    return {tuple(row[k] for k in key): row for row in table.to_pylist()}


def compare_vectors(result: Comparison, name: str, tables: dict, pinned: dict, rtol: float) -> None:
    """Each row's other columns exactly; its vector within `rtol` of the pinned vector's norm."""
    for key, want in pinned[name].items():
        got = tables[name][key]
        for column in want.keys() - {"vector"}:
            if got[column] != want[column]:
                result.add(f"{name} {key}: {column} {got[column]!r}, pinned {want[column]!r}")
        a, b = np.asarray(got["vector"], np.float64), np.asarray(want["vector"], np.float64)
        off = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
        if not off <= rtol:
            result.add(f"{name} {key}: vector off by {off:.2e} of its norm (tolerance {rtol:.0e})")


def compare_ranks(result: Comparison, got: dict, pinned: dict) -> None:
    """Ranks as pinned, or one off (a near-tie), for at most MAX_MOVED_RANKS users of a run,
    split and protocol; the item held out exactly."""
    for key, want in pinned.items():
        row = got[key]
        if row["item_idx"] != want["item_idx"]:
            result.add(
                f"eval_ranks {key}: target item {row['item_idx']}, pinned {want['item_idx']}"
            )
        for protocol in ("full", "sampled"):
            rank, pinned_rank = row[f"rank_{protocol}"], want[f"rank_{protocol}"]
            if abs(rank - pinned_rank) > 1:
                result.add(f"eval_ranks {key}: {protocol} rank {rank}, pinned {pinned_rank}")
            elif rank != pinned_rank:
                result.moved_ranks[(*key[: len(RUN) + 1], protocol)] += 1
    for group, moved in result.moved_ranks.items():
        if moved > MAX_MOVED_RANKS:
            result.add(
                f"eval_ranks {group}: {moved} users' ranks moved (at most {MAX_MOVED_RANKS})"
            )


def close(value: float, pinned: float, slack: float = 0.0) -> bool:
    """`value` equals `pinned` to float64 rounding, give or take `slack`."""
    return math.isclose(value, pinned, rel_tol=FLOAT64_RTOL, abs_tol=slack + 1e-12)


def compare_metrics(result: Comparison, got: dict, pinned: dict) -> None:
    """Each metric as pinned, give or take what the moved ranks of its run and split can do (all
    users whose rank moved in the run and split: a bound for any group of them)."""
    for key, want in pinned.items():
        row = got[key]
        protocol, split = want["protocol"], want["split"]
        moved = result.moved_ranks[(*key[: len(RUN)], split, protocol)]
        if row["users"] != want["users"]:
            result.add(f"metrics {key}: {row['users']} users, pinned {want['users']}")
        elif not close(row["value"], want["value"], moved / want["users"]):
            result.add(f"metrics {key}: {row['value']!r}, pinned {want['value']!r}")


def compare_training_log(result: Comparison, tables: dict, pinned: dict) -> None:
    """Losses within LOSS_RTOL; each epoch's validation metrics as pinned, give or take one
    moved rank among the validation users (the per-epoch ranks are not kept)."""
    valid_users = {
        key[: len(RUN)]: row["users"]
        for key, row in pinned["metrics"].items()
        if row["split"] == "valid" and row["group"] == "all" and row["protocol"] == "full"
    }
    for key, want in pinned["training_log"].items():
        row = tables["training_log"][key]
        for column in ("train_loss", "rec_loss", "cal_loss"):
            if not math.isclose(row[column], want[column], rel_tol=LOSS_RTOL, abs_tol=1e-12):
                result.add(f"training_log {key}: {column} {row[column]!r}, pinned {want[column]!r}")
        for column in ("valid_hr@10", "valid_ndcg@10"):
            if not close(row[column], want[column], 1 / valid_users[key[: len(RUN)]]):
                result.add(f"training_log {key}: {column} {row[column]!r}, pinned {want[column]!r}")


def compare_retrieval(result: Comparison, got: dict, pinned: dict) -> None:
    """Vector statistics within VECTOR_STAT_RTOL; ranking metrics as pinned, give or take one
    moved rank (the per-user ranks are not kept); a p-value, a function of two spaces' per-user
    values, to float64 rounding wherever both of those rows match without a moved rank."""
    exact = {}
    for key, want in pinned.items():
        row = got[key]
        if row["users"] != want["users"]:
            result.add(f"retrieval_metrics {key}: {row['users']} users, pinned {want['users']}")
            continue
        if want["split"] == "vectors":
            ok = math.isclose(
                row["value"], want["value"], rel_tol=VECTOR_STAT_RTOL, abs_tol=VECTOR_STAT_ATOL
            )
        else:
            exact[key] = close(row["value"], want["value"])
            ok = close(row["value"], want["value"], 1 / want["users"])
        if not ok:
            result.add(f"retrieval_metrics {key}: {row['value']!r}, pinned {want['value']!r}")
    for key, exact_here in exact.items():
        for other in ("raw", "cooccurrence", "popularity"):
            column, want = f"p_vs_{other}", pinned[key][f"p_vs_{other}"]
            if want is None or not exact_here or not exact.get((other, *key[1:]), False):
                continue
            if not close(got[key][column], want):
                result.add(
                    f"retrieval_metrics {key}: {column} {got[key][column]!r}, pinned {want!r}"
                )
