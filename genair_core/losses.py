"""The training losses: the recommendation loss of a sequential recommender (full-softmax cross-
entropy or BCE with sampled negatives), and the behavioural calibration loss, which pulls the item
space towards what users actually do together.

The recommendation loss scores the model's hidden state at each target position h against item
vectors: `softmax_cross_entropy` against every item (the padding row 0 never a candidate), as
SASRec is trained in RecBole; `sampled_bce` against the positive and one sampled negative, as
SASRec's authors train it.

The calibration loss:

Over the n distinct positive target items of a batch, with ẽ the L2-normalised adapter outputs
and s the co-occurrence weight of `genair_core.data.cooccurrence` (0 for pairs never seen together):

    w_ij = exp(−τ · s_ij),    L_cal = −1 / (n (n − 1)) · Σ_{i≠j} w_ij ‖ẽ_i − ẽ_j‖²

Minimising L_cal spreads the batch items apart on the unit sphere, least for the pairs users
consume together (large s, small w), so behaviourally close items stay close.

The pair weights come from a symmetric CSR copy of the co-occurrence table on the loss's device
(`CooccurrenceLookup`): a batch reads only the rows of its own items, so neither time nor memory
depend on an n_items × n_items matrix, which a catalog of millions of items could not hold. Up to
DENSE_MAX_ITEMS items (64 MiB) the lookup keeps that matrix instead: a batch of MovieLens-100K
holds most of its items, so reading their rows one by one cost a tenth of an epoch
(docs/benchmarks.md, "Figures measured in passing"). The
loss itself is one (n, h) × (h, n) matmul through ‖a − b‖² = 2 − 2 a·b on unit vectors.
`calibration_loss_reference` keeps the reference code's per-pair Python loop for tests and the
benchmark.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DENSE_MAX_ITEMS = 4096  # (n_items + 1)² float32 = 64 MiB


class CooccurrenceLookup:
    """Co-occurrence weights s(i, j) as CSR tensors, both (i, j) and (j, i) stored.

    Row r holds the items seen together with item r, columns sorted. `indptr` is int64 of length
    n_items + 2 (row 0 is the padding index and always empty), `indices` int32 and `values`
    float32, each of length 2 × (number of pairs): 16 bytes per pair on the device.
    """

    def __init__(
        self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, n_items: int
    ) -> None:
        self._dense: torch.Tensor | None = None  # built on first use, small catalogs only
        self.indptr = indptr
        self.indices = indices
        self.values = values
        self.n_items = n_items

    @classmethod
    def from_pairs(
        cls, i: np.ndarray, j: np.ndarray, s: np.ndarray, n_items: int
    ) -> CooccurrenceLookup:
        """The lookup of a co-occurrence table's columns (pairs i < j, s in (0, 1]), on the CPU."""
        i, j, s = np.asarray(i), np.asarray(j), np.asarray(s)
        _check_pairs(i, j, s, n_items)
        i, j = i.astype(np.int64), j.astype(np.int64)
        rows = np.concatenate([i, j])
        cols = np.concatenate([j, i])
        order = np.argsort(rows * (n_items + 1) + cols, kind="stable")
        indptr = np.zeros(n_items + 2, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_items + 1), out=indptr[1:])
        return cls(
            torch.from_numpy(indptr),
            torch.from_numpy(cols[order].astype(np.int32)),
            torch.from_numpy(np.concatenate([s, s])[order].astype(np.float32)),
            n_items,
        )

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    @property
    def n_pairs(self) -> int:
        """Number of unordered pairs (i, j), i < j, with s > 0."""
        return self.indices.numel() // 2

    def to(self, device: torch.device | str) -> CooccurrenceLookup:
        return CooccurrenceLookup(
            self.indptr.to(device),
            self.indices.to(device),
            self.values.to(device),
            self.n_items,
        )

    def pair_scores(self, items: torch.Tensor) -> torch.Tensor:
        """The (n, n) float32 matrix of s between n distinct items (1-D integer tensor).

        0 on the diagonal and for pairs never seen together. Time O(nnz of the items' rows + n²),
        memory O(n_items + that nnz + n²), all on the lookup's device.
        """
        if items.dim() != 1 or items.is_floating_point() or items.is_complex():
            raise ValueError(f"items must be a 1-D integer tensor, got {items.dtype} {items.shape}")
        items = items.to(device=self.device, dtype=torch.int64)
        n = items.numel()
        out = torch.zeros(n, n, dtype=torch.float32, device=self.device)
        if n == 0:
            return out
        if not bool(((items >= 1) & (items <= self.n_items)).all()):
            raise ValueError(f"items must lie in [1, {self.n_items}] (0 is the padding index)")

        batch_rows = torch.arange(n, device=self.device)
        position = torch.full((self.n_items + 1,), -1, dtype=torch.int64, device=self.device)
        position[items] = batch_rows
        if not torch.equal(position[items], batch_rows):
            raise ValueError("items must be distinct")

        if self.n_items <= DENSE_MAX_ITEMS:
            return self._dense_matrix()[items][:, items]
        # Gather the CSR rows of the batch items: entry k of the concatenation is entry
        # k − (start of its row in the concatenation) of its row in the table.
        starts = self.indptr[items]
        lengths = self.indptr[items + 1] - starts
        total = int(lengths.sum())
        row = torch.repeat_interleave(batch_rows, lengths, output_size=total)
        row_offset = torch.cumsum(lengths, 0) - lengths
        entry = starts[row] + torch.arange(total, device=self.device) - row_offset[row]

        col = position[self.indices[entry].long()]
        inside = col >= 0
        out[row[inside], col[inside]] = self.values[entry[inside]]
        return out

    def _dense_matrix(self) -> torch.Tensor:
        """The (n_items + 1)² matrix of s, 0 on the diagonal and for unseen pairs."""
        if self._dense is None:
            size = self.n_items + 1
            rows = torch.repeat_interleave(
                torch.arange(size, device=self.device), self.indptr[1:] - self.indptr[:-1]
            )
            dense = torch.zeros(size, size, dtype=torch.float32, device=self.device)
            dense[rows, self.indices.long()] = self.values
            self._dense = dense
        return self._dense


