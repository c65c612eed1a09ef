"""Users' item sequences in memory, as the recommenders consume them.

One CSR layout holds every user's items in chronological order (training items, then the
validation item, then the test item); windows and histories are cut from it with array
arithmetic, never a Python loop over users. For ml-100k that is 99,287 int32s; a catalog with
10⁸ interactions would be 400 MB, which is when this should become a memory map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genair_core.data.preprocess import SPLITS, TEST, TRAIN, VALID

Split = Literal["valid", "test"]


@dataclass(frozen=True)
class UserSequences:
    n_items: int
    user_idx: np.ndarray  # (U,) the users' indices in user_index
    ptr: np.ndarray  # (U + 1,) int64: user u's items are items[ptr[u]:ptr[u + 1]]
    items: np.ndarray  # int64 item indices, by user then position
    n_train: np.ndarray  # (U,) training items per user; then valid and test if held out
    held_out: np.ndarray  # (U,) bool: the user has a validation and a test item

    @classmethod
    def from_table(cls, sequences: pa.Table, n_items: int) -> UserSequences:
        """From a SEQUENCES table (any row order)."""
        user = sequences["user_idx"].to_numpy()
        position = sequences["position"].to_numpy()
        item = sequences["item_idx"].to_numpy().astype(np.int64)
        split = _split_codes(sequences)
        order = np.lexsort((position, user))
        user, item, split = user[order], item[order], split[order]
        users, starts, counts = np.unique(user, return_index=True, return_counts=True)
        ptr = np.append(starts, user.size).astype(np.int64)
        n_train = np.add.reduceat(split == SPLITS.index(TRAIN), starts) if user.size else counts
        held_out = counts - n_train == 2
        if item.size and (item.min() < 1 or item.max() > n_items):
            raise ValueError(f"sequences hold item indices outside 1..{n_items}")
        return cls(n_items, users.astype(np.int64), ptr, item, n_train.astype(np.int64), held_out)

    @property
    def n_users(self) -> int:
        return self.user_idx.size

    def train_window(self, rows: np.ndarray, length: int) -> np.ndarray:
        """(B, length) the last `length` training items of the given user rows, left-padded."""
        end = self.ptr[rows] + self.n_train[rows]
        return self._window(self.ptr[rows], end, length)

    def history_lengths(self, rows: np.ndarray, split: Split) -> np.ndarray:
        """How many items each user had before `split`'s target."""
        return self.n_train[rows] + (1 if split == TEST else 0)

    def history(self, rows: np.ndarray, split: Split, length: int) -> np.ndarray:
        """(B, length) what the model sees before predicting `split`'s item, left-padded: the
        training items for validation, training + validation item for test."""
        end = self.ptr[rows] + self.history_lengths(rows, split)
        return self._window(self.ptr[rows], end, length)

    def targets(self, rows: np.ndarray, split: Split) -> np.ndarray:
        if not self.held_out[rows].all():
            raise ValueError("some of these users have no held-out items")
        return self.items[self.ptr[rows] + self.n_train[rows] + (1 if split == TEST else 0)]

    def history_csr(self, rows: np.ndarray, split: Split) -> tuple[np.ndarray, np.ndarray]:
        """Every item each user had before `split`'s target, as (ptr (B + 1,), items): the items a
        full ranking masks."""
        start = self.ptr[rows]
        end = start + self.n_train[rows] + (1 if split == TEST else 0)
        return _gather_ranges(self.items, start, end)

    def all_items_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Every item each user ever had (training, validation and test)."""
        return self.ptr.copy(), self.items.copy()

    def train_counts(self) -> np.ndarray:
        """(n_items + 1,) training interactions per item."""
        in_train = np.arange(self.items.size) < np.repeat(
            self.ptr[:-1] + self.n_train, np.diff(self.ptr)
        )
        return np.bincount(self.items[in_train], minlength=self.n_items + 1)

    def _window(self, start: np.ndarray, end: np.ndarray, length: int) -> np.ndarray:
        index = end[:, None] - length + np.arange(length)[None, :]
        keep = index >= start[:, None]
        return np.where(keep, self.items[np.clip(index, 0, None)], 0)


def _split_codes(sequences: pa.Table) -> np.ndarray:
    codes = {name: code for code, name in enumerate(SPLITS)}
    unique = sequences["split"].unique().to_pylist()
    unknown = set(unique) - set(codes)
    if unknown:
        raise ValueError(
            f"sequences hold unknown split values {sorted(unknown)}; expected {SPLITS}"
        )
    return pc.index_in(sequences["split"], value_set=pa.array(SPLITS)).to_numpy()


def _gather_ranges(
    values: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    lengths = end - start
    ptr = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    index = np.repeat(start - ptr[:-1], lengths) + np.arange(ptr[-1])
    return ptr, values[index]


__all__ = ["TEST", "VALID", "Split", "UserSequences"]
