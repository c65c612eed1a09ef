"""The similar-items stage: every item's top-K neighbours from the FAISS index (itself excluded,
ties by id), one Delta version per run, a new item in the export after a refresh, nothing
committed when the index did not change, and `genair similar` reading the export when it is
current."""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow as pa
import pytest
from scripted_pipeline import TitleEngines, add_item, scripted_pipeline, scripted_refresh
from scripted_pipeline import write_catalog_dataset as catalog

from flows.cli import main
from flows.params import RefreshParams
from flows.similar import similar_items
from genair_core.config import IndexConfig
from genair_core.item_space.index import IDS, all_neighbours, build_index, neighbours
from storage import delta
from storage.index import IndexFiles
from storage.runs import read_runs
from storage.store import Store
from tasks.settings import load_settings

K = 5


def small_index(vectors: list[list[float]], names: list[str]):
    ids = np.arange(1, len(names) + 1, dtype=np.int64) * 10
    index = build_index(np.array(vectors, dtype=np.float32), ids, IndexConfig())
    return index, pa.table({"faiss_id": ids, "item_id": names}, schema=IDS)


def test_every_item_gets_its_k_nearest_others_ranked_by_score_then_id():
    # b and c are the same direction: they tie as the nearest of a and of d.
    index, ids = small_index(
        [[1.0, 0.2, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.1, 0.0, 1.0]],
        ["a", "c", "b", "d"],
    )
    table = all_neighbours(index, ids, k=2, space="raw")
    assert table.column_names == ["item_id", "rank", "neighbour_id", "score", "space"]
    rows = [(r["item_id"], r["rank"], r["neighbour_id"]) for r in table.to_pylist()]
    assert rows == [
        ("a", 1, "b"),
        ("a", 2, "c"),  # the tie with b, by id
        ("b", 1, "c"),
        ("b", 2, "a"),
        ("c", 1, "b"),
        ("c", 2, "a"),
        ("d", 1, "b"),
        ("d", 2, "c"),
    ]
    assert table["score"].to_pylist()[2] == pytest.approx(1.0)  # b and c: the same direction
    assert set(table["space"].to_pylist()) == {"raw"}
    for name in ("a", "d"):  # the single-item lookup agrees
        mine = [r["neighbour_id"] for r in table.to_pylist() if r["item_id"] == name]
        assert {n for n, _ in neighbours(index, ids, name, 2)} == set(mine)


def test_an_index_of_k_items_or_fewer_gives_each_item_the_others():
    index, ids = small_index([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], ["x", "y", "z"])
    table = all_neighbours(index, ids, k=20, space="calibrated")
    assert table.num_rows == 6
    assert all(r["item_id"] != r["neighbour_id"] for r in table.to_pylist())
    with pytest.raises(ValueError, match="k must be at least 1"):
        all_neighbours(index, ids, k=0, space="raw")


@pytest.fixture
def config(tmp_path):
    path = catalog(tmp_path)
    path.write_text(path.read_text() + f"\n[similar_items]\nk = {K}\nkeep_versions = 2\n")
    return path


def exported_items(store: Store, version: int | None = None) -> set[str]:
    return set(delta.read_version(store, "similar_items", version)["item_id"].to_pylist())


@pytest.mark.usefixtures("prefect_harness")
def test_the_export_follows_the_index_and_takes_in_a_new_item_after_a_refresh(config, capsys):
    summary = scripted_pipeline(str(config), TitleEngines(), until="similar-items")
    assert summary["similar-items"]["skipped"] is False
    store = Store(config.parent / "data")
    (first,) = delta.commits(store, "similar_items")
    indexed = IndexFiles(store, "calibrated").load()
    assert first["version"] == 0
    assert first["metadata"]["index_sha256"] == indexed.manifest["files"]["index"]
    assert first["metadata"]["run_id"] in {r.run_id for r in read_runs(store)}
    table = delta.read_version(store, "similar_items")
    items = indexed.index.ntotal
    assert table.num_rows == items * K == first["metadata"]["rows"]
    assert set(table["rank"].to_pylist()) == set(range(1, K + 1))

    settings = load_settings(config)
    from_export = similar_items(settings, "m01", k=3)
    from_index = similar_items(settings, "m01", k=K + 1)  # more than the export holds
    assert from_export.source == "similar_items version 0"
    assert from_index.source == "index"
    assert [r.item_id for r in from_export.items] == [r.item_id for r in from_index.items][:3]
    assert [r.score for r in from_export.items] == pytest.approx(
        [r.score for r in from_index.items][:3], abs=1e-6
    )
    assert similar_items(settings, "m01", k=3, space="raw").source == "index"

    add_item(config, "m99", "Movie New")
    summary = scripted_refresh(
        RefreshParams(config_path=str(config), recommenders="never"), TitleEngines()
    )
    assert summary["similar-items"]["version"] == 1
    assert "m99" in exported_items(store)
    assert "m99" not in exported_items(store, 0)  # time travel: the night before
    assert similar_items(settings, "m99", k=2).source == "similar_items version 1"

    unchanged = scripted_refresh(
        RefreshParams(config_path=str(config), recommenders="never"), TitleEngines()
    )
    assert unchanged["similar-items"]["skipped"] is True
    assert delta.current_version(store, "similar_items") == 1

    query = "SELECT count(*) AS n, count(DISTINCT item_id) AS items FROM similar_items"
    assert main(["--config", str(config), "sql", query, "--csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row == {"n": str((items + 1) * K), "items": str(items + 1)}
