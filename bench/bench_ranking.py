"""Seconds to rank every validation user on MovieLens-100K, for each backbone: genair's batches
of similar history length against every user padded to max_len (what the reference does and what
genair did before), same model, same run; the ranks are checked equal.

    .venv/bin/python bench/bench_ranking.py --root data --threads 1

Validation runs once an epoch, so this is part of every epoch's time (bench_training.py times
whole epochs). The two sides alternate `--repeats` times and the median of each is reported.
Needs the tables of a run (`make run`, or `genair run --until cooccurrence`) under --root.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from machine_info import cpu_description

from genair_core.config import ModelConfig, PoolingConfig
from genair_core.data.sequences import UserSequences
from genair_core.metrics import full_ranks
from genair_core.recommenders.models import build_model
from genair_core.recommenders.training import EVAL_BATCH_SIZE, rank_users
from storage.recommenders import read_run_tables
from storage.store import Store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data"), help="the storage root")
    parser.add_argument("--backbones", nargs="+", default=["sasrec", "bert4rec", "gru4rec"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    return parser.parse_args(argv)


@torch.no_grad()
def padded_ranks(model, data: UserSequences, rows: np.ndarray) -> np.ndarray:
    """Every user's window padded to max_len, in row order."""
    model.eval()
    items = model.encoder.all_items()
    ranks = []
    for start in range(0, rows.size, EVAL_BATCH_SIZE):
        batch = rows[start : start + EVAL_BATCH_SIZE]
        history = torch.from_numpy(data.history(batch, "valid", model.config.max_len))
        ptr, masked = data.history_csr(batch, "valid")
        scores = model.user_vectors(history) @ items.T
        targets = torch.from_numpy(data.targets(batch, "valid"))
        ranks.append(full_ranks(scores, targets, torch.from_numpy(ptr), torch.from_numpy(masked)))
    return torch.cat(ranks).numpy()


def timed(fn, *args) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tables = read_run_tables(Store(args.root), ["sequences"])
    data = UserSequences.from_table(tables.sequences, tables.n_items)
    rows = np.flatnonzero(data.held_out)
    print(
        f"data: {rows.size} validation users, {data.n_items} items, max_len "
        f"{ModelConfig().max_len}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"python {platform.python_version()}; median of {args.repeats}, alternating; "
        f"machine: {cpu_description()}"
    )
    print("| backbone | padded to max_len (s) | by history length (s) | speed-up | same ranks |")
    print("|---|---:|---:|---:|---|")
    for backbone in args.backbones:
        torch.manual_seed(0)
        model = build_model(
            backbone, "id", ModelConfig(), data.n_items, input_dims=PoolingConfig().input_dims
        )
        padded, grouped, same = [], [], True
        for _ in range(args.repeats):
            seconds, reference = timed(padded_ranks, model, data, rows)
            padded.append(seconds)
            seconds, ours = timed(rank_users, model, data, rows, "valid", EVAL_BATCH_SIZE, "cpu")
            grouped.append(seconds)
            same &= bool(np.array_equal(reference, ours))
        slow, fast = statistics.median(padded), statistics.median(grouped)
        print(f"| {backbone} | {slow:.2f} | {fast:.2f} | {slow / fast:.1f}× | {same} |")


if __name__ == "__main__":
    main()