def softmax_cross_entropy(
    hidden: torch.Tensor, item_vectors: torch.Tensor, positives: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of hidden states (P, h) over every item of `item_vectors`
    (n_items + 1, h; row 0 is padding and never a candidate), the target items `positives` (P,)."""
    logits = hidden @ item_vectors.T  # (P, n_items + 1)
    logits[:, 0] = -torch.inf
    return F.cross_entropy(logits, positives)


def sampled_bce(
    hidden: torch.Tensor, positive_vectors: torch.Tensor, negative_vectors: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy of hidden states (P, h) against their positive and one sampled
    negative item vector each (P, h): log σ of the positive's logit and of minus the negative's."""
    positive_logit = (hidden * positive_vectors).sum(-1)
    negative_logit = (hidden * negative_vectors).sum(-1)
    return F.softplus(-positive_logit).mean() + F.softplus(negative_logit).mean()


def calibration_loss(vectors: torch.Tensor, scores: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """L_cal of n adapter outputs (n, h), not yet normalised, and their pair scores (n, n).

    `scores` is `CooccurrenceLookup.pair_scores` of the same items in the same order. With n < 2
    there is no pair: the loss is a zero that stays on `vectors`' graph, device and dtype.
    """
    if vectors.dim() != 2:
        raise ValueError(f"vectors must be (n, h), got shape {tuple(vectors.shape)}")
    n = vectors.shape[0]
    if scores.shape != (n, n):
        raise ValueError(f"scores must be ({n}, {n}) for {n} vectors, got {tuple(scores.shape)}")
    if n < 2:
        return vectors.sum() * 0.0

    e = F.normalize(vectors, dim=1)
    # Rounding can push 2 − 2 a·b slightly below 0 for (nearly) equal vectors.
    sq_dist = (2.0 - 2.0 * (e @ e.T)).clamp_min(0.0)
    weight = torch.exp(-tau * scores.to(device=e.device, dtype=e.dtype))
    weight.fill_diagonal_(0.0)
    return -(weight * sq_dist).sum() / (n * (n - 1))


def calibration_loss_reference(
    vectors: torch.Tensor,
    items: torch.Tensor,
    pairs: dict[tuple[int, int], float],
    tau: float = 4.0,
) -> torch.Tensor:
    """The same loss built as the reference code does: w filled pair by pair in Python.

    `pairs` maps (min item, max item) to s. A double loop over the n (n − 1) / 2 pairs writes each
    weight into w element by element; the distances are direct differences (cdist without the
    matmul shortcut). O(n²) Python steps: for tests and the benchmark only.
    """
    n = vectors.shape[0]
    if n < 2:
        return vectors.sum() * 0.0
    ids = items.tolist()
    w = torch.zeros(n, n, dtype=vectors.dtype, device=vectors.device)
    for a in range(n):
        for b in range(a + 1, n):
            key = (min(ids[a], ids[b]), max(ids[a], ids[b]))
            weight = math.exp(-tau * pairs.get(key, 0.0))
            w[a, b] = weight
            w[b, a] = weight
    e = F.normalize(vectors, dim=1)
    sq_dist = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    return -(w * sq_dist).sum() / (n * (n - 1))


def _check_pairs(i: np.ndarray, j: np.ndarray, s: np.ndarray, n_items: int) -> None:
    if n_items < 1 or n_items >= 2**31 - 1:
        raise ValueError(f"n_items must lie in [1, 2³¹ − 2], got {n_items}")
    if not (i.ndim == j.ndim == s.ndim == 1 and i.size == j.size == s.size):
        raise ValueError(
            f"i, j and s must be 1-D arrays of one length, got shapes {i.shape}, {j.shape}, "
            f"{s.shape}"
        )
    if not (np.issubdtype(i.dtype, np.integer) and np.issubdtype(j.dtype, np.integer)):
        raise ValueError(f"i and j must hold integers, got {i.dtype} and {j.dtype}")
    if not np.issubdtype(s.dtype, np.floating):
        raise ValueError(f"s must hold floats, got {s.dtype}")
    if i.size == 0:
        return
    if not (i < j).all():
        k = int(np.argmax(i >= j))
        raise ValueError(f"pairs must have i < j, got ({i[k]}, {j[k]}) at row {k}")
    if i.min() < 1 or j.max() > n_items:
        raise ValueError(
            f"item indices must lie in [1, {n_items}] (0 is the padding index), "
            f"got [{i.min()}, {j.max()}]: is n_items right?"
        )
    if not (np.isfinite(s) & (s > 0) & (s <= 1)).all():
        k = int(np.argmax(~(np.isfinite(s) & (s > 0) & (s <= 1))))
        raise ValueError(f"s must lie in (0, 1], got {s[k]} at row {k}")
    key = np.sort(i.astype(np.int64) * (n_items + 1) + j)
    if (np.diff(key) == 0).any():
        k = int(np.argmax(np.diff(key) == 0))
        raise ValueError(
            f"pair ({key[k] // (n_items + 1)}, {key[k] % (n_items + 1)}) appears more than once"
        )
