"""The run summary a data engineer reads at the end of a run and in the Prefect UI."""

from __future__ import annotations

from collections.abc import Mapping


def render_run_summary(summary: Mapping[str, Mapping[str, object]]) -> str:
    """Markdown for {step: step summary}: row counts, rejects per reason, split sizes."""
    lines = ["# genair run summary", ""]
    for step, body in summary.items():
        state = "skipped (up to date)" if body.get("skipped") else "ran"
        lines += [f"## {step}: {state}", ""]
        scalars = {k: v for k, v in body.items() if k != "skipped" and not isinstance(v, Mapping)}
        tables = {k: v for k, v in body.items() if isinstance(v, Mapping)}
        if scalars:
            lines += ["| key | value |", "|---|---:|"]
            lines += [f"| {key} | {_fmt(value)} |" for key, value in scalars.items()]
            lines.append("")
        for name, mapping in tables.items():
            lines += [f"**{name}**", ""]
            if not mapping:
                lines += ["(none)", ""]
                continue
            lines += ["| | count |", "|---|---:|"]
            lines += [f"| {key} | {_fmt(value)} |" for key, value in mapping.items()]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return str(value)
