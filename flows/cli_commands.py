"""The `genair` commands: each takes the parsed arguments and the loaded settings and returns its
exit status (flows.cli_table declares their arguments, flows.cli runs them). A user error is
raised as UserError; anything else that goes wrong is a failure."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from flows.cli_console import EXIT_FAILED, EXIT_USER_ERROR, UserError, run_console, smoke_note
from flows.temporary_server import start_temporary_server_in_own_session
from genair_core.environment import set_run_environment
from tasks.settings import Settings

if TYPE_CHECKING:
    from flows.params import FlowParams

# A flow-running command: its parameters' model in flows.params, and its flow's module and name
# (imported once the environment is in place: Prefect reads it at import).
FLOWS = {
    "run": ("FullParams", "flows.pipeline", "genair_full"),
    "refresh": ("RefreshParams", "flows.refresh", "genair_nightly_refresh"),
    "backfill": ("BackfillParams", "flows.backfill", "genair_backfill"),
    "cold-start": ("ColdStartParams", "flows.cold_start", "genair_cold_start"),
}


def run(args: argparse.Namespace, settings: Settings) -> int:
    params = _flow_params(args, force=args.force, start=args.start, until=args.until)
    return run_flow(args, settings, _flow_call(args, params))


def refresh(args: argparse.Namespace, settings: Settings) -> int:
    params = _flow_params(args, recommenders=args.recommenders)
    return run_flow(args, settings, _flow_call(args, params))


def backfill(args: argparse.Namespace, settings: Settings) -> int:
    params = _flow_params(
        args,
        items=args.items,
        since=args.since,
        all_items=args.all_items,
        dry_run=args.dry_run,
        recommenders=args.recommenders,
    )
    _check_items_known(settings, params.items)
    return run_flow(args, settings, _flow_call(args, params))


def cold_start(args: argparse.Namespace, settings: Settings) -> int:
    params = _flow_params(args, as_of=args.as_of)
    return run_flow(args, settings, _flow_call(args, params))


def _flow_params(args: argparse.Namespace, **fields: object) -> FlowParams:
    """The command's flow parameters validated as the flow will (flows.params): a wrong one is a
    user error before Prefect starts."""
    from flows import params

    model = getattr(params, FLOWS[args.command_name][0])
    config_path = str(args.config) if args.config else None
    try:
        return model.checked(config_path=config_path, profile=args.profile, **fields)
    except ValueError as err:
        raise UserError(str(err)) from None


def _check_items_known(settings: Settings, item_ids: list[str]) -> None:
    """Item ids a backfill names that the ingested catalog does not hold: a user error (when
    there is no catalog yet, the flow says what is missing)."""
    if not item_ids:
        return
    from genair_core.llm.backfill import check_known_items
    from storage.sql import known_item_ids
    from storage.store import Store

    known = known_item_ids(Store(settings.storage.root), item_ids)
    if known is None:
        return
    try:
        check_known_items(item_ids, known)
    except ValueError as err:
        raise UserError(str(err)) from None


def _flow_call(args: argparse.Namespace, params: FlowParams) -> Callable[[], dict]:
    """The command's flow called with `params`, imported only when called (see FLOWS)."""

    def call() -> dict:
        _, module, name = FLOWS[args.command_name]
        return getattr(importlib.import_module(module), name)(**params.model_dump())

    return call


def run_flow(args: argparse.Namespace, settings: Settings, flow: Callable[[], dict]) -> int:
    """Run a flow (imported inside `flow`, once the environment is in place) with the progress
    view on the terminal and the log in a file, then print how it went."""
    set_run_environment(settings.prefect.ephemeral_startup_timeout_s, verbose=args.verbose)
    start_temporary_server_in_own_session()
    with run_console(settings, args):
        summary = flow()
    if "dry_run" in summary:
        print(summary["dry_run"])
        return 0
    full_summary = _summary_text(settings, summary)
    with open(args.log_path, "a", encoding="utf-8") as log:
        log.write(f"\n{full_summary}")
    print(full_summary if args.verbose else _overview(settings, summary))
    print(f"log: {args.log_path}")
    return 0


def _summary_text(settings: Settings, summary: dict) -> str:
    from genair_core.report.run_summary import render_run_summary

    return render_run_summary(summary, *_last_run(settings))


def _overview(settings: Settings, summary: dict) -> str:
    """The end of a run on the terminal: the run and its stages, the results table when the
    run trained or tabulated recommenders, and where the report and the tables are."""
    from genair_core.report.run_summary import render_run_overview, results_table
    from storage.report import report_html_path
    from storage.store import Store

    lines = [render_run_overview(summary, *_last_run(settings))]
    if "recommenders" in summary or "results" in summary:
        lines += [
            "recommenders, test, full ranking (mean ± std over seeds):",
            "",
            results_table(_grid_metric_rows(settings)),
        ]
    if settings.smoke_run:
        lines.append(smoke_note(settings))
    store = Store(settings.storage.root)
    html = report_html_path(store)
    if html.is_file():
        lines.append(f"report: {html}")
    elif "results" in summary and summary["results"].get("report"):
        lines.append(f"report: {summary['results']['report']}")
    lines.append(f"tables: {store.tables_dir()}")
    return "\n".join(lines)


def _grid_metric_rows(settings: Settings) -> list[dict]:
    """The results table's `metrics` rows of the configured runs (and the popularity baseline);
    none when no run has finished."""
    from storage.sql import full_ranking_test_metrics
    from storage.store import Store

    cfg = settings.recommenders
    wanted = {(b, v, s, cfg.for_backbone(b)[1].loss) for b, v, s in cfg.runs()}
    return [
        row
        for row in full_ranking_test_metrics(Store(settings.storage.root))
        if row["backbone"] == "popularity"
        or (row["backbone"], row["variant"], row["seed"], row["loss"]) in wanted
    ]


