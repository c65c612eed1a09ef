"""The calibration job: spread diagnostics and the collapse guard, the drift sketch, the
train/project decision, the adapter files, and the task through `.fn()` on tables written here.
Real torch training throughout, on small synthetic catalogs (a few seconds)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from prefect.logging import disable_run_logger

from genair_core.config import CalibrationConfig, StorageConfig
from genair_core.item_space.calibration import (
    Adapter,
    CollapsedSpaceError,
    calibrate,
    calibration_inputs,
    check_spread,
    decide,
    item_hashes,
    project,
    sketch_pairs,
    spread,
)
from genair_core.tables import to_fixed_list, to_matrix
from storage.calibration import AdapterFileError, AdapterFiles
from storage.store import Store
from tasks.calibration import calibrate_items
from tasks.settings import Settings

# The toy catalog's own settings (4 behavioural groups, 16-d): temperature pinned at 0.1, the
# value its spread thresholds were set with; ml-100k's default (0.5) clusters 4 groups tighter.
CFG = CalibrationConfig(
    hidden=16,
    epochs=20,
    pairs_per_epoch=512,
    batch_size=64,
    lr=3e-3,
    temperature=0.1,
    device="cpu",
)
HASHES = {"item_embeddings": "e", "item_index": "x", "cooccurrence": "c"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These models are tiny: one thread avoids the spin-waits of two on a busy 2-core machine
    (100x slower here while another job runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _catalog(n: int = 40, dim: int = 12, clusters: int = 4, seed: int = 0, basis: str = "b1"):
    """item_embeddings, item_index and cooccurrence of `n` items in `clusters` behavioural groups:
    items of one group co-occur (counts 1-5), the raw vectors carry only a weak group signal."""
    rng = np.random.default_rng(seed)
    ids = [f"m{k:03d}" for k in range(n)]
    group = np.arange(n) % clusters
    centres = rng.normal(size=(clusters, dim))
    vectors = rng.normal(size=(n, dim)) + 0.5 * centres[group]
    embeddings = pa.table(
        {
            "item_id": ids,
            "basis_id": [basis] * n,
            "vector": to_fixed_list(vectors.astype(np.float32)),
        }
    )
    index = pa.table(
        {
            "item_idx": pa.array(np.arange(1, n + 1), pa.int32()),
            "item_id": ids,
            "n_interactions": pa.array(np.full(n, 5), pa.int32()),
        }
    )
    i, j = np.triu_indices(n, 1)
    same = group[i] == group[j]
    i, j = i[same] + 1, j[same] + 1
    count = rng.integers(1, 6, size=len(i))
    cooccurrence = pa.table(
        {
            "i": pa.array(i, pa.int32()),
            "j": pa.array(j, pa.int32()),
            "count": pa.array(count, pa.int32()),
            "s": pa.array(np.log1p(count) / np.log1p(count.max()), pa.float32()),
        }
    )
    return embeddings, index, cooccurrence


def _pull_together(za, zb, a, b, temperature):
    """A deliberately collapsing objective: every item is every other's positive."""
    z = torch.cat([za, zb])
    return -(z @ z.T).mean()


# -- spread and the guard -------------------------------------------------------------------------
def test_spread_of_orthogonal_and_of_identical_vectors():
    orthogonal = spread(np.eye(8))
    assert orthogonal.mean_cosine == pytest.approx(0.0, abs=1e-12)
    assert orthogonal.effective_rank == pytest.approx(8.0)
    same = spread(np.tile([[1.0, 2.0, 3.0]], (10, 1)))
    assert same.mean_cosine == pytest.approx(1.0)
    assert same.effective_rank == pytest.approx(1.0)


def test_spread_matches_the_pairwise_definition():
    x = np.random.default_rng(1).normal(size=(30, 5))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = u @ u.T
    expected = (cos.sum() - 30) / (30 * 29)
    sigma = np.linalg.svd(u, compute_uv=False)
    p = sigma / sigma.sum()
    got = spread(x)
    assert got.mean_cosine == pytest.approx(expected)
    assert got.effective_rank == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_guard_refuses_a_collapsed_space_and_names_the_settings():
    raw = spread(np.random.default_rng(0).normal(size=(50, 16)))
    collapsed = spread(np.ones((50, 16)) + 1e-3 * np.random.default_rng(1).normal(size=(50, 16)))
    with pytest.raises(CollapsedSpaceError, match=r"max_mean_cosine.*min_rank_share"):
        check_spread(raw, collapsed, CFG)
    check_spread(raw, raw, CFG)  # the raw space itself passes


