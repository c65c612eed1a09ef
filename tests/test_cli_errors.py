"""The command line a user meets: help with examples, exit status 2 for user errors and 1 for
failures, one line per error (its traceback only with --debug), and the log of Prefect, vLLM and
warnings in <storage root>/logs instead of on the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from small_dataset import write_small_dataset

from flows import cli_commands
from flows.cli import main
from tasks import report

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("run", "refresh", "backfill", "similar", "sql", "report", "status", "config")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_a_description_and_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"] if command else ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    usage, description, *_ = text.split("\n\n")
    assert usage.startswith("usage: genair")
    assert not description.startswith(("options", "positional")), "no description"
    examples = text.split("examples:\n", 1)[1]
    assert examples.lstrip().startswith(f"genair {command or ''}".strip())


@pytest.mark.parametrize(
    "command", ["run", "refresh", "backfill", "report", "config", "sql", "similar", "status"]
)
def test_the_commands_that_load_settings_take_a_profile(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--profile NAME" in capsys.readouterr().out


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "genair.toml"
    path.write_text(
        '[storage]\nroot = "data"\n[profiles.quick]\nllm = { max_items = 64 }\n', encoding="utf-8"
    )
    return path


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_bad_setting_is_one_line_and_exit_2_with_the_traceback_only_under_debug(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[preprocess]\nk_core = 0\n")
    assert main(["--config", str(bad), "config"]) == 2
    assert "preprocess.k_core" in one_line(capsys.readouterr().err)
    assert main(["config", "--config", str(bad), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("genair: ")


def test_an_unknown_profile_is_a_user_error(config, capsys):
    assert main(["--config", str(config), "config", "--profile", "nope"]) == 2
    assert "nope" in one_line(capsys.readouterr().err)
    assert main(["--config", str(config), "config", "--profile", "quick"]) == 0
    assert '"max_items": 64' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "--from", "results", "--until", "ingest"], "comes after"),
        (["run", "--until", "everything"], "until"),
        (["backfill", "--dry-run"], "give exactly one of items, since or all_items"),
    ],
)
def test_invalid_flow_parameters_are_user_errors_before_prefect_starts(config, capsys, args, says):
    assert main(["--config", str(config), *args]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("genair: invalid parameters:")
    assert says in line


def test_bad_sql_is_a_user_error(config, capsys):
    assert main(["--config", str(config), "sql", "SELEC 1"]) == 2
    assert "syntax error" in one_line(capsys.readouterr().err)


def test_a_failing_stage_exits_1_with_one_line_naming_the_log(config, capsys, monkeypatch):
    def failing_flow(args, params):
        def run() -> dict:
            raise RuntimeError("the calibrate stage broke\nsecond line of the message")

        return run

    monkeypatch.setattr(cli_commands, "_flow_call", failing_flow)
    assert main(["--config", str(config), "run"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("genair: failed: RuntimeError: the calibrate stage broke (log: ")
    assert str(config.parent / "data" / "logs") in line
    assert main(["--config", str(config), "run", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert 'raise RuntimeError("the calibrate stage broke' in err


@pytest.mark.usefixtures("prefect_harness")
def test_a_stage_that_fails_in_the_flow_exits_1(tmp_path, capsys, monkeypatch):
    config = write_small_dataset(tmp_path)
    (tmp_path / "catalog.csv").unlink()
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(config), "run", "--until", "ingest"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("genair: failed: ")
    assert "catalog.csv" in line
    logs = list((tmp_path / "data" / "logs").glob("genair-*.log"))
    assert len(logs) == 1
    assert "Finished in state Failed" in logs[0].read_text()  # Prefect's lines: in the log


# A CLI run whose flow writes what vLLM, Prefect, Python warnings and C code write, in a fresh
# interpreter (the file descriptors and handlers are the process's own).
NOISY_RUN = """\
import logging, os, sys, warnings
from flows import cli, cli_commands

vllm = logging.getLogger("vllm")  # set up as vLLM does: a handler of its own on stderr
vllm.addHandler(logging.StreamHandler(sys.stderr))
vllm.propagate = False


def noisy_flow(args, params):
    def run():
        vllm.warning("VLLM-WARNING")
        logging.getLogger("prefect.flow_engine").info("PREFECT-INFO")
        warnings.warn("PY-WARNING")
        os.write(2, b"C-LEVEL-NOISE\\n")
        print("STDOUT-NOISE", flush=True)
        return {"dry_run": "nothing regenerated"}

    return run


cli_commands._flow_call = noisy_flow
sys.exit(cli.main(sys.argv[1:]))
"""
NOISE = ("VLLM-WARNING", "PREFECT-INFO", "PY-WARNING", "C-LEVEL-NOISE")  # on stderr


def noisy_cli(config: Path, *flags: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-c", NOISY_RUN, "--config", str(config), "run", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_logs_and_warnings_go_to_the_log_file_not_the_terminal(config):
    done = noisy_cli(config)
    assert done.stdout.strip() == "nothing regenerated"
    for noise in NOISE:
        assert noise not in done.stderr
    (log,) = (config.parent / "data" / "logs").glob("genair-*.log")
    assert f"log in {log}" in done.stderr
    text = log.read_text()
    for noise in (*NOISE, "STDOUT-NOISE"):
        assert noise in text


def test_verbose_shows_the_log_on_the_terminal(config):
    done = noisy_cli(config, "--verbose")
    assert done.stdout.splitlines() == ["STDOUT-NOISE", "nothing regenerated"]
    for noise in NOISE:
        assert noise in done.stderr


def test_report_prints_where_it_wrote_the_report(config, capsys, monkeypatch):
    written = []

    def write_report(settings, path=None):
        path = path or settings.storage.root / "reports" / "report.html"
        written.append(path)
        return path

    monkeypatch.setattr(report, "write_report", write_report)
    assert main(["--config", str(config), "report"]) == 0
    assert capsys.readouterr().out.strip() == str(config.parent / "data/reports/report.html")
    assert main(["--config", str(config), "report", "--output", "elsewhere.html"]) == 0
    assert capsys.readouterr().out.strip() == "elsewhere.html"
    assert written[-1] == Path("elsewhere.html")


def test_output_cut_short_by_its_reader_is_not_an_error(config):
    """`genair status | head -1`: the rest of the output has nowhere to go; exit as a shell
    reports SIGPIPE, with nothing on stderr."""
    reader = subprocess.Popen(["true"], stdin=subprocess.PIPE)
    reader.wait(timeout=30)  # gone before the first line is written
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--config", str(config), "status", "--runs", "50"],
        cwd=REPO,
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    reader.stdin.close()
    assert done.returncode == 141, done.stderr
    assert "failed" not in done.stderr
