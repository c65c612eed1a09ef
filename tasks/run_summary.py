"""Publish the run summary as a Prefect artifact, visible on the flow run in the UI."""

from __future__ import annotations

from collections.abc import Mapping

from prefect import task
from prefect.artifacts import create_markdown_artifact

from genair_core.run_summary import render_run_summary
from tasks.common import TASK_DEFAULTS


@task(name="publish-summary", **TASK_DEFAULTS)
def publish_summary(summary: Mapping[str, Mapping[str, object]]) -> str:
    markdown = render_run_summary(summary)
    create_markdown_artifact(
        key="genair-run-summary", markdown=markdown, description="genair run summary"
    )
    return markdown
