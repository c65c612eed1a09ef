"""FAISS indexes: exact neighbours on a small case, ids through a save and a load, the checks that
keep a damaged index from being searched, and the `index` task's caching (through `.fn()`)."""

from __future__ import annotations

import hashlib
import json
import logging

import faiss
import numpy as np
import pyarrow as pa
import pytest
from prefect.logging import disable_run_logger

import genair_core.item_space.index as core_index
import tasks.index as index_task
from genair_core.config import IndexConfig
from genair_core.item_space.index import (
    build_index,
    build_item_index,
    faiss_ids,
    gpu_count,
    neighbours,
    normalized,
    prepare_for_search,
    search,
)
from genair_core.tables import ITEM_INDEX, item_embeddings_schema, to_fixed_list
from storage.index import IndexFileError, IndexFiles
from storage.store import Store
from tasks.settings import load_settings

DIM = 8


def vectors_table(item_ids: list[str], matrix: np.ndarray) -> pa.Table:
    n = len(item_ids)
    columns = {
        "item_id": item_ids,
        "content_hash": ["h"] * n,
        "model_id": ["m"] * n,
        "prompt_version": ["p"] * n,
        "settings_id": ["s"] * n,
        "basis_id": ["b1"] * n,
        "vector": to_fixed_list(matrix),
    }
    return pa.table(columns, schema=item_embeddings_schema(matrix.shape[1]))


def item_index_table(item_ids: list[str]) -> pa.Table:
    n = len(item_ids)
    return pa.table(
        {"item_idx": range(1, n + 1), "item_id": item_ids, "n_interactions": [5] * n},
        schema=ITEM_INDEX,
    )


def cosine_top_k(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every cosine computed, sorted."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qn @ xn.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


@pytest.mark.parametrize("exact_max_items", [1000, 0], ids=["flat", "hnsw"])
def test_the_index_returns_the_exact_neighbours_on_a_small_case(exact_max_items):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, DIM)).astype(np.float32) * rng.uniform(0.5, 3, (60, 1))
    q = rng.normal(size=(5, DIM)).astype(np.float32)
    ids = np.arange(100, 160, dtype=np.int64)
    cfg = IndexConfig(exact_max_items=exact_max_items, ef_search=64)  # ef ≥ N: HNSW is exact
    index = build_index(x, ids, cfg)
    assert core_index.index_params(index)["type"] == (
        "IndexFlatIP" if exact_max_items else "IndexHNSWFlat"
    )
    scores, found = search(prepare_for_search(index, cfg), q, k=5)
    want_scores, want_rows = cosine_top_k(x, q, 5)
    np.testing.assert_array_equal(found, ids[want_rows])
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_faiss_ids_are_item_indices_and_new_items_follow_the_largest():
    item_index = item_index_table(["a", "b", "c"])
    ids = faiss_ids(pa.array(["c", "z", "a", "y"]), item_index)
    assert ids.tolist() == [3, 5, 1, 4]  # y, z: after item_idx 3, in item_id order
    with pytest.raises(ValueError, match=r"item_id repeats.*'a'"):
        faiss_ids(pa.array(["a", "b", "a"]), item_index)


