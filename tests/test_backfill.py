"""genair-backfill on a 24-item catalog with the scripted engine: exactly the chosen items are
generated again and replace their rows, `since` and `all_items` pick what they say, and a dry
run writes nothing."""

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest
from scripted_pipeline import (
    TitleEngines,
    scripted_backfill,
    scripted_pipeline,
    write_catalog_dataset,
)
from small_dataset import write_small_dataset

from flows.backfill import genair_backfill
from flows.params import BackfillParams
from flows.refresh import genair_nightly_refresh
from genair_core.config import LlmConfig
from genair_core.llm.archetypes import ArchetypeRecipe, make_plan
from genair_core.llm.backfill import Backfill, check_known_items
from genair_core.tables import PROVENANCE_COLUMNS
from storage.archetype_tables import drop_replaced_archetypes
from storage.sql import connect
from storage.store import Store

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = ", ".join(PROVENANCE_COLUMNS)


@pytest.fixture
def config(tmp_path):
    config = write_catalog_dataset(tmp_path)
    scripted_pipeline(str(config), TitleEngines(), until="retrieval")
    return config


def backfill(config, engines=None, **params):
    engines = engines or TitleEngines()
    return scripted_backfill(BackfillParams(config_path=str(config), **params), engines)


def archetype_rows(store: Store) -> list[tuple]:
    return connect(store).sql(f"SELECT {KEY}, created_at FROM archetypes ORDER BY ALL").fetchall()


def duplicated_keys(store: Store) -> list[tuple]:
    sql = f"SELECT {KEY}, count(*) FROM archetypes GROUP BY ALL HAVING count(*) > 1"
    return connect(store).sql(sql).fetchall()


def listing(root) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(root)): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in sorted(root.rglob("*"))
    }


def test_backfill_of_an_unchanged_item_regenerates_exactly_it_and_replaces_its_row(config):
    store = Store(config.parent / "data")
    before = {row[0]: row for row in archetype_rows(store)}
    bases = store.read_table("item_embeddings")["basis_id"].unique().to_pylist()

    engines = TitleEngines("fans of")  # a fixed prompt: other archetypes for the same items
    summary = backfill(config, engines, items=["m05"], recommenders="never")

    assert engines.titles == ["Movie 5"]
    texts = dict(connect(store).sql("SELECT item_id, archetype FROM archetypes").fetchall())
    assert texts["m05"] == "fans of Movie 5"
    assert texts["m06"] == "people who like Movie 6"
    assert summary["archetypes"]["generated"] == 1
    assert summary["archetypes"]["replaced_rows_removed"] == 1
    after = {row[0]: row for row in archetype_rows(store)}
    assert len(after) == len(before) == 24
    assert duplicated_keys(store) == []
    assert after["m05"][-1] > before["m05"][-1]  # the new row replaced the old one
    assert {i: r for i, r in after.items() if i != "m05"} == {
        i: r for i, r in before.items() if i != "m05"
    }
    # then the stages downstream, with the stored bases and adapter
    assert summary["pooling"]["skipped"] is False
    assert summary["pooling"]["bases"] == "stored"
    assert store.read_table("item_embeddings")["basis_id"].unique().to_pylist() == bases
    assert summary["calibrate"]["decision"] == "projected"
    assert not {"negatives", "recommenders", "results"} & set(summary)


def test_a_second_backfill_of_the_same_item_still_leaves_one_row_per_key(config):
    store = Store(config.parent / "data")
    backfill(config, items=["m05", "m06"], recommenders="never")
    backfill(config, items=["m06"], recommenders="never")
    assert duplicated_keys(store) == []
    assert len(archetype_rows(store)) == 24


def test_an_unknown_item_id_is_one_line_naming_it(config):
    unknown = r"unknown item id\(s\), not in the ingested catalog: 'nope'$"
    with pytest.raises(ValueError, match=unknown):
        backfill(config, items=["m01", "nope"], dry_run=True)


def test_since_picks_the_items_added_or_changed_on_or_after_that_day(config):
    store = Store(config.parent / "data")
    items = store.read_table("items")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    old = {"m01", "m02", "m10"}
    dated = [
        today - timedelta(days=30) if item_id in old else today
        for item_id in items["item_id"].to_pylist()
    ]
    column = items.schema.get_field_index("updated_at")
    field = items.schema.field(column)
    store.write_table("items", items.set_column(column, field, pa.array(dated, field.type)))

    recent = backfill(config, since=today.date(), dry_run=True)["dry_run"]
    assert recent["items"] == 21
    assert not old & set(recent["item_ids"])
    earlier = backfill(config, since=today.date() - timedelta(days=30), dry_run=True)
    assert earlier["dry_run"]["items"] == 24
    later = backfill(config, since=today.date() + timedelta(days=1), dry_run=True)
    assert later["dry_run"]["items"] == 0


def test_all_items_picks_every_item_with_an_archetype_and_regenerates_them(config):
    store = Store(config.parent / "data")
    report = backfill(config, all_items=True, dry_run=True)["dry_run"]
    assert report["items"] == 24
    assert report["batches"] == 6  # batch_size 4
    downstream = ["pooling", "calibrate", "index", "similar-items", "retrieval"]
    trained = ["negatives", "recommenders", "results"]
    assert report["then"] == [*downstream, *trained, "recommend"]
    engines = TitleEngines()
    backfill(config, engines, all_items=True, recommenders="never")
    assert len(engines.titles) == 24
    assert duplicated_keys(store) == []
    assert len(archetype_rows(store)) == 24


