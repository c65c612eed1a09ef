"""Behavioural calibration as its own job: an adapter that maps the frozen LLM item vectors into a
space that follows what users consume together, trained once and reused.

    data = calibration_inputs(item_embeddings, item_index, cooccurrence)   # arrays, checked
    result = calibrate(data, CalibrationConfig(), stored=None, inputs={...})
    result.table      # calibrated_embeddings: item_id, vector (h, L2-normalised), version
    result.adapter    # the trained Adapter to store (None when the stored one was reused)
    result.summary    # decision (trained | projected), why, drift, seconds, spread diagnostics

The adapter has the recommenders' architecture, Linear(d → 2h) → LayerNorm → GELU → Linear(2h → h)
(`genair_core.recommenders.models.item_encoders.AdapterEncoder`, method §6). Its objective, per
step over B co-occurring pairs (a, b) drawn from the co-occurrence table (training prefixes only)
with probability ∝ count (or s, or uniform: `sampling`):

    L = InfoNCE(a → b) / 2 + InfoNCE(b → a) / 2  +  α · L_cal(distinct items of the batch)

InfoNCE is the in-batch softmax over cosines / temperature: each a_k must pick its own b_k among
the batch's b's. Another pair's b that is the same item as b_k (or as a_k) is masked out of the
negatives rather than pushed away from itself. L_cal is method §7's behavioural calibration loss
(`genair_core.losses`): it spreads the batch's items apart, less for pairs seen together. The
softmax's negatives already keep the space from collapsing onto one point; the collapse guard
(`check_spread`) makes sure of it before anything is written: the mean pairwise cosine and the
effective rank (exp of the entropy of the normalised singular values; Roy & Vetterli 2007) of
the calibrated vectors are compared with the raw ones', and a collapsed space is an error.

Reruns (`decide`): the stored adapter is reused — new and changed items are projected through it,
no retraining — while its input space (dimension and PCA bases) is the same and the co-occurrence
table drifted by at most `max_drift`. Drift is the number of pairs added, removed or changed
count since training over the stored table's pairs (above 1 when more pairs were added than it
held); pairs are keyed by their two item_ids (item
indices move when the catalog grows). The stored side is a bottom-k sketch (`PairSketch`): the k
pairs with the smallest 64-bit key hashes and their counts. Up to k pairs the drift is exact;
beyond, it is measured on the pairs whose hash falls below the sketch's threshold, a uniform
sample of both tables, so a few hundred kB stand for a table of millions of pairs.

Deterministic for a seed on one device: pairs are drawn with numpy's generator, the weights are
initialised under a forked torch seed. Calibrated vectors are L2-normalised, so cosine is a dot
product (what the FAISS index uses).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from genair_core import progress
from genair_core.config import CalibrationConfig
from genair_core.devices import resolve_device, seeded, torch_threads
from genair_core.losses import CooccurrenceLookup, calibration_loss
from genair_core.metrics import effective_rank, mean_pairwise_cosine
from genair_core.recommenders.models.item_encoders import AdapterEncoder
from genair_core.tables import to_fixed_list, to_matrix

CALIBRATION_VERSION = 1  # bump when the objective or the table layout changes
SKETCH_SIZE = 65_536  # pairs kept for the drift estimate: exact up to this many pairs
PROJECT_CHUNK = 65_536  # items through the adapter at once when projecting
# What changes the trained weights; the rest (device, reuse and guard settings) does not.
_TRAINING_FIELDS = (
    "hidden",
    "epochs",
    "pairs_per_epoch",
    "batch_size",
    "lr",
    "temperature",
    "sampling",
    "alpha",
    "tau",
    "seed",
)
_U64 = np.uint64

# (z_a (B, h), z_b (B, h), a (B,), b (B,), temperature) -> scalar loss; z are L2-normalised.
AlignmentLoss = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor
]


class CollapsedSpaceError(ValueError):
    """The calibrated vectors lost their spread: they are not written."""


@dataclass(frozen=True)
class CalibrationData:
    """The job's inputs as arrays: every item with an item vector, and the co-occurring pairs
    between them as 1-based rows of `vectors` (row r is item_ids[r − 1]; 0 stays padding)."""

    item_ids: list[str]  # sorted
    vectors: np.ndarray  # (N, d) float32
    basis_ids: list[str]  # the PCA bases the vectors were pooled with
    a: np.ndarray  # (P,) int64, 1-based rows, a < b
    b: np.ndarray  # (P,) int64
    count: np.ndarray  # (P,) int64
    s: np.ndarray  # (P,) float32
    sketch: PairSketch  # of the whole co-occurrence table, keyed by item_id
    pairs_without_vectors: int  # table pairs dropped because an item has no vector


@dataclass(frozen=True)
class PairSketch:
    """Bottom-k sketch of a co-occurrence table: the k smallest pair-key hashes and counts."""

    keys: np.ndarray  # (k,) uint64, sorted
    counts: np.ndarray  # (k,) int64
    n_pairs: int  # pairs in the whole table

    @property
    def exact(self) -> bool:
        return self.n_pairs <= len(self.keys)

    def drift(self, current: PairSketch) -> float:
        """The pairs `current` added, removed or changed the count of, over this table's pairs
        (above 1 when it added more than this table holds).

        Exact when both tables fitted in their sketches; otherwise measured on the pairs whose
        hash lies below both sketches' thresholds, a uniform sample of the pairs."""
        if self.n_pairs == 0:
            return 0.0 if current.n_pairs == 0 else 1.0
        # Compare below the lower of the two thresholds: both sketches hold every pair there.
        limit = min(_threshold(self), _threshold(current))
        stored = self.keys <= limit
        mine_keys, mine_counts = self.keys[stored], self.counts[stored]
        below = current.keys <= limit
        keys, counts = current.keys[below], current.counts[below]
        common, mine, theirs = np.intersect1d(mine_keys, keys, True, return_indices=True)
        changed = int((mine_counts[mine] != counts[theirs]).sum())
        removed = len(mine_keys) - len(common)
        added = len(keys) - len(common)
        return (changed + removed + added) / max(len(mine_keys), 1)


