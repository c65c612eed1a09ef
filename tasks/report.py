"""The run report: reports/report.html, one self-contained page (genair_core.report)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from prefect import task

from genair_core.recommenders.run_spec import RunSpec
from genair_core.report.model import build_report
from genair_core.report.page import render_report_html
from storage.items import titles
from storage.report import read_report_tables, write_report_html
from tasks.common import TASK_DEFAULTS, run_logger, store_for
from tasks.settings import Settings


def write_report(settings: Settings, path: Path | None = None) -> Path:
    """Write the report of the settings' storage root to `path` (default
    `<storage.root>/reports/report.html`) and return where. It reads the tables as they are and
    never fails on a partial run: a section whose table is missing says which command writes it.
    Usable outside a flow (`genair report`)."""
    store = store_for(settings)
    runs = {
        run.name: (run.backbone, run.variant, run.seed)
        for run in RunSpec.grid(settings.recommenders)
    }
    sources = read_report_tables(store, list(runs), run_id=settings.run_id)
    report = build_report(
        sources,
        dataset=settings.dataset.name,
        profile=settings.profile,
        smoke_run=settings.smoke_run,
        runs=runs,
        evaluation=settings.recommenders.evaluation,
        settings=settings.model_dump(mode="json"),
        titles=partial(titles, store),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    written = write_report_html(store, render_report_html(report), path)
    run_logger().info("report written to %s", written)
    return written


@task(name="write-report", **TASK_DEFAULTS)
def write_report_task(settings: Settings) -> dict[str, object]:
    """The run's report, reports/report.html; its path. A report that cannot be written is a
    warning, not a failed run: every table is in place by then, and `genair report` retries it."""
    try:
        return {"report": str(write_report(settings))}
    except Exception as err:  # the run's work is done: say why and go on
        run_logger().warning(
            "report not written (%s: %s); `genair report` writes it", type(err).__name__, err
        )
        return {"report": None, "error": f"{type(err).__name__}: {err}"}
