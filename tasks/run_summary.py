"""Publish the run summary as a Prefect artifact, visible on the flow run in the UI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from genair_core.report.run_summary import render_run_summary
from storage.runs import read_run, read_steps
from tasks.common import TASK_DEFAULTS, store_for
from tasks.settings import Settings


@task(name="publish-summary", **TASK_DEFAULTS)
def publish_summary(
    summary: Mapping[str, Mapping[str, object]], settings: Settings | None = None
) -> str:
    """The summary of the stages as a Markdown artifact `genair-run-summary`; with the run's
    `settings`, headed by the run's record (model, prompt and code versions) and with the seconds
    and rows of every step the run recorded."""
    run, steps = None, []
    if settings is not None and settings.run_id is not None:
        store = store_for(settings)
        record = read_run(store, settings.run_id)
        run = asdict(record) if record is not None else None
        steps = [asdict(step) for step in read_steps(store, settings.run_id)]
    markdown = render_run_summary(summary, run, steps)
    create_markdown_artifact(
        key="genair-run-summary", markdown=markdown, description="genair run summary"
    )
    get_run_logger().info("run summary published (artifact genair-run-summary)")
    return markdown
