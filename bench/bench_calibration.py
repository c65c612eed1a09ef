"""Calibration loss: the CSR lookup + matmul path against the per-pair Python loop, same run.

    .venv/bin/python bench/bench_calibration.py

For each batch size n, n distinct items are drawn with a fixed seed and given random (n, --dim)
adapter outputs. The fast path (`pair_scores` + `calibration_loss`, forward and backward) runs
`--repeats` times after one warm-up and reports its best; the reference
(`calibration_loss_reference`, forward only, w filled pair by pair from a dict) runs
`--ref-repeats` times. Both run on the CPU with torch's default thread count, and the script
fails if their losses differ.

Batches up to ml-100k's catalog use its real co-occurrence table (data/tables/cooccurrence.parquet,
written by `make run`); larger batches, or all of them if that file is missing, use a synthetic
table of --synthetic-items items with --synthetic-pairs uniformly random pairs (fixed seed).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from bench_machine import best_of
from machine_info import cpu_description

from genair_core.losses import CooccurrenceLookup, calibration_loss, calibration_loss_reference

TABLE = Path("data/tables/cooccurrence.parquet")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="batch sizes n")
    parser.add_argument("--dim", type=int, default=64, help="adapter output width h")
    parser.add_argument("--tau", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=10, help="fast path: best of this many")
    parser.add_argument("--ref-repeats", type=int, default=1, help="reference: best of this many")
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--synthetic-items", type=int, default=20_000)
    parser.add_argument("--synthetic-pairs", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


@dataclass
class Catalog:
    name: str
    n_items: int
    i: np.ndarray
    j: np.ndarray
    s: np.ndarray

    def lookup(self) -> CooccurrenceLookup:
        return CooccurrenceLookup.from_pairs(self.i, self.j, self.s, self.n_items)

    def pairs(self) -> dict[tuple[int, int], float]:
        keys = zip(self.i.tolist(), self.j.tolist(), strict=True)
        return dict(zip(keys, self.s.tolist(), strict=True))


def real_catalog(path: Path) -> Catalog:
    table = pq.read_table(path, columns=["i", "j", "s"])
    i, j, s = (table.column(c).to_numpy() for c in ("i", "j", "s"))
    return Catalog(f"ml-100k ({path})", int(max(i.max(), j.max())), i, j, s)


def synthetic_catalog(n_items: int, n_pairs: int, seed: int) -> Catalog:
    """Distinct uniformly random pairs; counts ~ geometric(0.3), s = log1p(count)/log1p(max)."""
    rng = np.random.default_rng(seed)
    draw = n_pairs + n_pairs // 10 + 1000
    a = rng.integers(1, n_items + 1, draw, dtype=np.int64)
    b = rng.integers(1, n_items + 1, draw, dtype=np.int64)
    a, b = np.minimum(a, b), np.maximum(a, b)
    key = np.unique((a * (n_items + 1) + b)[a < b])
    if key.size < n_pairs:
        raise SystemExit(f"could draw only {key.size} distinct pairs of {n_items} items")
    key = np.sort(rng.choice(key, n_pairs, replace=False))
    count = rng.geometric(0.3, n_pairs)
    s = (np.log1p(count) / np.log1p(count.max())).astype(np.float32)
    name = f"synthetic, {n_items:,} items, seed {seed}"
    return Catalog(name, n_items, key // (n_items + 1), key % (n_items + 1), s)


def fast_step(
    lookup: CooccurrenceLookup, items: torch.Tensor, vectors: torch.Tensor, tau: float
) -> torch.Tensor:
    """One training step's share of the fast path: scores, loss, backward into vectors.grad."""
    vectors.grad = None
    loss = calibration_loss(vectors, lookup.pair_scores(items), tau)
    loss.backward()
    return loss.detach()


def load() -> float:
    return os.getloadavg()[0]


def main(argv=None) -> None:
    args = parse_args(argv)
    real = real_catalog(args.table) if args.table.exists() else None
    if real is None:
        print(f"{args.table} is missing: every batch uses the synthetic table")
    synthetic = None

    print(
        f"machine: {cpu_description()}; python {platform.python_version()}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, CPU; h = {args.dim}, "
        f"τ = {args.tau}; fast path best of {args.repeats} (after a warm-up), reference best of "
        f"{args.ref_repeats}\n"
    )
    rows = []
    for n in args.sizes:
        if real is not None and n <= real.n_items:
            catalog = real
        else:
            if synthetic is None:
                synthetic = synthetic_catalog(args.synthetic_items, args.synthetic_pairs, args.seed)
            catalog = synthetic
        if n > catalog.n_items:
            raise SystemExit(f"n = {n} is larger than the {catalog.n_items}-item catalog")
        start = time.perf_counter()
        lookup = catalog.lookup()
        t_build = time.perf_counter() - start
        pairs = catalog.pairs()

        gen = torch.Generator().manual_seed(args.seed + n)
        items = torch.randperm(catalog.n_items, generator=gen)[:n] + 1
        vectors = torch.randn(n, args.dim, generator=gen, requires_grad=True)

        load_start = load()
        fast_step(lookup, items, vectors, args.tau)  # warm-up
        t_scores, scores = best_of(args.repeats, lookup.pair_scores, items)
        t_fast, fast_loss = best_of(args.repeats, fast_step, lookup, items, vectors, args.tau)
        t_ref, ref_loss = best_of(
            args.ref_repeats, calibration_loss_reference, vectors.detach(), items, pairs, args.tau
        )
        load_end = load()

        if not torch.allclose(fast_loss, ref_loss, rtol=1e-4, atol=1e-6):
            raise SystemExit(f"MISMATCH at n = {n}: fast {fast_loss.item()} vs {ref_loss.item()}")
        if not torch.isfinite(vectors.grad).all():
            raise SystemExit(f"non-finite gradient at n = {n}")
        row_nnz = int((lookup.indptr[items + 1] - lookup.indptr[items]).sum())
        seen = int((scores > 0).sum()) // 2
        print(
            f"n = {n}: {catalog.name}, {lookup.n_pairs:,} pairs (lookup built in "
            f"{t_build:.2f} s); the batch's CSR rows hold {row_nnz:,} entries, {seen:,} of its "
            f"pairs have s > 0; loss fast {fast_loss.item():.7f}, reference "
            f"{ref_loss.item():.7f}: agree (rtol 1e-4)"
        )
        rows.append(
            f"| {n:,} | {catalog.name.split(' (')[0]} | {t_ref:.3f} | {t_fast:.4f} | "
            f"{t_scores:.4f} | {t_ref / t_fast:,.0f}× | {load_start:.2f} → {load_end:.2f} |"
        )

    print(
        "\n| n | catalog | reference, fwd (s) | fast, fwd + bwd (s) | of which pair_scores (s) "
        "| speed-up | 1-min load start → end |"
    )
    print("|---:|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
