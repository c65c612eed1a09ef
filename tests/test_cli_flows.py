"""`genair refresh` and `genair backfill`: the deployed flows from the command line."""

from __future__ import annotations

import pytest
from small_dataset import write_small_dataset

from flows.cli import main


@pytest.fixture
def ingested(tmp_path, prefect_harness, monkeypatch):
    """The small dataset ingested and split (no LLM stage), run from its folder."""
    config = write_small_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(config), "run", "--until", "split"]) == 0
    return config


def test_backfill_dry_run_lists_the_chosen_items_and_writes_nothing(ingested, tmp_path, capsys):
    before = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "data").rglob("*"))
    code = main(["--config", str(ingested), "backfill", "A", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "A" in out
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "data").rglob("*")) == before


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
    assert code == 1
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