def test_bad_vectors_get_an_error_naming_the_column_and_rows():
    x = np.ones((4, DIM), dtype=np.float32)
    x[2] = 0
    table = vectors_table(list("abcd"), x)
    with pytest.raises(ValueError, match=r"item_embeddings\.vector: 1 rows are zero.*\[2\]"):
        build_item_index(table, item_index_table(list("abcd")), IndexConfig(), "item_embeddings")
    x[2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        normalized(x, "item_embeddings.vector")
    with pytest.raises(ValueError, match="item_embeddings has no column 'vector'"):
        build_item_index(
            table.drop(["vector"]), item_index_table([]), IndexConfig(), "item_embeddings"
        )


def _built(tmp_path, n=30, kcore=20):
    rng = np.random.default_rng(1)
    items = [f"i{n:03d}" for n in range(n)]
    table = vectors_table(items, rng.normal(size=(n, DIM)).astype(np.float32))
    built = build_item_index(
        table, item_index_table(items[:kcore]), IndexConfig(), "item_embeddings"
    )
    files = IndexFiles(Store(tmp_path), "raw")
    files.write(
        built.index,
        built.ids,
        vectors_sha256="sha-1",
        versions=built.versions,
        params=built.params,
        build_seconds=built.seconds,
        fingerprint="fp",
    )
    return table, built, files


def test_ids_survive_a_save_and_a_load(tmp_path):
    table, built, files = _built(tmp_path)
    stored = files.load("sha-1")
    assert stored.ids.equals(built.ids)
    assert (stored.manifest["count"], stored.manifest["dimension"]) == (30, DIM)
    assert stored.manifest["index"] == {"type": "IndexFlatIP", "metric": "inner_product"}
    assert stored.manifest["vectors"] == {
        "table": "item_embeddings",
        "sha256": "sha-1",
        "versions": ["b1"],
    }
    id_of = dict(
        zip(stored.ids["item_id"].to_pylist(), stored.ids["faiss_id"].to_pylist(), strict=True)
    )
    assert (id_of["i000"], id_of["i019"], id_of["i020"]) == (1, 20, 21)
    # Each item's vector, searched in the loaded index, comes back under its own item index.
    x = normalized(np.stack(table["vector"].to_numpy(zero_copy_only=False)))
    _, found = search(stored.index, x, k=1)
    assert found[:, 0].tolist() == [id_of[i] for i in table["item_id"].to_pylist()]
    # ... and the neighbours read back as item_ids, the item itself left out.
    hits = neighbours(stored.index, stored.ids, "i025", k=3)
    assert len(hits) == 3
    assert "i025" not in [h for h, _ in hits]
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)


def test_a_truncated_index_file_is_detected(tmp_path):
    _, _, files = _built(tmp_path)
    assert files.check() is None
    data = files.index_path.read_bytes()
    files.index_path.write_bytes(data[: len(data) // 2])
    assert "not the file its manifest describes" in files.check()
    with pytest.raises(IndexFileError):
        files.load()


def test_an_index_whose_count_does_not_match_its_manifest_is_detected(tmp_path):
    _, _, files = _built(tmp_path)
    # Another, valid index put in its place with the manifest's file hash updated: only the
    # count gives it away.
    other = build_index(np.ones((3, DIM), np.float32), np.arange(3), IndexConfig())
    faiss.write_index(other, str(files.index_path))
    manifest = json.loads(files.manifest_path.read_text())
    manifest["files"]["index"] = hashlib.sha256(files.index_path.read_bytes()).hexdigest()
    files.manifest_path.write_text(json.dumps(manifest))
    assert files.check() == f"raw index: {files.index_path} holds count 3, its manifest says 30"


def test_a_stale_vector_version_is_refused_on_load(tmp_path):
    _, _, files = _built(tmp_path)
    with pytest.raises(IndexFileError, match="built from another version of item_embeddings"):
        files.load("sha-2")


@pytest.mark.skipif(gpu_count() == 0, reason="FAISS sees no GPU (faiss-cpu)")
def test_an_exact_index_is_searched_on_the_gpu():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, DIM)).astype(np.float32)
    index = build_index(x, np.arange(100), IndexConfig())
    on_gpu = prepare_for_search(index, IndexConfig())
    assert on_gpu is not index
    np.testing.assert_array_equal(search(on_gpu, x[:5], 3)[1], search(index, x[:5], 3)[1])


