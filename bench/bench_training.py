"""Training seconds per epoch on MovieLens-100K, for each backbone: genair's batches against the
reference's, same data, same run.

    .venv/bin/python bench/bench_training.py --epochs 3

fast: users grouped by history length (a batch is padded to its longest window) and dropout
masks drawn with torch.rand. reference: random batches padded to max_len (200) and nn.Dropout
(bernoulli_), as the paper's scripts train. Both train the `id` variant with the paper's settings
(hidden 128, 2 layers, batch 128, BCE with one negative) from the same initial weights; the
median epoch time of each is reported. Needs the tables of a run (`make run`, or
`genair run --until cooccurrence`) under --root.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import tempfile
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from machine_info import cpu_description

from genair_core.config import ModelConfig, PoolingConfig, TrainingConfig
from genair_core.data.sequences import UserSequences
from genair_core.recommenders import training
from genair_core.recommenders.models import build_model
from genair_core.recommenders.models.transformer import Dropout
from genair_core.recommenders.training import FitSettings, fit
from storage.checkpoints import RunCheckpoints
from storage.recommenders import read_run_tables
from storage.store import Store


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data"), help="the storage root")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per configuration")
    parser.add_argument("--backbones", nargs="+", default=["sasrec", "bert4rec", "gru4rec"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser.parse_args(argv)


def bernoulli_dropout(self, x):
    return F.dropout(x, self.p, self.training)


def reference_batches(window: int):
    """The reference's batches in place of training.epoch_batches: users in random order, every
    window padded to `window` (max_len + 1)."""

    def batches(lengths, batch_size, generator):
        order = torch.randperm(lengths.size, generator=generator).numpy()
        return [(order[i : i + batch_size], window) for i in range(0, order.size, batch_size)]

    return batches


def epoch_seconds(backbone, data, epochs, reference: bool) -> list[float]:
    torch.manual_seed(0)
    model_config = ModelConfig()
    model = build_model(
        backbone, "id", model_config, data.n_items, input_dims=PoolingConfig().input_dims
    )
    paper = TrainingConfig(loss="bce", batch_size=128, max_epochs=epochs, patience=epochs)
    settings = FitSettings(paper, seed=0)
    with contextlib.ExitStack() as patches, tempfile.TemporaryDirectory() as folder:
        if reference:
            patches.enter_context(mock.patch.object(Dropout, "forward", bernoulli_dropout))
            batches = reference_batches(model_config.max_len + 1)
            patches.enter_context(mock.patch.object(training, "epoch_batches", batches))
        state = fit(model, data, settings, RunCheckpoints(Path(folder)))
    return [epoch["seconds"] for epoch in state.history]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tables = read_run_tables(Store(args.root), ["sequences"])
    data = UserSequences.from_table(tables.sequences, tables.n_items)
    print(
        f"data: {data.n_users} users, {data.n_items} items, {int(data.n_train.sum()):,} training "
        f"interactions; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"python {platform.python_version()}; median of {args.epochs} epochs (incl. validation); "
        f"machine: {cpu_description()}"
    )
    print("| backbone | reference (s/epoch) | genair (s/epoch) | speed-up |")
    print("|---|---:|---:|---:|")
    for backbone in args.backbones:
        reference = statistics.median(epoch_seconds(backbone, data, args.epochs, reference=True))
        fast = statistics.median(epoch_seconds(backbone, data, args.epochs, reference=False))
        print(f"| {backbone} | {reference:.2f} | {fast:.2f} | {reference / fast:.1f}× |")


if __name__ == "__main__":
    main()