def test_calibrated_vectors_keep_their_spread_and_a_collapsing_objective_trips_the_guard():
    data = calibration_inputs(*_catalog())
    result = calibrate(data, CFG, stored=None, inputs=HASHES)
    s = result.summary
    assert s["decision"] == "trained"
    assert s["calibrated_mean_cosine"] < 0.4
    assert s["calibrated_effective_rank"] > 0.5 * min(s["raw_effective_rank"], CFG.hidden)
    with pytest.raises(CollapsedSpaceError, match="collapsed"):
        calibrate(
            data,
            CFG.model_copy(update={"alpha": 0.0, "lr": 1e-2}),
            stored=None,
            inputs=HASHES,
            alignment=_pull_together,
        )


def test_calibration_follows_cooccurrence():
    """Items of one behavioural group end up closer than in the raw space."""
    embeddings, index, cooccurrence = _catalog()
    data = calibration_inputs(embeddings, index, cooccurrence)
    result = calibrate(data, CFG, stored=None, inputs=HASHES)
    group = np.arange(40) % 4
    same = group[:, None] == group[None, :]
    off = ~np.eye(40, dtype=bool)

    def gap(x):
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        cos = u @ u.T
        return cos[same & off].mean() - cos[~same].mean()

    assert gap(to_matrix(result.table["vector"])) > gap(data.vectors) + 0.2


def test_training_is_deterministic_for_a_seed_and_vectors_are_unit_length():
    data = calibration_inputs(*_catalog())
    first = calibrate(data, CFG, stored=None, inputs=HASHES)
    second = calibrate(data, CFG, stored=None, inputs=HASHES)
    assert first.table.equals(second.table)
    vectors = to_matrix(first.table["vector"])
    assert vectors.shape == (40, CFG.hidden)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    torch.set_num_threads(2)
    threaded = calibrate(
        data, CFG.model_copy(update={"cpu_threads": 1}), stored=None, inputs=HASHES
    )
    assert threaded.table.equals(first.table)
    assert torch.get_num_threads() == 2  # restored after the job
    other = calibrate(data, CFG.model_copy(update={"seed": 1}), stored=None, inputs=HASHES)
    assert not first.table.equals(other.table)
    assert first.table["version"][0] != other.table["version"][0]


# -- inputs ---------------------------------------------------------------------------------------
def test_items_without_interactions_are_calibrated_and_pairs_without_vectors_counted():
    embeddings, index, cooccurrence = _catalog()
    extra = pa.table(
        {
            "item_id": ["zz-new"],
            "basis_id": ["b1"],
            "vector": to_fixed_list(np.ones((1, 12), dtype=np.float32)),
        }
    )
    no_vector = index.slice(0, 39)  # m039 keeps its pairs in the table but has no vector
    embeddings = pa.concat_tables(
        [embeddings.filter(pa.array([k != 39 for k in range(40)])), extra]
    )
    data = calibration_inputs(embeddings, index, cooccurrence)
    assert "zz-new" in data.item_ids
    assert "m039" not in data.item_ids
    assert data.pairs_without_vectors == 9  # m039's group has 10 items
    assert no_vector.num_rows == 39
    table = calibrate(data, CFG, stored=None, inputs=HASHES).table
    assert sorted(table["item_id"].to_pylist()) == sorted(data.item_ids)


def test_bad_inputs_name_the_table():
    embeddings, index, cooccurrence = _catalog()
    with pytest.raises(ValueError, match=r"item_embeddings.item_id holds duplicates"):
        calibration_inputs(pa.concat_tables([embeddings, embeddings]), index, cooccurrence)
    with pytest.raises(ValueError, match="cooccurrence holds no pair"):
        calibration_inputs(embeddings, index, cooccurrence.slice(0, 0))
    with pytest.raises(ValueError, match=r"cooccurrence.i/j"):
        calibration_inputs(embeddings, index.slice(0, 10), cooccurrence)
    nan = np.full((40, 12), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match=r"item_embeddings.vector holds non-finite"):
        calibration_inputs(
            embeddings.set_column(2, "vector", to_fixed_list(nan)), index, cooccurrence
        )


