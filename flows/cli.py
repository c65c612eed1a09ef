"""The `genair` command.

genair run [--force] [--from STAGE] [--until STAGE]   run the pipeline flow
genair sql "SELECT ..." [--csv]                  query the tables through DuckDB views
genair config [--config genair.toml]             print the effective, validated settings
genair similar ITEM [--k 10] [--space calibrated|raw]   the items most like one item
"""

from __future__ import annotations

import argparse
import os
import sys
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

    sql = commands.add_parser("sql", help="query the tables (one DuckDB view per table)")
    sql.add_argument("query")
    sql.add_argument("--csv", action="store_true", help="machine-readable CSV on stdout")
    sql.add_argument("--max-rows", type=int, default=40, help="rows shown in the readable table")
    sql.set_defaults(command=_sql)

    show = commands.add_parser("config", help="print the effective settings as JSON")
    show.set_defaults(command=_config)

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
    for sub in (run, sql, show, similar):
        sub.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    configure_environment(settings)
    # Imported here so that the environment above is in place before Prefect reads its settings.
    from flows.pipeline import genair_pipeline
    from genair_core.run_summary import render_run_summary

    config_path = str(args.config) if args.config else None
    try:
        summary = genair_pipeline(
            config_path=config_path, force=args.force, until=args.until, start=args.start
        )
    except (ValueError, OSError) as err:
        print(f"genair: run failed: {err}", file=sys.stderr)
        return 1
    print(render_run_summary(summary))
    print(f"tables: {settings.storage.root / 'tables'}")
    return 0


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
