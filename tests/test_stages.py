"""The stage table drives every flow, `--from`/`--until`, the CLI's help and the docs; a stage is
added with a thin task and a row, and runs with the configured retries."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
from prefect import Task, flow, task
from small_dataset import write_small_dataset

from flows.cli import main
from flows.params import FullParams
from flows.pipeline import StageRun, _resolve, run_stages
from flows.stages import (
    BACKFILL,
    FLOWS,
    FULL,
    REFRESH,
    STAGE_TABLE,
    STAGES,
    Stage,
    between,
    markdown_table,
    stages_of,
)
from storage.store import Store
from tasks.common import TASK_DEFAULTS, store_for
from tasks.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {FULL: "run", REFRESH: "refresh", BACKFILL: "backfill"}


def test_docs_pipeline_holds_the_stage_table():
    docs = (ROOT / "docs" / "pipeline.md").read_text()
    assert markdown_table() in docs, "paste `python -m flows.stages` into docs/pipeline.md"


def test_docs_pipeline_names_every_prefect_task():
    """Each task a data engineer sees in the Prefect UI is in the docs' table of steps (the
    cold-start flow's, which no stage runs, in its own section)."""
    docs = (ROOT / "docs" / "pipeline.md").read_text()
    names = set()
    for path in sorted((ROOT / "tasks").glob("*.py")):
        module = importlib.import_module(f"tasks.{path.stem}")
        names |= {obj.name for obj in vars(module).values() if isinstance(obj, Task)}
    assert len(names) > 15
    assert sorted(name for name in names if f"`{name}`" not in docs) == []


@pytest.mark.parametrize("flow_name", FLOWS)
def test_each_command_s_help_lists_its_flow_s_stages(flow_name, capsys):
    with pytest.raises(SystemExit):
        main([COMMANDS[flow_name], "--help"])
    help_text = capsys.readouterr().out
    section = help_text.split("stages:\n")[1].split("\n\n")[0]
    listed = re.findall(r"^  (\S+)  +(.+)$", section, re.MULTILINE)
    assert [name for name, _ in listed] == [stage.name for stage in stages_of(flow_name)]
    assert [does for _, does in listed] == [stage.does for stage in stages_of(flow_name)]
    if flow_name != FULL:
        assert "(negatives, recommenders, results: as --recommenders says)" in section


def test_from_and_until_take_the_table_s_stages(capsys):
    assert FullParams.model_json_schema()["properties"]["until"]["enum"] == list(STAGES)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert ", ".join(STAGES) in " ".join(capsys.readouterr().out.split())


def test_every_stage_names_a_task_or_a_function_of_the_stage_run():
    for stage in STAGE_TABLE:
        runs = _resolve(stage.runs)
        if isinstance(runs, Task):
            assert next(iter(inspect.signature(runs.fn).parameters)) == "settings", stage.name
        else:
            assert list(inspect.signature(runs).parameters) == ["run"], stage.name


def test_the_flows_run_the_stages_the_table_gives_them():
    names = {
        (flow_name, policy): [s.name for s in stages_of(flow_name, policy)]
        for flow_name in FLOWS
        for policy in ("never", "always")
    }
    assert names[FULL, "always"] == list(STAGES)
    trained = ["negatives", "recommenders", "results"]
    assert names[REFRESH, "never"] == [s for s in STAGES if s not in trained]
    assert names[REFRESH, "always"] == list(STAGES)
    assert names[BACKFILL, "never"] == [
        "check",
        "archetypes",
        "pooling",
        "calibrate",
        "index",
        "similar-items",
        "retrieval",
        "recommend",  # it trains nothing: it runs whatever the policy
    ]
    served = names[BACKFILL, "never"]
    assert names[BACKFILL, "always"] == served[:-1] + trained + served[-1:]
    assert [s.name for s in between("split", "index")] == [
        "split",
        "check",
        "cooccurrence",
        "archetypes",
        "pooling",
        "calibrate",
        "index",
    ]


# -- a stage added with a thin task and a row -----------------------------------------------------

ATTEMPTS: list[bool] = []


@task(name="count-users", **TASK_DEFAULTS)
def count_users(settings: Settings, force: bool = False) -> dict[str, object]:
    """A stage of the test's own: reads a table the split wrote; fails once with an error a retry
    cures, so it succeeds only if it was retried as the settings say."""
    ATTEMPTS.append(force)
    if len(ATTEMPTS) == 1:
        raise ConnectionError("the first attempt fails")
    return {"users": store_for(settings).read_table("user_index").num_rows}


COUNT_USERS = Stage(
    "count-users",
    f"{__name__}:count_users",
    "how many users the split kept",
    ("user_index",),
    (),
    (FULL,),
)


@flow(name="stage-table-test", validate_parameters=False)
def run_with(stages: tuple[Stage, ...], settings: Settings) -> dict[str, dict]:
    return run_stages(stages, StageRun(settings, force=True))


@pytest.mark.usefixtures("prefect_harness")
def test_a_new_stage_is_a_task_and_a_row_and_runs_with_the_configured_retries(tmp_path):
    config = write_small_dataset(tmp_path)
    config.write_text(config.read_text().replace("[prefect]\n", "[prefect]\ntask_retries = 1\n"))
    settings = load_settings(config)
    split = STAGES.index("split")
    table = (*STAGE_TABLE[: split + 1], COUNT_USERS, *STAGE_TABLE[split + 1 :])
    ATTEMPTS.clear()
    summary = run_with(between("ingest", "count-users", stages_of(FULL, table=table)), settings)
    assert list(summary) == ["ingest", "split", "count-users"]
    assert summary["count-users"] == {"users": 3}
    assert ATTEMPTS == [True, True]  # failed once, retried once (task_retries = 1), with force
    assert Store(settings.storage.root).read_table("user_index").num_rows == 3

    ATTEMPTS.clear()
    no_retries = settings.model_copy(
        update={"prefect": settings.prefect.model_copy(update={"task_retries": 0})}
    )
    with pytest.raises(ConnectionError):
        run_with((COUNT_USERS,), no_retries)
    assert ATTEMPTS == [True]
