"""Pooling: two PCA bases turn the LLM's hidden-state means into one fixed-size item vector.

    input_basis = fit_basis(input_emb, 384)          # (N, D) -> basis of k_in <= 384 directions
    gen_basis = fit_basis(gen_emb, 384)
    vectors = pool_vectors(input_emb, gen_emb, input_basis, gen_basis)   # (N, k_in + k_gen)
    basis_id(input_basis, gen_basis)                 # which bases made these vectors

    pooled = pool_archetypes(archetypes, PoolingConfig(), read_stored)   # the stage: all of it
    pooled.item_embeddings, pooled.bases, pooled.fitted   # table, bases to store, fitted now?
    must_fit(PoolingConfig(), have_stored=False)          # True: the stage runs to store bases

As in the paper (method.md, stage 4): PCA of input_emb and, separately, of gen_emb, each to 384
dims with random_state 42, concatenated input half first → 768 dims. Unlike the reference, which
calls `fit_transform` once per run, a basis here is a value that is stored and reused: items added
later are projected with the stored basis (`PcaBasis.project`), so their vectors live in the same
space as the old ones; refitting moves every vector and is left to an explicit request (or to a
catalog that outgrew bases capped on a tiny first run, see `pool_archetypes`). A basis is stored
and read back as plain arrays and ints (`PcaBasis.to_dict` / `from_dict`).

Decisions:
- sklearn's PCA with its default ("auto") solver and random_state=seed, as the reference does;
  for ml-100k (1,682 x 576, k = 384) that is the randomized solver, so the seed matters.
- Every item, fitted on or added later, gets (x - mean) @ components.T (= sklearn's transform).
  The reference's `fit_transform` returns U·S instead, which with the randomized solver differs
  from X·Vᵀ on the not fully converged tail components (measured on random 1,682 x 576 data:
  up to 5% of the largest coordinate); using it would put the fitting items and the later items
  in slightly different spaces. With an exact solver the two agree.
- The fit runs in float64 on a private copy. LLM hidden states carry a few huge "outlier"
  dimensions, so centering and the SVD in float32 would lose the small-variance directions; the
  basis is then stored in float32 (what the item vectors are). Peak memory ≈ N·D·8 bytes plus the
  SVD's workspace (12k items x 4096 dims: ~0.4 GB).
- k = min(n_components, N - 1, D): N centred rows span at most N - 1 directions, so on a tiny
  catalog the extra components would be arbitrary. `basis.dim` says what k came out.
- Sign: an eigenvector is only defined up to sign. sklearn (>= 1.5) flips each component so that
  its largest-magnitude entry is positive (`svd_flip(u_based_decision=False)`), which depends
  only on the component, not on the data's row order or the solver. `fit_basis` applies the same
  rule itself, so the convention is ours even if sklearn's changes (on sklearn 1.9 it is a no-op).
  Two fits on identical data therefore give identical arrays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from sklearn.decomposition import PCA

from genair_core.config import PoolingConfig
from genair_core.tables import PROVENANCE_COLUMNS, to_fixed_list, to_matrix

ROLES = ("input", "gen")  # the two bases, in the order their halves are concatenated


@dataclass(frozen=True, eq=False, repr=False)
class PcaBasis:
    """A fitted PCA basis: x ↦ (x - mean) @ components.T.

    eq=False: the fields are arrays, so the generated == would be ambiguous; compare bases with
    `basis_id` or np.array_equal on the fields. The arrays are made read-only, so a basis shared
    between callers cannot be changed under them.
    """

    mean: np.ndarray  # (D,) float32
    components: np.ndarray  # (k, D) float32, orthonormal rows, largest-|.| entry of each positive
    explained_variance_ratio: np.ndarray  # (k,) float32, share of the fitting data's variance
    n_fit: int  # rows the basis was fitted on
    seed: int  # random_state of the fit

    def __post_init__(self) -> None:
        mean = _frozen_f32(self.mean)
        components = _frozen_f32(self.components)
        ratio = _frozen_f32(self.explained_variance_ratio)
        if mean.ndim != 1 or components.ndim != 2 or ratio.ndim != 1:
            raise ValueError(
                f"PcaBasis needs mean (D,), components (k, D) and explained_variance_ratio (k,); "
                f"got {mean.shape}, {components.shape}, {ratio.shape}"
            )
        if components.shape[1] != mean.shape[0] or ratio.shape[0] != components.shape[0]:
            raise ValueError(
                f"PcaBasis shapes disagree: mean {mean.shape}, components {components.shape}, "
                f"explained_variance_ratio {ratio.shape}"
            )
        if components.shape[0] == 0:
            raise ValueError("PcaBasis needs at least one component")
        for name, a in (("mean", mean), ("components", components), ("ratio", ratio)):
            if not np.isfinite(a).all():
                raise ValueError(f"PcaBasis {name} holds NaN or inf")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "components", components)
        object.__setattr__(self, "explained_variance_ratio", ratio)
        object.__setattr__(self, "n_fit", int(self.n_fit))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def dim(self) -> int:
        """k, the size of a projected vector."""
        return self.components.shape[0]

    @property
    def input_dim(self) -> int:
        """D, the size of the hidden-state vectors the basis accepts."""
        return self.mean.shape[0]

    def project(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, k) float32, computed in float64 (see the module docstring)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"cannot project an array of shape {x.shape} with a basis fitted on "
                f"{self.input_dim}-d vectors: expected (N, {self.input_dim}); was the basis "
                f"fitted for another model?"
            )
        _check_finite(x, "projected rows")
        centred = x.astype(np.float64) - self.mean.astype(np.float64)  # (N, D)
        return (centred @ self.components.T.astype(np.float64)).astype(np.float32)  # (N, k)

    def to_dict(self) -> dict[str, np.ndarray | int]:
        """The fields as plain arrays and ints, for storage."""
        return {
            "mean": self.mean,
            "components": self.components,
            "explained_variance_ratio": self.explained_variance_ratio,
            "n_fit": self.n_fit,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, fields: Mapping[str, object]) -> PcaBasis:
        """The basis `to_dict` gave `fields` for; checked as a new basis is."""
        return cls(**fields)

    def __repr__(self) -> str:
        return (
            f"PcaBasis(dim={self.dim}, input_dim={self.input_dim}, n_fit={self.n_fit}, "
            f"seed={self.seed}, explained={float(self.explained_variance_ratio.sum()):.3f})"
        )


def fit_basis(x: np.ndarray, n_components: int, seed: int = 42) -> PcaBasis:
    """Fit a PCA basis of k = min(n_components, N - 1, D) directions on x (N, D)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"fit_basis needs a 2-d array (N, D); got shape {x.shape}")
    n, d = x.shape
    if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer):
        raise TypeError(f"n_components must be an int; got {n_components!r}")
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1; got {n_components}")
    if n < 2:
        raise ValueError(f"a PCA basis needs at least 2 rows to fit on; got {n}")
    if d < 1:
        raise ValueError("a PCA basis needs vectors of at least 1 dimension; got 0")
    _check_finite(x, "rows to fit on")
    # Constant data has no direction of variance: sklearn would return ratios of 0/0 (NaN).
    if not (x != x[0]).any():
        raise ValueError(f"all {n} rows to fit on are identical: there is no variance to keep")

    k = min(n_components, n - 1, d)
    # copy=False: the float64 array is our own copy, so sklearn may centre it in place.
    x64 = np.array(x, dtype=np.float64, copy=True)  # (N, D)
    pca = PCA(n_components=k, random_state=seed, copy=False).fit(x64)
    components = pca.components_.copy()  # (k, D) float64
    pivot = np.abs(components).argmax(axis=1)
    components *= np.sign(components[np.arange(k), pivot])[:, None]
    return PcaBasis(
        mean=pca.mean_,
        components=components,
        explained_variance_ratio=pca.explained_variance_ratio_,
        n_fit=n,
        seed=seed,
    )