def _threshold(sketch: PairSketch) -> np.uint64:
    return np.iinfo(np.uint64).max if sketch.exact else sketch.keys[-1]


def sketch_pairs(
    id_a: np.ndarray, id_b: np.ndarray, count: np.ndarray, size: int = SKETCH_SIZE
) -> PairSketch:
    """The sketch of pairs given by their item ids' 64-bit hashes (order within a pair free)."""
    low, high = np.minimum(id_a, id_b), np.maximum(id_a, id_b)
    keys = _mix(low ^ _mix(high))
    order = np.argsort(keys, kind="stable")[:size]
    return PairSketch(keys[order], count[order].astype(np.int64), len(keys))


def item_hashes(item_ids: list[str]) -> np.ndarray:
    """A stable 64-bit hash of each item_id (the same on every machine and run)."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
            for i in item_ids
        ],
        dtype=_U64,
    )


def calibration_inputs(
    item_embeddings: pa.Table, item_index: pa.Table, cooccurrence: pa.Table
) -> CalibrationData:
    """Check the three tables and turn them into `CalibrationData`. Errors name the table."""
    if item_embeddings.num_rows == 0:
        raise ValueError("item_embeddings is empty: run the archetypes and pooling stages first")
    ids = item_embeddings.column("item_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError("item_embeddings.item_id holds duplicates")
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    item_ids = [ids[k] for k in order]
    vectors = to_matrix(item_embeddings.column("vector"))[order]
    if not np.isfinite(vectors).all():
        raise ValueError("item_embeddings.vector holds non-finite values")
    basis_ids = sorted(set(item_embeddings.column("basis_id").to_pylist()))

    index_ids = item_index.column("item_id").to_pylist()
    index_idx = item_index.column("item_idx").to_numpy().astype(np.int64)
    n_index = int(index_idx.max()) if len(index_idx) else 0
    row_of = {item_id: r for r, item_id in enumerate(item_ids, start=1)}
    idx_to_row = np.full(n_index + 1, -1, dtype=np.int64)
    idx_to_hash = np.zeros(n_index + 1, dtype=_U64)
    idx_to_row[index_idx] = [row_of.get(i, -1) for i in index_ids]
    idx_to_hash[index_idx] = item_hashes(index_ids)

    i = cooccurrence.column("i").to_numpy().astype(np.int64)
    j = cooccurrence.column("j").to_numpy().astype(np.int64)
    count = cooccurrence.column("count").to_numpy().astype(np.int64)
    s = cooccurrence.column("s").to_numpy().astype(np.float32)
    if len(i) and (min(i.min(), j.min()) < 1 or max(i.max(), j.max()) > n_index):
        raise ValueError(
            f"cooccurrence.i/j hold item indices outside item_index's [1, {n_index}]: "
            "rerun the cooccurrence stage"
        )
    sketch = sketch_pairs(idx_to_hash[i], idx_to_hash[j], count)
    ra, rb = idx_to_row[i], idx_to_row[j]
    keep = (ra > 0) & (rb > 0)
    if not keep.any():
        raise ValueError(
            "cooccurrence holds no pair of items that both have an item vector: nothing to "
            "calibrate on (run the split, cooccurrence and pooling stages)"
        )
    return CalibrationData(
        item_ids=item_ids,
        vectors=vectors,
        basis_ids=basis_ids,
        a=np.minimum(ra, rb)[keep],
        b=np.maximum(ra, rb)[keep],
        count=count[keep],
        s=s[keep],
        sketch=sketch,
        pairs_without_vectors=int((~keep).sum()),
    )


# -- the objective -------------------------------------------------------------------------------
def info_nce(
    za: torch.Tensor, zb: torch.Tensor, a: torch.Tensor, b: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric in-batch softmax over B pairs: row k's positive is column k; a column that is
    the same item as row k's a or b (another pair sharing it) is not a negative."""
    eye = torch.eye(len(a), dtype=torch.bool, device=za.device)
    targets = torch.arange(len(a), device=za.device)
    same_ab = (b[None, :] == b[:, None]) | (b[None, :] == a[:, None])  # (B, B) rows a, cols b
    same_ba = (a[None, :] == a[:, None]) | (a[None, :] == b[:, None])  # rows b, cols a
    logits = za @ zb.T / temperature  # (B, B)
    forward = F.cross_entropy(logits.masked_fill(same_ab & ~eye, -math.inf), targets)
    backward = F.cross_entropy(logits.T.masked_fill(same_ba & ~eye, -math.inf), targets)
    return (forward + backward) / 2