# -- drift and the decision ------------------------------------------------------------------------
def _sketch(n_pairs: int, size: int, changed: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = item_hashes([f"a{k}" for k in range(n_pairs)])
    b = item_hashes([f"b{k}" for k in range(n_pairs)])
    count = rng.integers(1, 9, size=n_pairs)
    count[:changed] += 1
    return sketch_pairs(a, b, count, size=size)


def test_drift_is_exact_on_small_tables_and_symmetric_in_pair_order():
    base = _sketch(1000, 4096)
    assert base.exact
    assert base.drift(base) == 0.0
    assert base.drift(_sketch(1000, 4096, changed=100)) == pytest.approx(0.1)
    a, b = item_hashes(["x", "y"]), item_hashes(["y", "x"])
    assert (
        sketch_pairs(a, b, np.array([1, 1])).keys[0] == sketch_pairs(b, a, np.array([1, 1])).keys[0]
    )
    grown = sketch_pairs(
        item_hashes([f"a{k}" for k in range(1100)]),
        item_hashes([f"b{k}" for k in range(1100)]),
        np.concatenate([np.random.default_rng(0).integers(1, 9, size=1000), np.ones(100)]),
        size=4096,
    )
    assert base.drift(grown) == pytest.approx(0.1)  # 100 pairs added to 1000
    tripled = sketch_pairs(
        item_hashes([f"a{k}" for k in range(3000)]),
        item_hashes([f"b{k}" for k in range(3000)]),
        np.concatenate([np.random.default_rng(0).integers(1, 9, size=1000), np.ones(2000)]),
        size=4096,
    )
    # 2,000 pairs added to 1,000: above 1, so a max_drift of 1 still retrains (a refresh of a
    # long log after an `as_of` run did); `inf` never does.
    assert base.drift(tripled) == pytest.approx(2.0)
    assert CalibrationConfig(max_drift=float("inf")).max_drift > base.drift(tripled)


def test_drift_on_a_sampled_sketch_estimates_the_share():
    base = _sketch(20_000, 2048)
    assert not base.exact
    estimate = base.drift(_sketch(20_000, 2048, changed=4000))  # rows are in random hash order
    assert estimate == pytest.approx(0.2, abs=0.04)


def test_decide_trains_or_projects():
    data = calibration_inputs(*_catalog())
    adapter = calibrate(data, CFG, stored=None, inputs=HASHES).adapter
    assert decide(data, CFG, None, retrain=False)[0] == "train"
    assert decide(data, CFG, adapter, retrain=True)[0] == "train"
    action, _, drift = decide(data, CFG, adapter, retrain=False)
    assert (action, drift) == ("project", 0.0)
    other_space = calibration_inputs(*_catalog(basis="b2"))
    assert decide(other_space, CFG, adapter, retrain=False)[1].startswith("the raw item space")
    moved = calibration_inputs(*_catalog(seed=5))  # other counts on most pairs
    action, why, drift = decide(moved, CFG, adapter, retrain=False)
    assert action == "train"
    assert drift > CFG.max_drift
    assert "max_drift" in why


def test_new_items_are_projected_with_the_stored_adapter():
    embeddings, index, cooccurrence = _catalog()
    first = calibrate(
        calibration_inputs(embeddings, index, cooccurrence), CFG, stored=None, inputs=HASHES
    )
    new = np.random.default_rng(9).normal(size=(3, 12)).astype(np.float32)
    grown = pa.concat_tables(
        [
            embeddings,
            pa.table(
                {
                    "item_id": ["n1", "n2", "n3"],
                    "basis_id": ["b1"] * 3,
                    "vector": to_fixed_list(new),
                }
            ),
        ]
    )
    second = calibrate(
        calibration_inputs(grown, index, cooccurrence),
        CFG,
        stored=first.adapter,
        inputs={**HASHES, "item_embeddings": "e2"},
    )
    assert second.adapter is None
    assert second.summary["decision"] == "projected"
    assert second.summary["drift"] == 0.0
    old = dict(
        zip(first.table["item_id"].to_pylist(), to_matrix(first.table["vector"]), strict=True)
    )
    now = dict(
        zip(second.table["item_id"].to_pylist(), to_matrix(second.table["vector"]), strict=True)
    )
    for item_id, vector in old.items():
        np.testing.assert_array_equal(now[item_id], vector)
    expected = project(new, first.adapter.weights, CFG.hidden, torch.device("cpu"))
    np.testing.assert_allclose(np.stack([now["n1"], now["n2"], now["n3"]]), expected, atol=1e-6)
    assert set(second.table["version"].to_pylist()) == {first.summary["version"]}


# -- storage -------------------------------------------------------------------------------------
def test_adapter_files_round_trip_and_detect_a_mismatch(tmp_path):
    adapter = calibrate(calibration_inputs(*_catalog()), CFG, stored=None, inputs=HASHES).adapter
    files = AdapterFiles(Store(tmp_path), "abc")
    assert files.read() is None
    files.write(adapter.tensors(), adapter.info)
    back = Adapter.from_stored(*files.read())
    assert back.info == adapter.info
    for key, value in adapter.weights.items():
        np.testing.assert_array_equal(back.weights[key], value)
    np.testing.assert_array_equal(back.sketch.keys, adapter.sketch.keys)
    files.manifest_path.write_text(
        files.manifest_path.read_text().replace(adapter.info["version"], "x")
    )
    with pytest.raises(AdapterFileError, match=r"disagree.*retrain"):
        files.read()
    files.path.write_bytes(b"truncated")
    with pytest.raises(AdapterFileError, match="cannot read"):
        files.read()


# -- the task -------------------------------------------------------------------------------------
def _store_with_tables(root, **catalog_args) -> Store:
    store = Store(root)
    embeddings, index, cooccurrence = _catalog(**catalog_args)
    store.write_table(
        "item_embeddings",
        embeddings.append_column("content_hash", pa.array(["h"] * embeddings.num_rows))
        .append_column("model_id", pa.array(["m"] * embeddings.num_rows))
        .append_column("prompt_version", pa.array(["p"] * embeddings.num_rows))
        .append_column("settings_id", pa.array(["s"] * embeddings.num_rows)),
    )
    store.write_table("item_index", index)
    store.write_table("cooccurrence", cooccurrence)
    return store


def test_task_trains_then_skips_then_projects_new_items_then_retrains_on_request(tmp_path):
    store = _store_with_tables(tmp_path)
    settings = Settings(storage=StorageConfig(root=tmp_path), calibration=CFG)
    with disable_run_logger():
        first = calibrate_items.fn(settings)
        assert first["decision"] == "trained"
        assert first["skipped"] is False
        assert calibrate_items.fn(settings)["skipped"] is True
        table = store.read_table("calibrated_embeddings")
        assert table.num_rows == 40
        assert table.schema.field("vector").type.list_size == CFG.hidden

        embeddings = store.read_table("item_embeddings")
        new = embeddings.slice(0, 2).set_column(
            0, embeddings.schema.field("item_id"), pa.array(["new1", "new2"])
        )
        store.write_table("item_embeddings", pa.concat_tables([embeddings, new]))
        second = calibrate_items.fn(settings)
        assert second["decision"] == "projected"
        assert second["drift"] == 0.0
        assert store.read_table("calibrated_embeddings").num_rows == 42

        assert calibrate_items.fn(settings, force=True)["decision"] == "trained"
        retrain = settings.model_copy(
            update={"calibration": CFG.model_copy(update={"retrain": True})}
        )
        assert calibrate_items.fn(retrain)["decision"] == "trained"


def test_task_retrains_when_the_adapter_is_gone_or_settings_change(tmp_path):
    _store_with_tables(tmp_path)
    settings = Settings(storage=StorageConfig(root=tmp_path), calibration=CFG)
    with disable_run_logger():
        calibrate_items.fn(settings)
        for path in (tmp_path / "models" / "calibration").iterdir():
            path.unlink()
        assert calibrate_items.fn(settings)["decision"] == "trained"
        wider = settings.model_copy(update={"calibration": CFG.model_copy(update={"hidden": 32})})
        summary = calibrate_items.fn(wider)
        assert summary["decision"] == "trained"
        assert summary["why"].startswith("no stored adapter")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_same_job_runs_on_cuda_and_agrees_with_the_cpu():
    data = calibration_inputs(*_catalog())
    gpu = calibrate(data, CFG.model_copy(update={"device": "cuda"}), stored=None, inputs=HASHES)
    assert gpu.summary["device"].startswith("cuda")
    cpu_projection = project(data.vectors, gpu.adapter.weights, CFG.hidden, torch.device("cpu"))
    np.testing.assert_allclose(to_matrix(gpu.table["vector"]), cpu_projection, atol=1e-4)
