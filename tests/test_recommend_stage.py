"""The `recommend` stage through the flows: every user's list in the Delta table
`recommendations`, new items served after a refresh without retraining, one version per change,
time travel, and `genair recommend`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from safetensors import safe_open
from scripted_pipeline import TitleEngines, add_item, scripted_pipeline, scripted_refresh
from scripted_pipeline import write_catalog_dataset as catalog

import tasks.recommend
from flows.cli import main as genair
from flows.params import RefreshParams
from storage import delta
from storage.checkpoints import save_weights
from storage.store import Store
from tasks.settings import ConfigError

pytestmark = pytest.mark.usefixtures("prefect_harness")
SERVED = "sasrec-genair-bce-s1"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """24 items, 40 users, one sasrec `id` and one `genair` run of one epoch."""
    path = catalog(tmp_path)
    path.write_text(path.read_text().replace('variants = ["id"]', 'variants = ["id", "genair"]'))
    return path


def lists(store: Store, version: int | None = None) -> dict[str, list[dict]]:
    rows = delta.read_version(store, "recommendations", version).sort_by(
        [("user_id", "ascending"), ("rank", "ascending")]
    )
    by_user: dict[str, list[dict]] = {}
    for row in rows.to_pylist():
        by_user.setdefault(row["user_id"], []).append(row)
    return by_user


def seen(store: Store) -> dict[str, set[str]]:
    log = store.read_table("interactions", columns=["user_id", "item_id"]).to_pylist()
    by_user: dict[str, set[str]] = {}
    for row in log:
        by_user.setdefault(row["user_id"], set()).add(row["item_id"])
    return by_user


def weights_hash(store: Store) -> str:
    return hashlib.sha256(store.best_weights_path(SERVED).read_bytes()).hexdigest()


def test_every_user_gets_a_list_of_unseen_items_and_new_items_come_in_after_a_refresh(
    config, capsys, monkeypatch
):
    artifacts = []
    real = tasks.recommend.create_markdown_artifact

    def kept(**kwargs: object) -> object:
        artifacts.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(tasks.recommend, "create_markdown_artifact", kept)
    summary = scripted_pipeline(str(config), TitleEngines())
    store = Store(config.parent / "data")
    assert summary["recommend"]["served_run"] == SERVED  # genair, not the `id` run
    assert summary["recommend"]["version"] == 0
    first = lists(store)
    history = seen(store)
    assert set(first) == set(history)  # every user with an interaction
    for user, rows in first.items():
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        assert not {r["item_id"] for r in rows} & history[user]
        assert len(rows) == 24 - len(history[user])  # k 50: every unseen item
        assert not any(r["is_new_item"] or r["is_popularity_list"] for r in rows)
        assert {r["model_run"] for r in rows} == {SERVED}
    trained = weights_hash(store)

    add_item(config, "m99", "Movie New")
    events = config.parent / "events.csv"
    events.write_text(events.read_text() + "u00,m99,999999\n")
    summary = scripted_refresh(
        RefreshParams(config_path=str(config), recommenders="never"), TitleEngines()
    )
    assert summary["recommend"]["version"] == 1
    assert summary["recommend"]["new_items"] == 1
    [first_export, second_export] = [a["markdown"] for a in artifacts]
    assert artifacts[1]["key"] == "genair-recommendations"
    assert f"- served run: `{SERVED}`" in second_export
    assert "- users: 40; rows: " in second_export
    assert "- lists holding a new item: 97.5%" in second_export  # all 40 lists but u00's
    assert "table version: 1" in second_export
    assert "- lists holding a new item: 0.0%" in first_export
    assert weights_hash(store) == trained  # nothing retrained, no parameter changed
    after = lists(store)
    new = [r for rows in after.values() for r in rows if r["item_id"] == "m99"]
    assert len(new) == len(after) - 1  # every list but that of u00, who has interacted with it
    assert all(r["is_new_item"] for r in new)
    assert "m99" not in {r["item_id"] for r in after["u00"]}
    assert lists(store, version=0) == first  # time travel

    assert genair(["--config", str(config), "recommend", "u01"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"u01: {len(after['u01'])} items from {SERVED} (version 1)")
    assert "Movie New  new" in out
    assert genair(["--config", str(config), "recommend", "u01", "--version", "0"]) == 0
    assert "Movie New" not in capsys.readouterr().out
    assert genair(["--config", str(config), "recommend", "nobody"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == "genair: user 'nobody' has no list in recommendations (version current)"


def test_an_export_killed_after_its_commit_is_not_committed_twice(config, monkeypatch):
    scripted_pipeline(str(config), TitleEngines(), until="results")
    real = tasks.recommend.create_markdown_artifact

    def killed(**kwargs: object) -> None:  # the commit has landed; the step's manifest has not
        raise RuntimeError("killed")

    monkeypatch.setattr(tasks.recommend, "create_markdown_artifact", killed)
    with pytest.raises(RuntimeError, match="killed"):
        scripted_pipeline(str(config), TitleEngines(), start="recommend")
    store = Store(config.parent / "data")
    assert [c["version"] for c in delta.commits(store, "recommendations")] == [0]
    monkeypatch.setattr(tasks.recommend, "create_markdown_artifact", real)
    summary = scripted_pipeline(str(config), TitleEngines(), start="recommend")
    assert summary["recommend"]["version"] == 0
    assert [c["version"] for c in delta.commits(store, "recommendations")] == [0]


def test_without_a_finished_run_the_stage_is_skipped(tmp_path):
    path = catalog(tmp_path)
    summary = scripted_refresh(
        RefreshParams(config_path=str(path), recommenders="never"), TitleEngines()
    )
    assert summary["recommend"] == {
        "skipped": True,
        "reason": "no finished recommender run of a variant that can score new items",
    }
    assert not delta.exists(Store(tmp_path / "data"), "recommendations")


def test_a_run_trained_before_item_orders_were_stored_is_served_on_the_tables_it_knew(config):
    scripted_pipeline(str(config), TitleEngines(), until="results")
    store = Store(config.parent / "data")
    path = store.best_weights_path(SERVED)
    with safe_open(path, framework="pt") as stored:
        old = {k: v for k, v in stored.metadata().items() if k in ("run_id", "run", "epoch")}
        weights = {name: stored.get_tensor(name) for name in stored.keys()}  # noqa: SIM118
    save_weights(path, weights, old)  # as runs were stored before: no settings, no item order
    (store.recommender_dir(SERVED) / "item_order.parquet").unlink()
    summary = scripted_pipeline(str(config), TitleEngines(), start="recommend")
    assert summary["recommend"]["served_run"] == SERVED
    assert summary["recommend"]["new_items"] == 0

    add_item(config, "m98", "Movie Popular")  # enters the k-core: item_index changes
    events = config.parent / "events.csv"
    events.write_text(events.read_text() + "u00,m98,999998\nu01,m98,999998\nu02,m98,999998\n")
    with pytest.raises(ConfigError, match="trained before runs recorded their item order"):
        scripted_refresh(
            RefreshParams(config_path=str(config), recommenders="never"), TitleEngines()
        )


def test_serving_an_id_run_warns_once_per_export_and_lists_no_new_item(config, caplog):
    config.write_text(config.read_text() + '\n[recommend]\nserve = "sasrec-id-bce-s1"\n')
    scripted_pipeline(str(config), TitleEngines())
    add_item(config, "m99", "Movie New")
    events = config.parent / "events.csv"
    events.write_text(events.read_text() + "u00,m99,999999\n")
    summary = scripted_refresh(
        RefreshParams(config_path=str(config), recommenders="never"), TitleEngines()
    )
    assert summary["recommend"]["served_run"] == "sasrec-id-bce-s1"
    warnings = [r for r in caplog.records if "cannot appear" in r.getMessage()]
    assert len(warnings) == 2  # one for each of the two exports, not one per user or batch
    assert all(r.levelname == "WARNING" for r in warnings)
    rows = delta.read_version(Store(config.parent / "data"), "recommendations").to_pylist()
    assert {r["model_run"] for r in rows} == {"sasrec-id-bce-s1"}
    assert "m99" not in {r["item_id"] for r in rows}
    assert not any(r["is_new_item"] for r in rows)