@dataclass(frozen=True)
class Adapter:
    """A trained adapter and what identifies it: what storage keeps between runs."""

    weights: dict[str, np.ndarray]  # the adapter's state dict, float32 on the CPU
    sketch: PairSketch  # of the co-occurrence table it was trained on
    info: dict[str, object]  # JSON: version, settings_id, input_dim, hidden, basis_ids, log, ...

    def tensors(self) -> dict[str, np.ndarray]:
        """Everything array-valued, for one safetensors file."""
        return {
            **{f"adapter.{k}": v for k, v in self.weights.items()},
            "sketch.keys": self.sketch.keys,
            "sketch.counts": self.sketch.counts,
        }

    @classmethod
    def from_stored(cls, tensors: Mapping[str, np.ndarray], info: Mapping[str, object]) -> Adapter:
        weights = {
            k.removeprefix("adapter."): v for k, v in tensors.items() if k.startswith("adapter.")
        }
        try:
            sketch = PairSketch(
                np.asarray(tensors["sketch.keys"], dtype=_U64),
                np.asarray(tensors["sketch.counts"], dtype=np.int64),
                int(info["n_pairs"]),  # type: ignore[call-overload]
            )
        except KeyError as e:
            raise ValueError(f"the stored calibration adapter lacks {e}") from None
        return cls(weights, sketch, dict(info))


def calibration_settings_id(cfg: CalibrationConfig) -> str:
    """A short id of the settings that shape the trained weights."""
    return _digest(CALIBRATION_VERSION, cfg.model_dump(mode="json", include=set(_TRAINING_FIELDS)))[
        :16
    ]


