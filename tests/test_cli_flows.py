"""`genair refresh` and `genair backfill`: the deployed flows from the command line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from small_dataset import write_small_dataset

from flows.cli import main
from storage.sql import connect
from storage.store import Store


@pytest.fixture
def ingested(tmp_path, prefect_harness, monkeypatch):
    """The small dataset ingested and split (no LLM stage), run from its folder."""
    config = write_small_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(config), "run", "--until", "split"]) == 0
    return config


def stored(data: Path) -> list[tuple[Path, int]]:
    """Every file under the storage root but the command's logs, with its mtime."""
    return sorted(
        (p, p.stat().st_mtime_ns) for p in data.rglob("*") if p.relative_to(data).parts[0] != "logs"
    )


def test_backfill_dry_run_lists_the_chosen_items_and_writes_nothing(ingested, tmp_path, capsys):
    before = stored(tmp_path / "data")
    code = main(["--config", str(ingested), "backfill", "A", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "A" in out
    assert stored(tmp_path / "data") == before


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["backfill", "--dry-run"], "give exactly one of items, since or all_items"),
        (["backfill", "A", "--all", "--dry-run"], "give exactly one of items, since or all_items"),
    ],
)
def test_bad_backfill_parameters_are_one_line(ingested, capsys, args, field):
    code = main(["--config", str(ingested), *args])
    err = capsys.readouterr().err
    assert code == 2  # a user error
    assert field in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_refresh_rejects_an_unknown_policy(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["refresh", "--recommenders", "sometimes"])
    assert exit_.value.code == 2
    assert "never, if-inputs-changed, always" in capsys.readouterr().err.replace("'", "")


def test_a_since_that_is_no_day_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["backfill", "--since", "yesterday", "--dry-run"])
    assert exit_.value.code == 2
    assert "not a day (YYYY-MM-DD): 'yesterday'" in capsys.readouterr().err


def test_a_backfill_of_an_unknown_item_is_a_user_error(ingested, capsys):
    code = main(["--config", str(ingested), "backfill", "A", "NOPE", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "genair: unknown item id(s), not in the ingested catalog: 'NOPE'"


def test_a_run_ends_with_the_results_table_and_the_report(tmp_path, prefect_harness, capsys):
    from scripted_pipeline import TitleEngines, scripted_pipeline, write_catalog_dataset

    config = write_catalog_dataset(tmp_path)  # one recommender run: sasrec, id, seed 1
    scripted_pipeline(str(config), TitleEngines(), until="retrieval")
    assert main(["--config", str(config), "run", "--from", "negatives"]) == 0
    out = capsys.readouterr().out
    assert "recommenders, test, full ranking (mean ± std over seeds):" in out
    # The table of reports/recommenders.md (genair_core.report.results), then the popularity
    # baseline.
    header = "| Backbone | Variant | Seeds | HR@10 | NDCG@10 |\n| --- | --- | --- | ---: | ---: |\n"
    rows = out.split(header)[1].splitlines()
    assert rows[0].startswith("| sasrec | id | 1 | 0.")
    assert rows[1] == ""
    assert rows[2].startswith("Popularity (training counts): HR@10 0.")
    assert "report: " in out
    assert f"log: {tmp_path / 'data' / 'logs'}" in out


# The real default model through the transformers engine, on the 4 items; an adapter small enough
# for them.
REAL_ENGINE = """
[llm]
engine = "transformers"
max_new_tokens = 16
[calibration]
pairs_per_epoch = 1024
epochs = 2
hidden = 8
max_mean_cosine = 0.95
"""


def archetype_times(data: Path) -> dict[str, object]:
    """{item_id: created_at} of the current archetypes."""
    sql = "SELECT item_id, created_at FROM current_archetypes"
    return dict(connect(Store(data)).sql(sql).fetchall())


@pytest.mark.slow
def test_a_refresh_then_backfills_since_a_day_and_of_all_items(
    tmp_path, prefect_harness, monkeypatch, test_cache_dir, capsys
):
    config = write_small_dataset(tmp_path)
    config.write_text(config.read_text() + REAL_ENGINE)
    monkeypatch.setenv("GENAIR_STORAGE__CACHE_DIR", str(test_cache_dir))
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    cli = ["--config", str(config)]

    assert main([*cli, "refresh", "--recommenders", "never"]) == 0
    first = archetype_times(data)
    assert sorted(first) == ["A", "B", "C", "D"]
    assert Store(data).read_table("calibrated_embeddings").num_rows == 4
    assert "metrics" not in Store(data).existing_datasets()  # --recommenders never

    assert main([*cli, "refresh", "--recommenders", "never"]) == 0  # nothing changed
    assert archetype_times(data) == first

    today = datetime.now(UTC).date().isoformat()  # every item was first ingested today
    assert main([*cli, "backfill", "--since", today, "--recommenders", "never"]) == 0
    since = archetype_times(data)
    assert sorted(since) == sorted(first)
    assert all(since[item] > first[item] for item in first)

    assert main([*cli, "backfill", "--all", "--recommenders", "never"]) == 0
    every = archetype_times(data)
    assert all(every[item] > since[item] for item in since)
    assert Store(data).read_table("item_embeddings").num_rows == 4
    assert "Traceback" not in capsys.readouterr().err