def test_a_dry_run_changes_no_file_under_the_storage_root(config):
    root = config.parent / "data"
    before = listing(root)
    engines = TitleEngines()
    result = backfill(config, engines, items=["m03", "m04"], dry_run=True)
    assert result["dry_run"]["item_ids"] == ["m03", "m04"]
    assert engines.titles == []
    assert listing(root) == before


def test_duplicates_left_by_a_crash_are_removed_by_the_next_call(tmp_path):
    """A backfill killed between writing the new part and dropping the old row leaves two rows
    of one key; the next drop keeps the newest and rewrites (or deletes) the older part."""
    store = Store(tmp_path)

    def row(item_id: str, at: datetime) -> dict:
        return {
            "item_id": item_id,
            "content_hash": f"h-{item_id}",
            "model_id": "m",
            "prompt_version": "p",
            "settings_id": "s",
            "engine": "vllm",
            "prompt": "prompt",
            "archetype": f"written on day {at.day}",
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "finish_reason": "stop",
            "truncated": False,
            "input_emb": [0.0, 1.0],
            "gen_emb": [1.0, 0.0],
            "created_at": at,
            "run_id": "r",
        }

    first, second = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    store.write_part("archetypes", "m", "batch-1", [row("a", first), row("b", first)])
    store.write_part("archetypes", "m", "batch-2", [row("c", first)])
    store.write_part("archetypes", "m", "again", [row("a", second), row("c", second)])

    assert drop_replaced_archetypes(store, "m") == 2
    rows = store.read_parts("archetypes", "m").to_pylist()
    assert sorted((r["item_id"], r["archetype"]) for r in rows) == [
        ("a", "written on day 2"),
        ("b", "written on day 1"),
        ("c", "written on day 2"),
    ]
    assert len(store.part_paths("archetypes", "m")) == 2  # batch-2 held only c: deleted
    assert drop_replaced_archetypes(store, "m") == 0


def test_a_backfill_takes_exactly_one_selection():
    with pytest.raises(ValueError, match=r"exactly one .* \(got items and since\)$"):
        Backfill(item_ids=("a",), since=date(2026, 1, 1))
    with pytest.raises(ValueError, match=r"exactly one .* \(got none\)$"):
        Backfill()
    with pytest.raises(ValueError, match="empty item id"):
        Backfill(item_ids=("a", " "))


def test_unknown_item_ids_are_named_the_first_ten_of_them():
    check_known_items(["a", "b"], {"a", "b", "c"})
    with pytest.raises(ValueError, match=r"catalog: 'x'$"):
        check_known_items(["a", "x"], {"a"})
    many = [f"n{i}" for i in range(12)]
    with pytest.raises(ValueError, match=r"'n9' and 2 more$"):
        check_known_items(many, set())


@pytest.mark.slow
def test_the_deployed_refresh_and_backfill_with_the_real_default_model(tmp_path, test_cache_dir):
    """SmolLM2-135M through the transformers engine on the 4-item dataset: the refresh writes
    every item's archetype, a backfill of one item replaces exactly its row."""
    config = write_small_dataset(tmp_path)
    config.write_text(
        config.read_text().replace('cache_dir = "cache"', f'cache_dir = "{test_cache_dir}"')
        + '[llm]\nengine = "transformers"\nmax_new_tokens = 32\n'
        + '[refresh]\nrecommenders = "never"\n'
        + "[calibration]\nepochs = 2\npairs_per_epoch = 1024\nhidden = 8\nmax_mean_cosine = 0.99\n"
    )
    store = Store(tmp_path / "data")
    refreshed = genair_nightly_refresh(config_path=str(config))
    assert refreshed["archetypes"]["generated"] == 4
    assert not {"negatives", "recommenders", "results"} & set(refreshed)
    before = {row[0]: row for row in archetype_rows(store)}

    report = genair_backfill(config_path=str(config), items=["B"], dry_run=True)["dry_run"]
    assert (report["items"], report["item_ids"]) == (1, ["B"])
    summary = genair_backfill(config_path=str(config), items=["B"])
    assert summary["archetypes"]["generated"] == 1
    assert summary["archetypes"]["replaced_rows_removed"] == 1
    after = {row[0]: row for row in archetype_rows(store)}
    assert sorted(after) == ["A", "B", "C", "D"]
    assert duplicated_keys(store) == []
    assert after["B"][-1] > before["B"][-1]
    assert {i: after[i] for i in "ACD"} == {i: before[i] for i in "ACD"}


def test_a_backfill_plan_holds_exactly_its_items_done_or_failed_before():
    llm = LlmConfig(max_items=2, batch_size=8)
    recipe = ArchetypeRecipe("model", "p1", "g-1", "vllm")
    catalog = [("a", "h1"), ("b", "h2"), ("c", "h3")]

    def plan(backfill=None, **state):
        return make_plan(
            llm,
            recipe,
            catalog,
            kept=None,
            item_type="movie",
            context_length=4096,
            backfill=backfill,
            **state,
        )

    assert plan(done=[("a", "h1")], failed=[("b", "h2")]).pending == 0
    again = plan(Backfill(item_ids=("a", "b")), done=[("a", "h1")], failed=[("b", "h2")])
    assert [batch.items for batch in again.batches] == [(("a", "h1"), ("b", "h2"))]
    left_out = r"item\(s\) 'c' get no archetype: llm.max_items = 2 keeps the first items"
    with pytest.raises(ValueError, match=left_out):
        plan(Backfill(item_ids=("c",)), done=[], failed=[])