def train_adapter(
    data: CalibrationData,
    cfg: CalibrationConfig,
    *,
    device: torch.device,
    alignment: AlignmentLoss = info_nce,
) -> tuple[AdapterEncoder, list[dict[str, float]]]:
    """Train the adapter on `data`'s pairs for cfg.epochs epochs of pairs_per_epoch draws each;
    returns it (on `device`) and one log row per epoch (loss, alignment, cal, seconds)."""
    n, _ = data.vectors.shape
    table = torch.zeros(n + 1, data.vectors.shape[1])
    table[1:] = torch.from_numpy(data.vectors)
    with seeded(cfg.seed):
        encoder = AdapterEncoder(table, cfg.hidden).to(device)
    lookup = CooccurrenceLookup.from_pairs(data.a, data.b, data.s, n).to(device)
    optimizer = torch.optim.Adam(encoder.adapter.parameters(), lr=cfg.lr)
    weight = {"count": data.count.astype(np.float64), "s": data.s.astype(np.float64)}.get(
        cfg.sampling, np.ones(len(data.a))
    )
    cdf = np.cumsum(weight)
    cdf /= cdf[-1]
    rng = np.random.default_rng(cfg.seed)
    a_all = torch.from_numpy(data.a).to(device)
    b_all = torch.from_numpy(data.b).to(device)
    batch = min(cfg.batch_size, len(data.a))
    # Draws are with replacement, so an epoch is a number of draws, not a pass over the table:
    # a tiny table still gets enough steps to move the adapter off its initial state (whose
    # outputs share one direction: cosines ~0.9 before training).
    draws = cfg.pairs_per_epoch or len(data.a)
    steps = math.ceil(draws / batch)
    log = []
    encoder.train()
    progress.begin("calibrate", total=cfg.epochs, unit="epochs")
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        totals = np.zeros(3)
        for _ in range(steps):
            pick = np.minimum(np.searchsorted(cdf, rng.random(batch), side="right"), len(cdf) - 1)
            pick_t = torch.from_numpy(pick).to(device)
            a, b = a_all[pick_t], b_all[pick_t]
            items, where = torch.unique(torch.cat([a, b]), return_inverse=True)
            z = F.normalize(encoder.adapt(items), dim=1)  # (U, h): each distinct item once
            align = alignment(z[where[:batch]], z[where[batch:]], a, b, cfg.temperature)
            cal = (
                calibration_loss(z, lookup.pair_scores(items), cfg.tau) if cfg.alpha else align * 0
            )
            loss = align + cfg.alpha * cal
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals += [loss.item(), align.item(), cal.item()]
        log.append(
            {
                "epoch": epoch + 1,
                "loss": totals[0] / steps,
                "alignment": totals[1] / steps,
                "cal": totals[2] / steps,
                "seconds": time.perf_counter() - start,
            }
        )
        progress.advance("calibrate", detail=f"epoch {epoch + 1}: loss {log[-1]['loss']:.4f}")
    progress.end("calibrate")
    encoder.eval()
    return encoder, log


def project(
    vectors: np.ndarray, weights: Mapping[str, np.ndarray], hidden: int, device: torch.device
) -> np.ndarray:
    """(N, d) item vectors through a stored adapter → (N, h) L2-normalised float32."""
    adapter = _adapter_module(vectors.shape[1], hidden, weights).to(device)
    out = np.empty((len(vectors), hidden), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(vectors), PROJECT_CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(vectors[start : start + PROJECT_CHUNK])).to(
                device
            )
            out[start : start + len(x)] = F.normalize(adapter(x), dim=1).cpu().numpy()
    return out


# -- spread and the collapse guard ---------------------------------------------------------------
@dataclass(frozen=True)
class Spread:
    mean_cosine: float  # over all pairs i ≠ j
    effective_rank: float  # exp(entropy of the normalised singular values), in [1, min(N, d)]


def spread(vectors: np.ndarray) -> Spread:
    """Mean pairwise cosine and effective rank of (N, d) vectors, rows L2-normalised first; both
    from d-sized sums, never an N × N matrix (genair_core.metrics)."""
    u = np.asarray(vectors, dtype=np.float64)
    if len(u) < 2:
        raise ValueError(f"spread needs at least 2 vectors, got {len(u)}")
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    return Spread(mean_cosine=mean_pairwise_cosine(u), effective_rank=effective_rank(u))


def check_spread(raw: Spread, calibrated: Spread, cfg: CalibrationConfig) -> None:
    """Raise CollapsedSpaceError when the calibrated space collapsed (cfg's two thresholds)."""
    floor = cfg.min_rank_share * min(raw.effective_rank, cfg.hidden)
    problems = []
    if calibrated.mean_cosine > cfg.max_mean_cosine:
        problems.append(
            f"mean pairwise cosine {calibrated.mean_cosine:.3f} > calibration.max_mean_cosine "
            f"{cfg.max_mean_cosine} (raw space: {raw.mean_cosine:.3f})"
        )
    if calibrated.effective_rank < floor:
        problems.append(
            f"effective rank {calibrated.effective_rank:.1f} < {floor:.1f} (calibration."
            f"min_rank_share {cfg.min_rank_share} × min(raw {raw.effective_rank:.1f}, hidden "
            f"{cfg.hidden}))"
        )
    if problems:
        raise CollapsedSpaceError(
            "the calibrated item space collapsed; calibrated_embeddings not written: "
            + "; ".join(problems)
            # Measured on ml-100k (docs/results.md): a higher temperature or alpha spreads the
            # items; a lower temperature crowds them into a narrower cone.
            + ". Raise calibration.temperature or alpha."
        )


# -- the job -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    table: pa.Table  # calibrated_embeddings
    adapter: Adapter | None  # newly trained: store it; None: the stored one was used
    summary: dict[str, object]


