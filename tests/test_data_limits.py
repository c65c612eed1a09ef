"""A small catalog runs or says what to change: the settings a dataset can be too small for are
checked as soon as the split tables exist, before any archetype is generated."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from scripted_pipeline import DIM, TitleEngines, scripted_pipeline, write_catalog_dataset
from small_dataset import files_config

from flows.cli import main as genair
from genair_core.config import PoolingConfig
from genair_core.data.limits import (
    check_negatives,
    check_pca_dims,
    check_top_k,
    fewest_unseen_items,
)
from genair_core.data.sequences import UserSequences
from storage.store import Store
from tasks.settings import ConfigError

ITEMS = 61  # the catalog of the issue: every stage ran, then eval-negatives failed at 100


def sequences(histories: list[list[int]], n_items: int) -> UserSequences:
    items = np.array([i for history in histories for i in history], dtype=np.int64)
    ptr = np.cumsum([0, *map(len, histories)]).astype(np.int64)
    n = np.array([len(h) - 2 for h in histories], dtype=np.int64)
    users = np.arange(len(histories), dtype=np.int64)
    return UserSequences(n_items, users, ptr, items, n, np.ones(len(histories), dtype=bool))


def test_the_fewest_unseen_items_count_each_item_once():
    data = sequences([[1, 2, 3, 2, 1], [4, 5, 6, 7, 8, 9]], n_items=10)
    assert fewest_unseen_items(data) == (1, 4)  # user 0 repeats items: 7 unseen


def test_too_many_negatives_name_the_setting_the_user_and_a_value_that_works():
    data = sequences([[1, 2, 3, 2, 1], [4, 5, 6, 7, 8, 9]], n_items=10)
    users = {0: "ann", 1: "bob"}
    assert check_negatives(4, data, users) == []
    [problem] = check_negatives(5, data, users)
    assert problem.startswith("recommenders.evaluation.negatives is 5, but user 'bob' ")
    assert "set recommenders.evaluation.negatives to 4 or less" in problem


def test_pca_dims_adapt_with_a_warning_or_stop_for_the_half_variants():
    config = PoolingConfig(input_dims=384, gen_dims=20)
    assert check_pca_dims(config, 1000, ["id", "gen-only"]).warnings == ()
    adapted = check_pca_dims(config, ITEMS, ["id", "genair"])
    assert adapted.problems == ()
    [warning] = adapted.warnings
    assert warning.startswith("pooling.input_dims is 384, but the 61 items' vectors span at most")
    assert "the PCA keeps at most 60" in warning
    assert "no run key changes" in warning
    stopped = check_pca_dims(config, ITEMS, ["id", "input-only"])
    assert stopped.warnings == ()
    assert stopped.problems == (
        "pooling.input_dims is 384, but the 61 items' vectors span at most 60 directions and "
        "input-only split the item vector at pooling.input_dims: set pooling.input_dims to 60 "
        "or less",
    )


def test_top_k_lists_longer_than_the_catalog_warn_naming_the_setting():
    assert check_top_k(50, 20, 51) == []
    assert check_top_k(51, 51, 51) == [
        "similar_items.k is 51, but the catalog has 51 items: its lists hold at most 50"
    ]
    assert check_top_k(52, 20, 51) == [
        "recommend.k is 52, but the catalog has 51 items: its lists hold at most 51"
    ]


@pytest.fixture
def small_catalog(tmp_path: Path) -> Path:
    """61 items, 40 users of 6-10 interactions, the default negatives and PCA dims, and lists
    longer than the catalog."""
    write_catalog_dataset(tmp_path, items=ITEMS, users=40)
    config = tmp_path / "genair.toml"
    config.write_text(
        files_config(
            k_core=2,
            extra=f"""\
            [llm]
            model = "{tmp_path / "scripted-model"}"
            batch_size = 16
            [calibration]
            pairs_per_epoch = 1024
            epochs = 2
            hidden = 8
            max_mean_cosine = 0.95
            [recommenders]
            backbones = ["sasrec"]
            variants = ["id", "genair"]
            seeds = [1]
            workers = 1
            [recommenders.model]
            hidden = 8
            max_len = 8
            [recommenders.training]
            max_epochs = 1
            [recommend]
            k = 70
            """,
        )
    )
    return config


@pytest.mark.usefixtures("prefect_harness")
def test_a_small_catalog_stops_before_the_archetypes_with_one_line(small_catalog, capsys):
    assert genair(["--config", str(small_catalog), "run"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("genair: recommenders.evaluation.negatives is 100, but user ")
    assert line.endswith("or less (metrics of other sizes are not comparable)")
    # Stopped after the split, before the archetypes: the scripted model folder is no model a
    # real engine could load, so reaching that stage would have failed with exit status 1.
    assert Store(small_catalog.parent / "data").table_info("sequences").rows > 0


@pytest.mark.usefixtures("prefect_harness")
def test_a_small_catalog_runs_with_the_value_it_was_told(small_catalog, caplog):
    engines = TitleEngines()
    with pytest.raises(ConfigError, match=r"set recommenders\.evaluation\.negatives to") as stop:
        scripted_pipeline(str(small_catalog), engines)
    assert engines.titles == []  # no archetype was generated
    told = int(re.search(r"negatives to (\d+) or less", str(stop.value)).group(1))
    with small_catalog.open("a") as config:
        config.write(f"[recommenders.evaluation]\nnegatives = {told}\n")
    with caplog.at_level(logging.WARNING):
        summary = scripted_pipeline(str(small_catalog), engines)
    assert summary["pooling"]["dims"] == 2 * min(ITEMS - 1, DIM)  # DIM: the engine's hidden size
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("pooling.input_dims is 384, but the 61 items'") for w in warnings)
    assert any(w.startswith("pooling.gen_dims is 384, but the 61 items'") for w in warnings)
    assert "recommend.k is 70, but the catalog has 61 items: its lists hold at most 61" in warnings
    assert summary["negatives"]["per_user"] == told
    results = (small_catalog.parent / "data/reports/recommenders.md").read_text()
    assert "sasrec" in results
