"""Co-occurrence: the scipy.sparse path against the nested-loop reference, same data, same run.

    .venv/bin/python bench/bench_cooccurrence.py --users 2000 --items 1500 --per-user 100

Synthetic interactions with Zipf-like item popularity (default density ~ MovieLens-100K's) go
through split_sequences (k-core + leave-one-out), then both implementations run `--repeats` times
each; the best time of each is reported, and the script fails if the two tables differ.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import pyarrow as pa
from bench_machine import best_of
from machine_info import cpu_description

from genair_core.data.cooccurrence import cooccurrence, cooccurrence_reference
from genair_core.data.preprocess import split_sequences
from genair_core.tables import INTERACTIONS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--per-user", type=int, default=100, help="mean interactions per user")
    parser.add_argument("--zipf", type=float, default=0.8, help="popularity exponent: p ∝ rank^-a")
    parser.add_argument("--k", type=int, default=5, help="k-core before the split")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def synthetic_interactions(
    n_users: int, n_items: int, per_user: int, zipf: float, seed: int
) -> pa.Table:
    """Users with between per_user/5 and 9·per_user/5 interactions (mean per_user), items drawn
    with replacement from p ∝ rank^-zipf, so popular items repeat within a user as in real logs."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(per_user // 5, 9 * per_user // 5 + 1, n_users)
    users = np.repeat(np.arange(n_users), lengths)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    items = rng.permutation(n_items)[
        rng.choice(n_items, users.size, p=popularity / popularity.sum())
    ]
    n = users.size
    return pa.Table.from_arrays(
        [
            pa.array(np.char.add("u", users.astype(str))),
            pa.array(np.char.add("i", items.astype(str))),
            pa.array(rng.integers(8 * 10**8, 9 * 10**8, n), pa.timestamp("s", tz="UTC")),
            pa.array(rng.integers(1, 6, n).astype(np.float32)),
            pa.array(["synthetic"] * n, pa.string()),
            pa.array(np.arange(1, n + 1)),
        ],
        schema=INTERACTIONS,
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    table = synthetic_interactions(args.users, args.items, args.per_user, args.zipf, args.seed)
    split = split_sequences(table, args.k)
    n_items = split.item_index.num_rows
    summary = split.summary

    t_ref, ref = best_of(args.repeats, cooccurrence_reference, split.sequences, n_items)
    t_fast, fast = best_of(args.repeats, cooccurrence, split.sequences, n_items)

    if not fast.select(["i", "j", "count"]).equals(ref.select(["i", "j", "count"])):
        raise SystemExit("MISMATCH: the fast path and the reference disagree on (i, j, count)")
    s_diff = float(np.abs(fast["s"].to_numpy() - ref["s"].to_numpy()).max(initial=0.0))
    if s_diff > 1e-6:
        raise SystemExit(f"MISMATCH: s differs by up to {s_diff:g}")

    print(
        f"data: {summary['users_after']} users x {n_items} items, "
        f"{summary['interactions_after']:,} interactions after the {args.k}-core "
        f"({summary['train_rows']:,} train rows), {fast.num_rows:,} item pairs, "
        f"max count {int(fast['count'].to_numpy().max(initial=0))}; "
        f"agree: yes (max |Δs| = {s_diff:g})"
    )
    print(
        f"machine: {cpu_description()}; python {platform.python_version()}, "
        f"best of {args.repeats}\n"
    )
    print("| implementation | time (s) | speed-up |")
    print("|---|---:|---:|")
    print(f"| reference (dict, nested loop) | {t_ref:.3f} | 1.0× |")
    print(f"| scipy.sparse Xᵀ X | {t_fast:.3f} | {t_ref / t_fast:.0f}× |")


if __name__ == "__main__":
    main()
