"""`genair similar` and its Python function over a small store: the neighbours with title, score
and archetype, an unknown item, an ambiguous title, and a missing index."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from prefect.logging import disable_run_logger

import tasks.index as index_task
from flows.cli import main
from flows.similar import similar_items
from genair_core.item_space.index import ItemLookupError
from genair_core.tables import ITEM_INDEX, ITEMS, item_embeddings_schema, to_fixed_list
from storage.store import Store
from tasks.settings import load_settings

TITLES = {
    "m1": "Star Wars (1977)",
    "m2": "Star Trek (1979)",
    "m3": "Toy Story (1995)",
    "m4": "Heat (1995)",
    "m5": "Toy Soldiers (1991)",
}
# m1 and m2 point the same way, m3 and m5 too; m4 is alone.
VECTORS = {
    "m1": [1.0, 0.1, 0.0],
    "m2": [0.9, 0.2, 0.0],
    "m3": [0.0, 1.0, 0.1],
    "m4": [0.0, 0.0, 1.0],
    "m5": [0.1, 0.9, 0.0],
}
PROVENANCE = {"content_hash": "h", "model_id": "m", "prompt_version": "p", "settings_id": "s"}


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "genair.toml"
    path.write_text('[storage]\nroot = "data"\n')
    settings = load_settings(path)
    store = Store(settings.storage.root)
    ids = list(TITLES)
    n = len(ids)
    items = [
        {
            "item_id": i,
            "content_hash": "h",
            "title": t,
            "source": "test",
            "line": n,
            "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
        }
        for n, (i, t) in enumerate(TITLES.items(), start=1)
    ]
    store.write_table("items", pa.Table.from_pylist(items, schema=ITEMS))
    store.write_table(
        "item_index",
        pa.table(
            {"item_idx": range(1, n + 1), "item_id": ids, "n_interactions": [5] * n},
            schema=ITEM_INDEX,
        ),
    )
    matrix = np.array(list(VECTORS.values()), dtype=np.float32)
    store.write_table(
        "item_embeddings",
        pa.table(
            {
                "item_id": ids,
                **{k: [v] * n for k, v in PROVENANCE.items()},
                "basis_id": ["b"] * n,
                "vector": to_fixed_list(matrix),
            },
            schema=item_embeddings_schema(3),
        ),
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    store.write_part(
        "archetypes",
        "m",
        "all",
        [
            {
                "item_id": item,
                **PROVENANCE,
                "engine": "scripted",
                "prompt": "p",
                "archetype": f"\n  Fans of {TITLES[item]}.\nSecond line.",
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "finish_reason": "stop",
                "truncated": False,
                "input_emb": [0.0, 0.0],
                "gen_emb": [0.0, 0.0],
                "created_at": now,
                "run_id": "r",
            }
            for item in ids
            if item != "m4"  # an item without an archetype
        ],
    )
    monkeypatch.setattr(index_task, "get_run_logger", lambda: logging.getLogger("genair.index"))
    with disable_run_logger():
        index_task.index_vector_space.fn(settings, "raw")
    return path


def test_similar_items_returns_the_neighbours_with_titles_and_archetypes(config):
    result = similar_items(load_settings(config), "toy story", k=2, space="raw")
    assert (result.item_id, result.title, result.stale) == ("m3", "Toy Story (1995)", None)
    assert [row.item_id for row in result.items] == ["m5", "m2"]  # cosines 0.99, 0.22
    assert result.items[0].title == "Toy Soldiers (1991)"
    assert result.items[0].archetype == "Fans of Toy Soldiers (1991)."
    want = np.dot(VECTORS["m3"], VECTORS["m5"]) / (
        np.linalg.norm(VECTORS["m3"]) * np.linalg.norm(VECTORS["m5"])
    )
    assert result.items[0].score == pytest.approx(want, abs=1e-6)
    scores = [row.score for row in result.items]
    assert scores == sorted(scores, reverse=True)


def test_the_command_prints_title_score_and_archetype(config, capsys):
    assert main(["--config", str(config), "similar", "m1", "--k", "4", "--space", "raw"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "items like m1 Star Wars (1977) (raw space)"
    assert out[1].split()[:3] == ["1", out[1].split()[1], "m2"]
    assert out[2].strip() == "Fans of Star Trek (1979)."
    assert any("m4  Heat (1995)" in line for line in out)  # no archetype line for m4


def test_an_unknown_item_gets_one_line_and_exit_2(config, capsys):
    assert main(["--config", str(config), "similar", "Casablanca", "--space", "raw"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["genair: no item has the id 'Casablanca' or a title containing it"]


def test_an_ambiguous_title_lists_the_matches_and_exits_2(config, capsys):
    assert main(["--config", str(config), "similar", "star", "--space", "raw"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "genair: 2 items match 'star'; give one of their ids"
    assert err[1:] == ["  m1\tStar Wars (1977)", "  m2\tStar Trek (1979)"]
    with pytest.raises(ItemLookupError) as caught:
        similar_items(load_settings(config), "toy", space="raw")
    assert [c[0] for c in caught.value.candidates] == ["m3", "m5"]


def test_a_missing_index_says_how_to_build_it(config, capsys):
    assert main(["--config", str(config), "similar", "m1"]) == 1  # no calibrated index
    err = capsys.readouterr().err
    assert "no calibrated index has been built" in err
    assert "genair run --until index" in err


def test_a_changed_vector_table_is_reported_as_stale(config):
    settings = load_settings(config)
    store = Store(settings.storage.root)
    vectors = store.read_table("item_embeddings")
    store.write_table("item_embeddings", vectors.slice(0, 4))
    result = similar_items(settings, "m1", k=2, space="raw")
    assert "built from an earlier item_embeddings" in result.stale
