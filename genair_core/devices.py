"""Torch's device, and its process-wide state: which device a setting names; the global random
generator and the intra-op thread count, each set for a block and restored after it. Nothing else
in genair sets either."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

# Runs training side by side in one process build their models from the global generator.
_GLOBAL_RNG = threading.Lock()


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """The torch device of a device setting ("auto": CUDA when available); `setting` names the
    key for the error when CUDA is asked for and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{setting} is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's global CPU generator seeded with `seed` for the block (what initial weights are
    drawn from), one block at a time across threads, its state restored after."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op threads set to `threads` (0: unchanged) for the block, restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def cpu_shared_by(workers: int) -> Iterator[int]:
    """The CPU cores split between `workers` runs training side by side, for the block; yields
    the threads each gets."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    with torch_threads(threads):
        yield threads
