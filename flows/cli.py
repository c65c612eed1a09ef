"""The `genair` command.

genair run [--force] [--from STAGE] [--until STAGE]   run the pipeline flow (genair-full)
genair refresh [--recommenders POLICY]           the nightly refresh: only what changed
genair backfill (ITEM_ID ... | --since DAY | --all) [--dry-run]   regenerate chosen items
genair sql "SELECT ..." [--csv]                  query the tables through DuckDB views
genair config [--config genair.toml]             print the effective, validated settings
genair status [--runs 10] [--json]               tables, last runs and open failures (no Prefect)
genair similar ITEM [--k 10] [--space calibrated|raw]   the items most like one item
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

from flows.stages import STAGES
from tasks.settings import ConfigError, Settings, load_settings


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        print(f"genair: {err}", file=sys.stderr)
        return 2
    return args.command(args, settings)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="genair", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML settings (default: ./genair.toml if present)",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the pipeline flow")
    run.add_argument("--force", action="store_true", help="rerun steps whose inputs are unchanged")
    run.add_argument(
        "--until",
        default=STAGES[-1],
        metavar="STAGE",
        help=f"last stage to run: {', '.join(STAGES)} (default: {STAGES[-1]})",
    )
    run.add_argument(
        "--from",
        dest="start",
        default=STAGES[0],
        metavar="STAGE",
        help="first stage to run; earlier stages' tables must exist (default: ingest)",
    )
    run.set_defaults(command=_run)

    policy = {
        "choices": ("never", "if-inputs-changed", "always"),
        "default": None,
        "help": "retrain and evaluate the recommenders never, only runs whose inputs changed, or "
        "always (default: the [refresh] recommenders setting)",
    }
    refresh = commands.add_parser(
        "refresh",
        help="the nightly refresh (genair-nightly-refresh): only what changed",
        description="Ingest the latest catalog and interactions, send only new or changed items "
        "through the LLM, project them with the stored PCA bases and calibration adapter, "
        "rebuild the indexes whose vectors changed, and retrain as --recommenders says.",
        epilog="example: genair refresh --recommenders never",
    )
    refresh.add_argument("--recommenders", **policy)
    refresh.set_defaults(command=_refresh)

    backfill = commands.add_parser(
        "backfill",
        help="regenerate chosen items' archetypes and embeddings (genair-backfill)",
        description="Regenerate the archetypes and embeddings of the chosen items even when "
        "their metadata is unchanged (after a prompt or model change), then the stages "
        "downstream. Give item ids, --since or --all.",
        epilog="examples: genair backfill 50 181 --dry-run; genair backfill --since 2026-11-01",
    )
    backfill.add_argument("items", nargs="*", metavar="ITEM_ID", help="item ids to regenerate")
    backfill.add_argument(
        "--since",
        type=_day,
        default=None,
        metavar="DAY",
        help="items added or changed on or after DAY (UTC, YYYY-MM-DD)",
    )
    backfill.add_argument("--all", dest="all_items", action="store_true", help="every item")
    backfill.add_argument(
        "--dry-run", action="store_true", help="report what would be regenerated; write nothing"
    )
    backfill.add_argument("--recommenders", **policy)
    backfill.set_defaults(command=_backfill)

    sql = commands.add_parser("sql", help="query the tables (one DuckDB view per table)")
    sql.add_argument("query")
    sql.add_argument("--csv", action="store_true", help="machine-readable CSV on stdout")
    sql.add_argument("--max-rows", type=int, default=40, help="rows shown in the readable table")
    sql.set_defaults(command=_sql)

    show = commands.add_parser("config", help="print the effective settings as JSON")
    show.set_defaults(command=_config)

    status = commands.add_parser(
        "status",
        help="what the storage holds: tables, the last runs, open failures",
        description="Reads the storage root only (Prefect is not started): every table's rows, "
        "hash and the run that wrote it, the last runs with their state (a run whose process is "
        "gone reads Crashed), and the failures no later run has settled.",
    )
    status.add_argument("--runs", type=int, default=10, help="how many runs (default: 10)")
    status.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    status.set_defaults(command=_status)

    similar = commands.add_parser(
        "similar",
        help="the items most like one item (from the FAISS index of a vector space)",
        description="The top-k items by cosine, with title, score and the first line of each "
        "one's archetype. Exit status 2 when ITEM names no item or several (they are listed).",
        epilog='example: genair similar "toy story" --k 5 --space raw',
    )
    similar.add_argument("item", metavar="ITEM", help="an item_id or a piece of a title")
    similar.add_argument("--k", type=int, default=10, help="how many items (default: 10)")
    similar.add_argument(
        "--space",
        choices=("calibrated", "raw"),
        default="calibrated",
        help="calibrated_embeddings or the raw item_embeddings (default: calibrated)",
    )
    similar.set_defaults(command=_similar)

    # `--config` is accepted before or after the command.
    for sub in (run, refresh, backfill, sql, show, status, similar):
        sub.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    def run_full() -> dict:
        from flows.pipeline import genair_full

        return genair_full(
            config_path=_config_path(args), force=args.force, until=args.until, start=args.start
        )

    return _run_flow(settings, run_full)


def _refresh(args: argparse.Namespace, settings: Settings) -> int:
    def run_refresh() -> dict:
        from flows.refresh import genair_nightly_refresh

        return genair_nightly_refresh(
            config_path=_config_path(args), recommenders=args.recommenders
        )

    return _run_flow(settings, run_refresh)


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    def run_backfill() -> dict:
        from flows.backfill import genair_backfill

        return genair_backfill(
            config_path=_config_path(args),
            items=args.items,
            since=args.since,
            all_items=args.all_items,
            dry_run=args.dry_run,
            recommenders=args.recommenders,
        )

    return _run_flow(settings, run_backfill)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from None


def _config_path(args: argparse.Namespace) -> str | None:
    return str(args.config) if args.config else None


def _run_flow(settings: Settings, run: Callable[[], dict]) -> int:
    """Run a flow (imported inside `run`, once the environment is in place) and print its
    summary; a bad parameter or a failed run is one line on stderr."""
    configure_environment(settings)
    from genair_core.run_summary import render_run_summary

    try:
        summary = run()
    except (ValueError, OSError) as err:
        print(f"genair: run failed: {err}", file=sys.stderr)
        return 1
    if "dry_run" in summary:
        print(summary["dry_run"])
        return 0
    print(render_run_summary(summary, *_last_run(settings)))
    print(f"tables: {settings.storage.root / 'tables'}")
    return 0


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


def configure_environment(settings: Settings) -> None:
    """Environment for Prefect and vLLM, set before they are imported; values the user set win."""
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
        str(settings.prefect.ephemeral_startup_timeout_s),
    )
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # vLLM logs every engine start at INFO (dozens of lines per engine); keep the run readable.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # genair_core and storage log through the standard library (they know no Prefect): into the
    # run's logs (the lock takeover line among them).
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "genair_core,storage")


def _sql(args: argparse.Namespace, settings: Settings) -> int:
    from storage.sql import QueryError, query, write_csv
    from storage.store import Store

    try:
        relation = query(Store(settings.storage.root), args.query)
    except QueryError as err:
        print(f"genair: {err}", file=sys.stderr)
        return 1
    if relation is None:  # a statement without a result
        return 0
    if args.csv:
        write_csv(relation, sys.stdout.buffer)
    else:
        relation.show(max_rows=args.max_rows, max_width=200)
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from storage.runs import storage_status
    from storage.store import Store

    report = storage_status(Store(settings.storage.root), last=args.runs)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_status(report))
    return 0


def format_status(report: dict) -> str:
    """`genair status` for people: tables, runs, open failures."""
    lines = [f"storage: {report['root']}", "", "tables"]
    if not report["tables"]:
        lines.append("  (none yet: `genair run` writes them)")
    for t in report["tables"]:
        written = f"{t.get('step') or 'parts'} {t['written_at'] or '?'}"
        by = f"run {t['run_id']}" if t.get("run_id") else ""
        parts = f" ({t['parts']} parts)" if "parts" in t else ""
        stale = "" if t.get("matches_manifest", True) else "  CHANGED SINCE ITS MANIFEST"
        lines.append(
            f"  {t['table']:<22} {t['rows']:>12,}  {t['sha256'][:12]}  {written}  {by}"
            f"{parts}{stale}".rstrip()
        )
    lines += ["", f"runs (newest first, {len(report['runs'])} of {report['runs_total']})"]
    if not report["runs"]:
        lines.append("  (none recorded)")
    for r in report["runs"]:
        took = f"{r['seconds']:.0f} s" if r["seconds"] is not None else f"pid {r['pid']}"
        lines.append(
            f"  {r['started_at']}  {r['state']:<22} {r['flow']:<24} {took:>9}  {r['run_id']}"
        )
    failures = report["open_failures"]
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


def _similar(args: argparse.Namespace, settings: Settings) -> int:
    from flows.similar import similar_items
    from genair_core.index import ItemLookupError
    from storage.index import IndexFileError
    from storage.store import MissingTableError

    if args.k < 1:
        print(f"genair: --k must be at least 1 (got {args.k})", file=sys.stderr)
        return 2
    try:
        result = similar_items(settings, args.item, k=args.k, space=args.space)
    except ItemLookupError as err:
        print(f"genair: {err}", file=sys.stderr)
        for item_id, title in err.candidates:
            print(f"  {item_id}\t{title or ''}", file=sys.stderr)
        return 2
    except (IndexFileError, MissingTableError) as err:
        print(f"genair: {err}; `genair run --until index` builds it", file=sys.stderr)
        return 1
    if result.stale:
        print(f"genair: warning: {result.stale}", file=sys.stderr)
    print(f"items like {result.item_id} {result.title or ''} ({result.space} space)")
    for rank, row in enumerate(result.items, start=1):
        print(f"{rank:>3}  {row.score:.4f}  {row.item_id}  {row.title or ''}")
        if row.archetype:
            print(f"               {_cut(row.archetype, 100)}")
    return 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _config(args: argparse.Namespace, settings: Settings) -> int:
    print(settings.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