def decide(
    data: CalibrationData, cfg: CalibrationConfig, stored: Adapter | None, retrain: bool
) -> tuple[str, str, float | None]:
    """("train" | "project", why, drift or None) for a run with `stored` (None: none stored)."""
    if stored is None:
        return "train", "no stored adapter for these settings", None
    if retrain:
        return "train", "retraining was requested", None
    dim = data.vectors.shape[1]
    if stored.info.get("input_dim") != dim or stored.info.get("basis_ids") != data.basis_ids:
        return "train", "the raw item space changed (dimension or PCA bases)", None
    drift = stored.sketch.drift(data.sketch)
    if drift > cfg.max_drift:
        return (
            "train",
            f"co-occurrence drift {drift:.3f} > calibration.max_drift {cfg.max_drift}",
            drift,
        )
    return (
        "project",
        f"co-occurrence drift {drift:.3f} <= calibration.max_drift {cfg.max_drift}",
        drift,
    )


def calibrate(
    data: CalibrationData,
    cfg: CalibrationConfig,
    *,
    stored: Adapter | None,
    inputs: Mapping[str, str],
    retrain: bool = False,
    alignment: AlignmentLoss = info_nce,
) -> Calibration:
    """Train (or reuse) the adapter and project every item with a vector through it.

    `inputs` names the input tables' hashes; with the settings they make a trained adapter's
    version. Raises CollapsedSpaceError instead of returning a collapsed space."""
    device = resolve_device(cfg.device, "calibration.device")
    action, why, drift = decide(data, cfg, stored, retrain or cfg.retrain)
    start = time.perf_counter()
    with torch_threads(cfg.cpu_threads if device.type == "cpu" else 0):
        if action == "train":
            encoder, log = train_adapter(data, cfg, device=device, alignment=alignment)
            weights = {k: v.detach().cpu().numpy() for k, v in encoder.adapter.state_dict().items()}
            version = _digest(calibration_settings_id(cfg), dict(inputs))[:16]
        else:
            assert stored is not None
            weights, log, version = stored.weights, [], str(stored.info["version"])
        vectors = project(data.vectors, weights, cfg.hidden, device)
    seconds = time.perf_counter() - start
    raw, calibrated = spread(data.vectors), spread(vectors)
    check_spread(raw, calibrated, cfg)

    table = pa.table(
        {
            "item_id": pa.array(data.item_ids, pa.string()),
            "vector": to_fixed_list(vectors),
            "version": pa.array([version] * len(data.item_ids), pa.string()),
        }
    )
    diagnostics = {
        "raw_mean_cosine": round(raw.mean_cosine, 4),
        "raw_effective_rank": round(raw.effective_rank, 2),
        "calibrated_mean_cosine": round(calibrated.mean_cosine, 4),
        "calibrated_effective_rank": round(calibrated.effective_rank, 2),
    }
    summary: dict[str, object] = {
        "decision": "trained" if action == "train" else "projected",
        "why": why,
        "drift": None if drift is None else round(drift, 4),
        "version": version,
        "items": len(data.item_ids),
        "pairs": len(data.a),
        "pairs_without_vectors": data.pairs_without_vectors,
        "device": str(device),
        "seconds": round(seconds, 2),
        **diagnostics,
    }
    adapter = None
    if action == "train":
        epoch_seconds = [row["seconds"] for row in log]
        summary |= {
            "epochs": cfg.epochs,
            "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 3),
            "final_loss": round(log[-1]["loss"], 4),
        }
        adapter = Adapter(
            weights,
            data.sketch,
            {
                "format": CALIBRATION_VERSION,
                "version": version,
                "settings_id": calibration_settings_id(cfg),
                "settings": cfg.model_dump(mode="json", include=set(_TRAINING_FIELDS)),
                "inputs": dict(inputs),
                "input_dim": int(data.vectors.shape[1]),
                "hidden": cfg.hidden,
                "basis_ids": data.basis_ids,
                "n_pairs": data.sketch.n_pairs,
                "pairs_trained_on": len(data.a),
                "sketch_exact": data.sketch.exact,
                "items_trained_on": len(data.item_ids),
                "device": str(device),
                "seconds": summary["seconds"],
                "seconds_per_epoch": summary["seconds_per_epoch"],
                "log": [{k: round(v, 5) for k, v in row.items()} for row in log],
                "diagnostics": diagnostics,
            },
        )
    return Calibration(table, adapter, summary)


def _adapter_module(dim: int, hidden: int, weights: Mapping[str, np.ndarray]) -> torch.nn.Module:
    table = torch.zeros(2, dim)
    module = AdapterEncoder(table, hidden).adapter
    try:
        module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    except RuntimeError as e:
        raise ValueError(
            f"the stored calibration adapter does not fit {dim}-d inputs and hidden {hidden}: {e}"
        ) from None
    module.eval()
    return module


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a well-mixed hash."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
