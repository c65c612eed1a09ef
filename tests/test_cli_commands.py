"""What `genair sql` prints as a table, what `genair config` prints, and a report that cannot be
written: a warning, not a failed run."""

from __future__ import annotations

import json
import logging

import pytest

import tasks.report
from flows.cli import main
from tasks.report import write_report_task
from tasks.settings import load_settings

PROFILES = """
[profiles.small]
smoke = true
preprocess.k_core = 3
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "genair.toml"
    path.write_text(f'[storage]\nroot = "data"\n[preprocess]\nk_core = 7\n{PROFILES}')
    return path


def test_sql_prints_a_table_of_the_rows(config, capfd):
    query = "SELECT 'Toy Story' AS title, 3 AS n UNION ALL SELECT 'Heat', 11 ORDER BY n"
    assert main(["--config", str(config), "sql", query]) == 0
    out = capfd.readouterr().out
    lines = [line for line in out.splitlines() if "Toy Story" in line or "Heat" in line]
    assert len(lines) == 2
    assert "title" in out
    assert "n" in out
    assert lines[0].index("Toy Story") < lines[0].index("3")  # columns in the query's order
    assert "11" in lines[1]


def test_config_prints_the_effective_settings_as_json(config, capsys, monkeypatch):
    monkeypatch.setenv("GENAIR_CALIBRATION__EPOCHS", "4")
    assert main(["--config", str(config), "config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["profile"], printed["smoke_run"]) == ("default", False)
    assert printed["preprocess"]["k_core"] == 7  # from the file
    assert printed["calibration"]["epochs"] == 4  # from the environment
    assert printed["storage"]["root"] == str(config.parent / "data")

    assert main(["--config", str(config), "config", "--profile", "small"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["profile"], printed["smoke_run"]) == ("small", True)
    assert printed["preprocess"]["k_core"] == 3  # the profile over the file


def test_a_report_that_cannot_be_written_is_a_warning(config, monkeypatch, caplog):
    def broken(settings, path=None):
        raise OSError("disk full")

    monkeypatch.setattr(tasks.report, "write_report", broken)
    with caplog.at_level(logging.WARNING):  # outside a run: genair's own logger
        result = write_report_task.fn(load_settings(config))
    assert result == {"report": None, "error": "OSError: disk full"}
    assert "report not written (OSError: disk full); `genair report` writes it" in caplog.text