def pool_vectors(
    input_emb: np.ndarray, gen_emb: np.ndarray, input_basis: PcaBasis, gen_basis: PcaBasis
) -> np.ndarray:
    """Item vectors [input_basis.project(input_emb), gen_basis.project(gen_emb)], input first.

    (N, D_in), (N, D_gen) -> (N, k_in + k_gen) float32; 768 with the default 384 + 384.
    """
    input_emb, gen_emb = np.asarray(input_emb), np.asarray(gen_emb)
    if input_emb.ndim != 2 or gen_emb.ndim != 2 or input_emb.shape[0] != gen_emb.shape[0]:
        raise ValueError(
            f"input_emb and gen_emb must be (N, D) arrays with the same N (one row per item); "
            f"got {input_emb.shape} and {gen_emb.shape}"
        )
    halves = [input_basis.project(input_emb), gen_basis.project(gen_emb)]  # (N, k_in), (N, k_gen)
    return np.concatenate(halves, axis=1)  # (N, k_in + k_gen) float32


def basis_id(input_basis: PcaBasis, gen_basis: PcaBasis) -> str:
    """A 16-hex-digit digest of what the item vectors depend on: both bases' mean and components.

    Recorded beside every item vector, so vectors made by different bases are never mixed. n_fit,
    seed and the variance ratios describe the fit but do not change a projection, so they are left
    out; the order of the two bases is part of the id (input first, as in pool_vectors).
    """
    digest = hashlib.sha256(b"genair-pca-bases/1")
    for role, basis in (("input", input_basis), ("gen", gen_basis)):
        digest.update(f"|{role}:{basis.dim}x{basis.input_dim}|".encode())
        digest.update(np.ascontiguousarray(basis.mean, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(basis.components, dtype="<f4").tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class PooledItems:
    """What `pool_archetypes` made."""

    item_embeddings: pa.Table  # tables.item_embeddings_schema: one row per archetype row
    bases: dict[str, dict[str, np.ndarray | int]]  # ROLES -> PcaBasis.to_dict()
    fitted: bool  # True: fitted by this call, so to be stored; False: the stored ones, reused
    summary: dict[str, object]


StoredBases = Mapping[str, Mapping[str, object]]  # ROLES -> PcaBasis.to_dict(), as stored


def must_fit(config: PoolingConfig, have_stored: bool) -> bool:
    """Whether bases will be fitted whatever the archetypes: none are stored, or a refit is asked.
    The stage then runs even on unchanged archetypes, so that its bases get stored."""
    return config.refit or not have_stored


def pool_archetypes(
    archetypes: pa.Table | None,
    config: PoolingConfig,
    read_stored: Callable[[], StoredBases | None] = lambda: None,
    *,
    stored_at: str = "",
) -> PooledItems:
    """Item vectors for the current archetypes, with the stored bases or with bases fitted now.

    `archetypes`: the archetype rows (provenance columns, input_emb, gen_emb); None or no rows is
    an error. `read_stored` gives the bases of an earlier fit (`PooledItems.bases`), or None when
    there are none; it is not called when a refit is asked, so an unreadable file cannot block
    the refit that replaces it. `stored_at` names where they came from in error messages.
    Bases are fitted when none are stored, when `config.refit` is set, or when a stored basis was
    capped on a small catalog (k = rows - 1) and more items exist now, so that a quick first run
    does not fix the vector size for good. Stored bases of another size than configured are
    refused rather than silently reused.
    """
    if archetypes is None or archetypes.num_rows == 0:
        raise ValueError("no archetypes to pool: the archetype stage wrote none")
    n = archetypes.num_rows
    input_emb = to_matrix(archetypes["input_emb"])  # (N, hidden)
    gen_emb = to_matrix(archetypes["gen_emb"])  # (N, hidden)
    stored = None if config.refit else read_stored()
    bases = None if stored is None else _stored(stored, config, stored_at)
    fitted = bases is None or _outgrown(bases, n)
    if fitted:
        bases = {
            "input": fit_basis(input_emb, config.input_dims, seed=config.seed),
            "gen": fit_basis(gen_emb, config.gen_dims, seed=config.seed),
        }
    vectors = pool_vectors(input_emb, gen_emb, bases["input"], bases["gen"])  # (N, k_in + k_gen)
    bid = basis_id(bases["input"], bases["gen"])
    table = (
        archetypes.select(list(PROVENANCE_COLUMNS))
        .append_column("basis_id", pa.array([bid] * n, pa.string()))
        .append_column("vector", to_fixed_list(vectors))
    )
    summary = {
        "items": n,
        "dims": int(vectors.shape[1]),
        "bases": "fitted" if fitted else "stored",
        "basis_id": bid,
        "explained_input": float(bases["input"].explained_variance_ratio.sum()),
        "explained_gen": float(bases["gen"].explained_variance_ratio.sum()),
    }
    plain = {role: basis.to_dict() for role, basis in bases.items()}
    return PooledItems(table, plain, fitted, summary)


def _stored(stored: StoredBases, config: PoolingConfig, stored_at: str) -> dict[str, PcaBasis]:
    """The stored bases, refused when their size is not the configured one. (A basis may be
    smaller than configured when it was capped on a small catalog.)"""
    where = f" in {stored_at}" if stored_at else ""
    try:
        bases = {role: PcaBasis.from_dict(stored[role]) for role in ROLES}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"stored PCA bases{where} are unusable ({e}): set pooling.refit = true to refit them"
        ) from e
    for name, wanted in (("input", config.input_dims), ("gen", config.gen_dims)):
        basis = bases[name]
        capped = basis.dim == basis.n_fit - 1 or basis.dim == basis.input_dim
        if basis.dim != wanted and not (capped and basis.dim < wanted):
            raise ValueError(
                f"stored {name} basis{where} has {basis.dim} dims but pooling.{name}_dims is "
                f"{wanted}: set pooling.refit = true to refit it"
            )
    return bases


def _outgrown(bases: Mapping[str, PcaBasis], n_items: int) -> bool:
    return any(b.dim == b.n_fit - 1 and n_items > b.n_fit for b in bases.values())


def _frozen_f32(a: np.ndarray) -> np.ndarray:
    out = np.array(a, dtype=np.float32, order="C", copy=True)
    out.setflags(write=False)
    return out


def _check_finite(x: np.ndarray, what: str) -> None:
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{bad.size} of the {x.shape[0]} {what} hold NaN or inf "
            f"(row positions {bad[:10].tolist()}{', ...' if bad.size > 10 else ''}); "
            "such rows must be rejected upstream, never pooled"
        )
