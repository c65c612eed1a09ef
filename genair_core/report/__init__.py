"""The run report: one self-contained HTML page of results, training curves, item spaces,
archetypes and the run's manifest (storage.report reads its inputs, tasks.report writes it)."""

from genair_core.report.model import Missing, Report, ReportSources, build_report
from genair_core.report.page import render_report_html

__all__ = ["Missing", "Report", "ReportSources", "build_report", "render_report_html"]