def _last_run(settings: Settings) -> tuple[dict | None, list[dict]]:
    """The newest recorded run and its steps (seconds, rows), as the run summary shows them."""
    from dataclasses import asdict

    from storage.runs import read_runs, read_steps
    from storage.store import Store

    store = Store(settings.storage.root)
    runs = read_runs(store)
    if not runs:
        return None, []
    return asdict(runs[0]), [asdict(step) for step in read_steps(store, runs[0].run_id)]


def sql(args: argparse.Namespace, settings: Settings) -> int:
    from storage.sql import QueryError, query, write_csv
    from storage.store import Store

    try:
        relation = query(Store(settings.storage.root), args.query)
    except QueryError as err:
        raise UserError(str(err)) from None
    if relation is None:  # a statement without a result
        return 0
    if args.csv:
        write_csv(relation, sys.stdout.buffer)
    else:
        relation.show(max_rows=args.max_rows, max_width=200)
    return 0


def report(args: argparse.Namespace, settings: Settings) -> int:
    from tasks.report import write_report

    if args.output is not None:
        print(write_report(settings, args.output))
    else:
        print(write_report(settings))
    return 0


def status(args: argparse.Namespace, settings: Settings) -> int:
    from storage.runs import storage_status
    from storage.store import Store

    held = storage_status(Store(settings.storage.root), last=args.runs)
    if args.json:
        print(json.dumps(held, indent=2, default=str))
    else:
        print(format_status(held))
    return 0


def format_status(held: dict) -> str:
    """`genair status` for people: tables, runs, open failures."""
    lines = [f"storage: {held['root']}", "", "tables"]
    if not held["tables"]:
        lines.append("  (none yet: `genair run` writes them)")
    for t in held["tables"]:
        written = f"{t.get('step') or 'parts'} {t['written_at'] or '?'}"
        by = f"run {t['run_id']}" if t.get("run_id") else ""
        parts = f" ({t['parts']} parts)" if "parts" in t else ""
        stale = "" if t.get("matches_manifest", True) else "  CHANGED SINCE ITS MANIFEST"
        lines.append(
            f"  {t['table']:<22} {t['rows']:>12,}  {t['sha256'][:12]}  {written}  {by}"
            f"{parts}{stale}".rstrip()
        )
    lines += ["", f"runs (newest first, {len(held['runs'])} of {held['runs_total']})"]
    if not held["runs"]:
        lines.append("  (none recorded)")
    for r in held["runs"]:
        took = f"{r['seconds']:.0f} s" if r["seconds"] is not None else f"pid {r['pid']}"
        lines.append(
            f"  {r['started_at']}  {r['state']:<22} {r['flow']:<24} {took:>9}  {r['run_id']}"
        )
    failures = held["open_failures"]
    lines += ["", "open failures"]
    for r in failures["runs"]:
        lines.append(f"  run {r['run_id']} ({r['flow']}, {r['started_at']}): {r['state']}")
        if r["error"]:
            lines.append(f"    {_cut(r['error'], 200)}")
    if failures["archetype_failures"]:
        counts = ", ".join(f"{n} {why}" for why, n in failures["archetype_failures"].items())
        total = sum(failures["archetype_failures"].values())
        lines.append(
            f"  archetype_failures: {total} items skipped ({counts}); llm.retry_failed retries them"
        )
    if not failures["runs"] and not failures["archetype_failures"]:
        lines.append("  (none)")
    return "\n".join(lines)


def similar(args: argparse.Namespace, settings: Settings) -> int:
    from flows.similar import similar_items
    from genair_core.item_space.index import ItemLookupError
    from storage.index import IndexFileError
    from storage.store import MissingTableError

    if args.k < 1:
        raise UserError(f"--k must be at least 1 (got {args.k})")
    try:
        result = similar_items(settings, args.item, k=args.k, space=args.space)
    except ItemLookupError as err:
        print(f"genair: {err}", file=sys.stderr)
        for item_id, title in err.candidates:
            print(f"  {item_id}\t{title or ''}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (IndexFileError, MissingTableError) as err:
        print(f"genair: {err}; `genair run --until index` builds it", file=sys.stderr)
        return EXIT_FAILED
    if result.stale:
        print(f"genair: warning: {result.stale}", file=sys.stderr)
    print(f"items like {result.item_id} {result.title or ''} ({result.space} space)")
    for rank, row in enumerate(result.items, start=1):
        print(f"{rank:>3}  {row.score:.4f}  {row.item_id}  {row.title or ''}")
        if row.archetype:
            print(f"               {_cut(row.archetype, 100)}")
    return 0


def recommend(args: argparse.Namespace, settings: Settings) -> int:
    from storage.exports import read_user_list
    from storage.store import Store

    listed = read_user_list(Store(settings.storage.root), args.user, args.version)
    if listed is None:
        raise UserError(
            f"user {args.user!r} has no list in recommendations "
            f"(version {'current' if args.version is None else args.version})"
        )
    head = (
        f"{args.user}: {len(listed.rows)} items from {listed.model_run} (version {listed.version})"
    )
    print(
        head
        + (
            ", the popularity list: the model knows none of the user's items"
            if listed.popularity
            else ""
        )
    )
    for row in listed.rows:
        new = "  new" if row["is_new_item"] else ""
        print(f"{row['rank']:>3}  {row['score']:.4f}  {row['item_id']}  {row['title'] or ''}{new}")
    return 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def config(args: argparse.Namespace, settings: Settings) -> int:
    labels = {"profile": settings.profile, "smoke_run": settings.smoke_run}
    print(json.dumps({**labels, **settings.model_dump(mode="json")}, indent=2))
    return 0
