"""FAISS index: exact IndexFlatIP against HNSW on the same vectors and queries, in one run.

    .venv/bin/python bench/bench_index.py --n 200000
    .venv/bin/python bench/bench_index.py --n 1000000
    .venv/bin/python bench/bench_index.py --crossover      # exact search's latency against N

Vectors: a Gaussian mixture of `--clusters` centres in `--dim` dimensions (128: the calibrated
space), each point = centre + `--spread` x standard noise, L2-normalised as genair indexes them.
Item embeddings cluster by topic; uniform noise in 128-d has no neighbourhoods at all and is an
unrealistically hard case for any graph index, so it would understate HNSW's recall.
Queries are `--queries` fresh points of the same mixture (not in the index).

Both indexes are built with genair_core.item_space.index.new_index (what the pipeline builds).
Measured: build seconds; single-query throughput (one query per call, as `genair similar` asks;
exact on `--single` queries, since each scans all N); batched throughput (all queries in one call);
HNSW's recall@10 against the exact top 10 at each `--ef-search`; memory as the serialized index
size and the RSS growth of the build. FAISS threads: `--threads` (default: every core) for
builds and batches; single queries run on one thread in both indexes.

`--crossover` times exact single queries at several catalog sizes for 128-d (calibrated) and
768-d (raw) vectors: where it exceeds a latency budget is where `index.exact_max_items` goes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from machine_info import cpu_description

from genair_core.config import IndexConfig
from genair_core.item_space.index import new_index, normalized

K = 10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="vectors in the index")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise scale around a centre")
    parser.add_argument(
        "--intrinsic",
        type=int,
        default=0,
        help="if > 0: draw the mixture in this many dimensions, map it linearly to --dim and add "
        "noise of 0.05 (embeddings of low effective rank); 0: the mixture in --dim itself",
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="exact single queries timed")
    parser.add_argument("--m", type=int, default=IndexConfig().m)
    parser.add_argument("--ef-construction", type=int, default=IndexConfig().ef_construction)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crossover", action="store_true", help="exact latency against N only")
    return parser.parse_args(argv)


def mixture(
    n: int,
    centres: np.ndarray,
    spread: float,
    rng: np.random.Generator,
    lift: np.ndarray | None = None,
) -> np.ndarray:
    """(n, D) normalised points around randomly chosen centres, made a block at a time; with
    `lift` (d_latent, D), drawn in the latent space, mapped up and given a little noise."""
    dim = centres.shape[1] if lift is None else lift.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        pick = rng.integers(0, len(centres), stop - start)
        noise = rng.standard_normal((stop - start, centres.shape[1]), dtype=np.float32)
        points = centres[pick] + spread * noise
        if lift is not None:
            points = points @ lift
            points += 0.05 * rng.standard_normal(points.shape, dtype=np.float32)
        out[start:stop] = points
    return normalized(out, "synthetic vectors")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def index_mib(index: faiss.Index) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "index.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path) / 2**20


def build(kind: str, x: np.ndarray, cfg: IndexConfig) -> tuple[faiss.Index, float, float]:
    before = rss_mib()
    started = time.perf_counter()
    index = new_index(x.shape[1], kind, cfg)
    index.add_with_ids(x, np.arange(1, len(x) + 1, dtype=np.int64))
    return index, time.perf_counter() - started, rss_mib() - before


def single_qps(index: faiss.Index, queries: np.ndarray, threads: int) -> float:
    """One query per call on one FAISS thread: a single query gains nothing from more (FAISS
    splits work by query), and OpenMP's barrier per call costs milliseconds on a busy machine."""
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    for q in queries:
        index.search(q[None, :], K)
    seconds = time.perf_counter() - started
    faiss.omp_set_num_threads(threads)
    return len(queries) / seconds


