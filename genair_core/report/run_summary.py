"""The run summary a data engineer reads at the end of a run and in the Prefect UI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The run record fields the summary's header shows, in order (storage.runs.RunRecord).
RUN_FIELDS = (
    "run_id",
    "flow",
    "state",
    "started_at",
    "model_id",
    "prompt_version",
    "code_version",
    "config_hash",
)
# Tables of rows that were not accepted: counted as "rejected", not as "rows out".
REJECT_TABLES = frozenset({"rejects", "archetype_failures"})


def render_run_summary(
    summary: Mapping[str, Mapping[str, object]],
    run: Mapping[str, object] | None = None,
    steps: Sequence[Mapping[str, object]] = (),
) -> str:
    """Markdown for {stage: stage summary}: the run (`run`: a `runs` row), one line per stage with
    rows in, out, rejected and skipped and seconds (`steps`: the run's step records, each with
    step, skipped, seconds, rows_in, rows_out {table: rows}), every step, then each stage's own
    figures (row counts, rejects per reason, split sizes)."""
    lines = ["# genair run summary", ""]
    if run is not None:
        lines += ["| run | |", "|---|---|"]
        lines += [f"| {name} | {_fmt(run.get(name))} |" for name in RUN_FIELDS]
        lines.append("")
    lines += _stage_table(summary, steps)
    if steps:
        lines += ["## steps", "", "| step | state | seconds | rows in | rows out |"]
        lines.append("|---|---|---:|---:|---:|")
        for step in steps:
            state = "up to date" if step["skipped"] else "ran"
            rows_out = sum(dict(step["rows_out"]).values())  # type: ignore[arg-type]
            lines.append(
                f"| {step['step']} | {state} | {_fmt(step['seconds'])} | "
                f"{_fmt(step['rows_in'])} | {_fmt(rows_out)} |"
            )
        lines.append("")
    for stage, body in summary.items():
        state = "skipped (up to date)" if body.get("skipped") else "ran"
        lines += [f"## {stage}: {state}", ""]
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


def render_run_overview(
    summary: Mapping[str, Mapping[str, object]],
    run: Mapping[str, object] | None = None,
    steps: Sequence[Mapping[str, object]] = (),
) -> str:
    """What a terminal shows at the end of a run: one line on the run (id, flow, state, time
    taken) and one line per stage with its rows in, out, rejected and skipped and its seconds;
    render_run_summary has every step and each stage's own figures."""
    lines = []
    if run is not None:
        started, ended = run.get("started_at"), run.get("ended_at")
        took = ""
        if started is not None and ended is not None:
            took = f" in {(ended - started).total_seconds():,.0f} s"  # type: ignore[operator]
        head = f"run {_fmt(run.get('run_id'))} ({_fmt(run.get('flow'))})"
        lines += [f"{head}: {_fmt(run.get('state'))}{took}", ""]
    lines += _stage_table(summary, steps)[2:]
    return "\n".join(lines).rstrip() + "\n"


def results_table(metric_rows: Sequence[Mapping[str, object]]) -> str:
    """The results table at the end of a run, from `metrics` rows: backbone × variant, test split,
    full ranking, all users, each metric's mean ± std over the seeds (the table of
    reports/recommenders.md without its paired test, which needs the per-user values), then the
    popularity baseline."""
    from genair_core.report.results import (
        RESULT_METRICS,
        markdown_table,
        metric_table_rows,
        popularity_line,
    )

    runs = metric_table_rows([row for row in metric_rows if row["backbone"] != "popularity"])
    popularity = metric_table_rows([row for row in metric_rows if row["backbone"] == "popularity"])
    lines = markdown_table(runs) if runs else ["(no recommender run has finished)"]
    if popularity:
        lines += ["", popularity_line({m: popularity[0][m]["mean"] for m in RESULT_METRICS})]
    return "\n".join(lines) + "\n"


def stage_figures(
    stage: str, body: Mapping[str, object], steps: Sequence[Mapping[str, object]]
) -> dict[str, object]:
    """One stage's rows in, out, rejected and skipped, and seconds, from its summary and the step
    records of the stage (the step named as the stage, or `train-*`/`score-*` for the
    recommenders). A figure no source gives is None."""
    own = [s for s in steps if _stage_of(str(s["step"])) == stage]
    rows_out: dict[str, int] = {}
    for step in own:
        for table, rows in dict(step["rows_out"]).items():  # type: ignore[arg-type]
            rows_out[table] = rows_out.get(table, 0) + int(rows)
    figures: dict[str, object] = {
        "state": "up to date" if body.get("skipped") else "ran",
        "seconds": body.get("seconds", sum(float(s["seconds"]) for s in own) if own else None),
        "rows in": sum(int(s["rows_in"]) for s in own) if own else None,  # type: ignore[arg-type]
        "rows out": sum(n for t, n in rows_out.items() if t not in REJECT_TABLES) if own else None,
        "rejected": sum(n for t, n in rows_out.items() if t in REJECT_TABLES) if own else None,
        "skipped": sum(bool(s["skipped"]) for s in own) if len(own) > 1 else None,
    }
    if stage == "ingest" and own:  # every source record lands in items, interactions or rejects
        figures["rows in"] = sum(rows_out.values())
    if stage == "recommenders" and "runs" in body and "trained" in body:
        figures["skipped"] = int(body["runs"]) - int(body["trained"])  # type: ignore[call-overload]
    if stage == "archetypes":  # batches write parts, not steps: the stage counts its items
        figures |= {
            "rows in": body.get("items"),
            "rows out": body.get("generated"),
            "rejected": body.get("failed"),
            "skipped": _sum(body.get("up_to_date"), body.get("failed_before")),
        }
    return figures


def latest_metrics(metric_rows: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """One row per recommender run from its `metrics` rows: backbone, variant, loss, seed, each
    metric over all users, and the run's key (what decides its result). Rows of other groups
    are left out; runs in backbone, variant, seed order."""
    runs: dict[tuple, dict[str, object]] = {}
    for row in metric_rows:
        if row["group"] != "all":
            continue
        key = (row["backbone"], row["variant"], row["loss"], row["seed"])
        line = runs.setdefault(
            key,
            {"backbone": key[0], "variant": key[1], "loss": key[2], "seed": key[3]},
        )
        line[f"{row['split']} {row['metric']}"] = round(float(row["value"]), 4)  # type: ignore[arg-type]
        line["run_key"] = row.get("run_key")
    return [runs[key] for key in sorted(runs, key=str)]


def _stage_table(
    summary: Mapping[str, Mapping[str, object]], steps: Sequence[Mapping[str, object]]
) -> list[str]:
    names = ("state", "seconds", "rows in", "rows out", "rejected", "skipped")
    lines = ["## stages", "", "| stage | " + " | ".join(names) + " |"]
    lines.append("|---|---|" + "---:|" * (len(names) - 1))
    for stage, body in summary.items():
        figures = stage_figures(stage, body, steps)
        lines.append(f"| {stage} | " + " | ".join(_fmt(figures[n]) for n in names) + " |")
    return [*lines, ""]


def _stage_of(step: str) -> str:
    """The stage a step belongs to: `train-<run>` and `score-<run>` are the recommenders'."""
    return "recommenders" if step.startswith(("train-", "score-")) else step


def _sum(*values: object) -> int | None:
    known = [int(v) for v in values if isinstance(v, int)]
    return sum(known) if known else None


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return str(value)