def test_without_a_gpu_the_cpu_index_is_searched(monkeypatch):
    index = build_index(np.eye(DIM, dtype=np.float32), np.arange(DIM), IndexConfig())
    monkeypatch.setattr(core_index, "gpu_count", lambda: 0)
    assert prepare_for_search(index, IndexConfig()) is index
    moved = []
    monkeypatch.setattr(core_index, "gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: "res", raising=False)
    monkeypatch.setattr(
        faiss, "index_cpu_to_gpu", lambda res, dev, i: moved.append(i) or "gpu", raising=False
    )
    assert prepare_for_search(index, IndexConfig(gpu=False)) is index
    assert prepare_for_search(index, IndexConfig()) == "gpu"
    assert moved == [index]


# -- the task -------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path, monkeypatch):
    config = tmp_path / "genair.toml"
    config.write_text('[storage]\nroot = "data"\n')
    monkeypatch.setattr(index_task, "get_run_logger", lambda: logging.getLogger("genair.index"))
    with disable_run_logger():
        yield load_settings(config)


def write_vectors(store: Store, n: int, kcore: int) -> pa.Table:
    rng = np.random.default_rng(2)
    items = [f"i{n:03d}" for n in range(n)]
    table = vectors_table(items, rng.normal(size=(n, DIM)).astype(np.float32))
    store.write_table("item_embeddings", table)
    store.write_table("item_index", item_index_table(items[:kcore]))
    return table


def test_the_task_builds_once_and_rebuilds_only_when_needed(settings, caplog):
    store = Store(settings.storage.root)
    write_vectors(store, 20, 15)
    summary = index_task.index_vector_space.fn(settings, "raw")
    assert (summary["skipped"], summary["count"], summary["type"]) == (False, 20, "IndexFlatIP")
    files = IndexFiles(store, "raw")
    built_at = files.manifest_path.read_bytes()

    # A second run with unchanged vectors rebuilds nothing; a search-time setting changes nothing.
    assert index_task.index_vector_space.fn(settings, "raw")["skipped"] is True
    searched = settings.model_copy(update={"index": IndexConfig(ef_search=200, gpu=False)})
    assert index_task.index_vector_space.fn(searched, "raw")["skipped"] is True
    assert files.manifest_path.read_bytes() == built_at

    # A truncated index file is detected, logged and rebuilt.
    files.index_path.write_bytes(files.index_path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="genair.index"):
        assert index_task.index_vector_space.fn(settings, "raw")["skipped"] is False
    assert "not the file its manifest describes" in caplog.text
    assert files.check() is None

    # A build setting rebuilds: above exact_max_items it becomes HNSW.
    hnsw = settings.model_copy(update={"index": IndexConfig(exact_max_items=10)})
    assert index_task.index_vector_space.fn(hnsw, "raw")["type"] == "IndexHNSWFlat"


def test_new_items_appear_in_the_index(settings):
    store = Store(settings.storage.root)
    write_vectors(store, 20, 15)
    index_task.index_vector_space.fn(settings, "raw")
    table = write_vectors(store, 25, 15)  # five new items, outside the k-core
    assert index_task.index_vector_space.fn(settings, "raw")["skipped"] is False
    stored = IndexFiles(store, "raw").load(store.table_info("item_embeddings").sha256)
    assert sorted(stored.ids["item_id"].to_pylist()) == sorted(table["item_id"].to_pylist())
    new = stored.ids.filter(pa.compute.greater(stored.ids["faiss_id"], 15))
    assert new["item_id"].to_pylist() == [f"i{n:03d}" for n in range(15, 25)]
    # A new item is found as its own nearest neighbour.
    x = normalized(np.stack(table["vector"].to_numpy(zero_copy_only=False)))
    _, found = search(stored.index, x[24:], k=1)
    assert found[0, 0] == new["faiss_id"].to_pylist()[-1]


def test_the_task_skips_a_space_without_vectors(settings):
    assert index_task.index_vector_space.fn(settings, "calibrated") == {
        "skipped": True,
        "reason": "no calibrated_embeddings table",
    }


@pytest.mark.usefixtures("prefect_harness")
def test_the_pipeline_runs_the_index_stage_for_both_spaces(tmp_path):
    from flows.pipeline import run_pipeline

    config = tmp_path / "genair.toml"
    config.write_text('[storage]\nroot = "data"\n')
    write_vectors(Store(tmp_path / "data"), 20, 15)
    summary = run_pipeline(str(config), start="index", until="index")
    assert summary["index-calibrated"]["skipped"] is True  # no calibrated_embeddings yet
    assert (summary["index-raw"]["skipped"], summary["index-raw"]["count"]) == (False, 20)
    assert run_pipeline(str(config), start="index", until="index")["index-raw"]["skipped"]