def batched(index: faiss.Index, queries: np.ndarray) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    _, ids = index.search(queries, K)
    return ids, len(queries) / (time.perf_counter() - started)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def compare(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    latent = args.intrinsic or args.dim
    centres = rng.standard_normal((args.clusters, latent), dtype=np.float32)
    lift = None
    if args.intrinsic:
        lift = rng.standard_normal((latent, args.dim), dtype=np.float32) / np.sqrt(latent)
    started = time.perf_counter()
    x = mixture(args.n, centres, args.spread, rng, lift)
    queries = mixture(args.queries, centres, args.spread, rng, lift)
    print(f"data: {args.n:,} x {args.dim} in {time.perf_counter() - started:.1f} s", flush=True)
    cfg = IndexConfig(m=args.m, ef_construction=args.ef_construction)

    flat, flat_build, flat_rss = build("flat", x, cfg)
    truth, flat_batched = batched(flat, queries)
    flat_single = single_qps(flat, queries[: args.single], args.threads)
    rows = [
        {
            "index": "IndexFlatIP (exact)",
            "ef_search": None,
            "recall@10": 1.0,
            "build_s": flat_build,
            "single_qps": flat_single,
            "batched_qps": flat_batched,
            "index_mib": index_mib(flat),
            "rss_mib": flat_rss,
        }
    ]
    print(json.dumps(rows[-1]), flush=True)
    del flat

    hnsw, hnsw_build, hnsw_rss = build("hnsw", x, cfg)
    print(f"hnsw build: {hnsw_build:.1f} s", flush=True)
    size = index_mib(hnsw)
    inner = faiss.downcast_index(hnsw.index)
    for ef in args.ef_search:
        inner.hnsw.efSearch = ef
        found, qps_batched = batched(hnsw, queries)
        rows.append(
            {
                "index": f"IndexHNSWFlat (m={args.m}, efC={args.ef_construction})",
                "ef_search": ef,
                "recall@10": recall(found, truth),
                "build_s": hnsw_build,
                "single_qps": single_qps(hnsw, queries, args.threads),
                "batched_qps": qps_batched,
                "index_mib": size,
                "rss_mib": hnsw_rss,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"n": args.n, "dim": args.dim, "rows": rows}


def crossover(args: argparse.Namespace) -> list[dict]:
    """Exact single-query latency (ms, median of 200 queries) for a grid of N and D."""
    rng = np.random.default_rng(args.seed)
    out = []
    for dim in (128, 768):
        centres = rng.standard_normal((args.clusters, dim), dtype=np.float32)
        for n in (5_000, 10_000, 20_000, 50_000, 100_000, 200_000):
            x = mixture(n, centres, args.spread, rng)
            index = new_index(dim, "flat", IndexConfig())
            index.add_with_ids(x, np.arange(1, n + 1, dtype=np.int64))
            faiss.omp_set_num_threads(1)
            times = []
            for q in mixture(200, centres, args.spread, rng):
                started = time.perf_counter()
                index.search(q[None, :], K)
                times.append(time.perf_counter() - started)
            out.append({"dim": dim, "n": n, "exact_ms": 1e3 * float(np.median(times))})
            print(json.dumps(out[-1]), flush=True)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    print(
        f"faiss {faiss.__version__}, {args.threads} threads, {cpu_description()}, "
        f"load {os.getloadavg()}",
        flush=True,
    )
    if args.crossover:
        results = crossover(args)
        print("\n| dim | N | exact single query, ms |\n|---:|---:|---:|")
        for r in results:
            print(f"| {r['dim']} | {r['n']:,} | {r['exact_ms']:.2f} |")
    else:
        result = compare(args)
        exact_single = result["rows"][0]["single_qps"]
        print(
            f"\n{args.n:,} vectors, {args.dim}-d (intrinsic {args.intrinsic or args.dim}), "
            f"{args.clusters} clusters, spread {args.spread}"
        )
        print(
            "| index | efSearch | recall@10 | build s | single q/s | × exact | batched q/s "
            "| index MiB | RSS +MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        for r in result["rows"]:
            print(
                f"| {r['index']} | {r['ef_search'] or '–'} | {r['recall@10']:.4f} "
                f"| {r['build_s']:.1f} | {r['single_qps']:,.0f} "
                f"| {r['single_qps'] / exact_single:.0f}× | {r['batched_qps']:,.0f} "
                f"| {r['index_mib']:.0f} | {r['rss_mib']:.0f} |"
            )
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
