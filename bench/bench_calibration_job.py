"""The calibration job's seconds per epoch on a stored co-occurrence table (ml-100k by default).

    .venv/bin/python bench/bench_calibration_job.py --tables data/tables --threads 1 2

Reads `item_index` and `cooccurrence` from `--tables` (read only) and, when `item_embeddings` is
there, the real item vectors; otherwise random 768-d vectors (the cost of an epoch does not
depend on their values). Trains `--epochs` epochs with the default [calibration] settings once
per thread count and prints each epoch's seconds.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from machine_info import cpu_description

from genair_core.config import CalibrationConfig
from genair_core.devices import resolve_device
from genair_core.item_space.calibration import calibration_inputs, train_adapter
from genair_core.tables import to_fixed_list


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, default=Path("data/tables"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    index = pq.read_table(args.tables / "item_index.parquet")
    pairs = pq.read_table(args.tables / "cooccurrence.parquet")
    stored = args.tables / "item_embeddings.parquet"
    if stored.is_file():
        embeddings, source = pq.read_table(stored), "item_embeddings"
    else:
        ids = index.column("item_id").to_pylist()
        vectors = np.random.default_rng(0).normal(size=(len(ids), 768)).astype(np.float32)
        embeddings = pa.table(
            {"item_id": ids, "basis_id": ["random"] * len(ids), "vector": to_fixed_list(vectors)}
        )
        source = "random 768-d"
    data = calibration_inputs(embeddings, index, pairs)
    cfg = CalibrationConfig(epochs=args.epochs, device=args.device)
    device = resolve_device(cfg.device, "calibration.device")
    print(
        f"{len(data.item_ids)} items ({source}), {len(data.a)} pairs, device {device}, torch "
        f"{torch.__version__}, CPU {cpu_description()}, load "
        f"{os.getloadavg()[0]:.1f}; defaults: {cfg.pairs_per_epoch} pairs an epoch, batch "
        f"{cfg.batch_size}"
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        _, log = train_adapter(data, cfg, device=device)
        seconds = [round(row["seconds"], 2) for row in log]
        print(f"threads {threads}: seconds per epoch {seconds}, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(parse_args())
