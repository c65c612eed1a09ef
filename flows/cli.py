"""The `genair` command.

genair run [--force] [--from STAGE] [--until STAGE]   run the pipeline flow (genair-full)
genair refresh [--recommenders POLICY]           the nightly refresh: only what changed
genair backfill (ITEM_ID ... | --since DAY | --all) [--dry-run]   regenerate chosen items
genair similar ITEM [--k 10] [--space calibrated|raw]   the items most like one item
genair sql "SELECT ..." [--csv]                  query the tables through DuckDB views
genair report [--output PATH]                    write the HTML report of the storage root
genair status [--runs 10] [--json]               tables, last runs and open failures (no Prefect)
genair config                                    print the effective, validated settings

Exit status: 0 when everything asked for succeeded, 2 for a user error (bad settings, arguments,
profile, item or SQL), 1 when a stage or a command failed. An error is one line on stderr; its
traceback is shown with --debug. During run, refresh and backfill, the log of Prefect, vLLM and
torch goes to <storage root>/logs/genair-<time>.log, and to the terminal too with --verbose.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from flows.stages import BACKFILL, FULL, REFRESH, STAGES, stages_of
from genair_core.environment import set_run_environment
from tasks.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from flows.params import FlowParams
    from flows.progress_view import ProgressView

EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command killed by it
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class UserError(Exception):
    """Something the user asked for that cannot be done as asked (exit status 2)."""


class Terminated(BaseException):
    """SIGTERM arrived (a plain `kill`, a container stop). Raised like KeyboardInterrupt, so that
    the way out runs: training stops at its next batch, the run is recorded Crashed, and the
    temporary Prefect server and engine processes are stopped at exit instead of orphaned."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated while the command runs. Prefect's flow engine installs its own
    handler during a flow and, once the flow has crashed, hands the signal back to this one."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """The command's exit status; every error ends here, as one line (and a traceback with
    --debug): 2 for user errors, 1 for failures."""
    args = _parse_args(argv)
    try:
        with _sigterm_raises():
            settings = load_settings(args.config, profile=getattr(args, "profile", None))
            code = args.command(args, settings)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except KeyboardInterrupt:
        print("genair: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("genair: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:  # `genair sql ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (UserError, ConfigError) as err:
        return _report_error(args, err, EXIT_USER_ERROR)
    except Exception as err:
        return _report_error(args, err, EXIT_FAILED)


def _report_error(args: argparse.Namespace, err: BaseException, code: int) -> int:
    if args.debug:
        traceback.print_exception(err, file=sys.stderr)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    if code == EXIT_USER_ERROR:  # every line counts (each wrong setting): joined into one
        print(f"genair: {' '.join([lines[0], '; '.join(lines[1:])]).strip()}", file=sys.stderr)
        return code
    message = lines[0]
    where = f" (log: {args.log_path})" if getattr(args, "log_path", None) else ""
    hint = "" if args.debug else "; --debug shows the traceback"
    print(f"genair: failed: {type(err).__name__}: {message}{where}{hint}", file=sys.stderr)
    return code


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    # The same flags before or after the command: the command's copy has no default, so it
    # only sets a flag given after it.
    before, after = (argparse.ArgumentParser(add_help=False) for _ in range(2))
    for flags, default in ((before, None), (after, argparse.SUPPRESS)):
        flags.add_argument(
            "--config",
            type=Path,
            default=default,
            help="TOML settings (default: ./genair.toml if present)",
        )
        flags.add_argument(
            "--verbose",
            action="store_true",
            default=default or False,
            help="show the log (Prefect, vLLM, torch) on the terminal too",
        )
        flags.add_argument(
            "--debug",
            action="store_true",
            default=default or False,
            help="show the traceback of an error",
        )
    parser = argparse.ArgumentParser(
        prog="genair",
        description="Archetype item vectors from a product catalog (vLLM) and sequential "
        "recommenders trained on them, as Prefect flows over Parquet tables.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[before],
        epilog=_examples(
            "genair run",
            "GENAIR_LLM__MAX_ITEMS=64 genair run --until pooling",
            "genair status",
            'genair sql "SELECT split, count(*) FROM sequences GROUP BY split"',
            "genair COMMAND --help",
        )
        + "\n\nexit status: 0 ok, 1 a stage or command failed, 2 a user error",
    )
    profile = argparse.ArgumentParser(add_help=False)
    profile.add_argument(
        "--profile",
        default=None,
        metavar="NAME",
        help="lay the config file's [profiles.NAME] over its settings (default: $GENAIR_PROFILE)",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND", dest="command_name")

    def command(
        name: str, summary: str, description: str, examples: list[str], *, profiled: bool = False
    ) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=_examples(*examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[after, profile] if profiled else [after],
        )

    run = command(
        "run",
        "run the pipeline flow (genair-full)",
        "Run the pipeline's stages from --from to --until. Steps whose inputs did not change are "
        "skipped. Shows each stage's progress and ends with the results table and where the "
        f"report and the log are.\n\n{_stage_list(FULL)}",
        [
            "genair run",
            "genair run --until pooling --profile quick",
            "genair run --from negatives          # retrain the recommenders on today's vectors",
            "genair run --from results            # rebuild the results table",
        ],
        profiled=True,
    )
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
        help=f"first stage to run; earlier stages' tables must exist (default: {STAGES[0]})",
    )
    run.set_defaults(command=_run)

    policy = {
        "choices": ("never", "if-inputs-changed", "always"),
        "default": None,
        "help": "retrain and evaluate the recommenders never, only runs whose inputs changed, or "
        "always (default: the [refresh] recommenders setting)",
    }
    refresh = command(
        "refresh",
        "the nightly refresh (genair-nightly-refresh): only what changed",
        "Ingest the latest catalog and interactions, send only new or changed items through the "
        "LLM, project them with the stored PCA bases and calibration adapter, rebuild the "
        "indexes whose vectors changed, and retrain as --recommenders says."
        f"\n\n{_stage_list(REFRESH)}",
        ["genair refresh", "genair refresh --recommenders never"],
        profiled=True,
    )
    refresh.add_argument("--recommenders", **policy)
    refresh.set_defaults(command=_refresh)

    backfill = command(
        "backfill",
        "regenerate chosen items' archetypes and embeddings (genair-backfill)",
        "Regenerate the archetypes and embeddings of the chosen items even when their metadata "
        "is unchanged (after a prompt or model change), then the stages downstream. Give item "
        f"ids, --since or --all.\n\n{_stage_list(BACKFILL)}",
        [
            "genair backfill 50 181 --dry-run",
            "genair backfill --since 2026-11-01",
            "genair backfill --all --recommenders never",
        ],
        profiled=True,
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

    similar = command(
        "similar",
        "the items most like one item (from the FAISS index of a vector space)",
        "The top-k items by cosine, with title, score and the first line of each one's "
        "archetype. Exit status 2 when ITEM names no item or several (they are listed).",
        [
            'genair similar "toy story" --k 5 --space raw',
            "genair similar 50 --profile quick",
        ],
        profiled=True,
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

    sql = command(
        "sql",
        "query the tables (one DuckDB view per table)",
        "Run one SQL statement on DuckDB views of the tables (one view per table, named as the "
        "table, plus `runs` and `current_archetypes`). --csv writes CSV on stdout; list and "
        "struct columns become JSON text.",
        [
            'genair sql "SELECT split, count(*) FROM sequences GROUP BY split"',
            'genair sql "SELECT reason, count(*) FROM rejects GROUP BY reason" --csv',
            'genair sql "SELECT * FROM items LIMIT 5" --csv > items.csv',
            'genair sql "SELECT count(*) FROM current_archetypes" --profile quick',
        ],
        profiled=True,
    )
    sql.add_argument("query")
    sql.add_argument("--csv", action="store_true", help="machine-readable CSV on stdout")
    sql.add_argument("--max-rows", type=int, default=40, help="rows shown in the readable table")
    sql.set_defaults(command=_sql)

    report = command(
        "report",
        "write the HTML report of what the storage holds",
        "Write <storage root>/reports/report.html from the tables and reports the runs left "
        "(results table, retrieval, the last runs) and print its path.",
        ["genair report", "genair report --output /tmp/genair-report.html --profile quick"],
        profiled=True,
    )
    report.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="PATH",
        help="write it there instead (default: <storage root>/reports/report.html)",
    )
    report.set_defaults(command=_report)

    status = command(
        "status",
        "what the storage holds: tables, the last runs, open failures",
        "Reads the storage root only (Prefect is not started): every table's rows, hash and the "
        "run that wrote it, the last runs with their state (a run whose process is gone reads "
        "Crashed), and the failures no later run has settled.",
        ["genair status", "genair status --runs 3 --json", "genair status --profile quick"],
        profiled=True,
    )
    status.add_argument("--runs", type=int, default=10, help="how many runs (default: 10)")
    status.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    status.set_defaults(command=_status)

    show = command(
        "config",
        "print the effective settings as JSON",
        "Print the settings a run would use, validated: the config file, the profile laid over "
        "it, then GENAIR_<SECTION>__<KEY> environment variables.",
        [
            "genair config",
            "genair config --profile quick",
            "GENAIR_LLM__MAX_ITEMS=64 genair config",
        ],
        profiled=True,
    )
    show.set_defaults(command=_config)
    return parser.parse_args(argv)


def _stage_list(flow: str) -> str:
    """The stages `flow` runs, one line each (recommender stages marked where a policy says)."""
    stages = stages_of(flow)
    width = max(len(stage.name) for stage in stages)
    lines = [f"  {stage.name:<{width}}  {stage.does}" for stage in stages]
    if flow != FULL:
        marked = [stage.name for stage in stages if stage.recommenders]
        lines.append(f"  ({', '.join(marked)}: as --recommenders says)")
    return "stages:\n" + "\n".join(lines)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


# A flow-running command: its parameters' model in flows.params, and its flow's module and name
# (imported once the environment is in place: Prefect reads it at import).
FLOWS = {
    "run": ("FullParams", "flows.pipeline", "genair_full"),
    "refresh": ("RefreshParams", "flows.refresh", "genair_nightly_refresh"),
    "backfill": ("BackfillParams", "flows.backfill", "genair_backfill"),
}


def _run(args: argparse.Namespace, settings: Settings) -> int:
    params = _flow_params(args, force=args.force, start=args.start, until=args.until)
    return _run_flow(args, settings, _flow_call(args, params))


def _refresh(args: argparse.Namespace, settings: Settings) -> int:
    params = _flow_params(args, recommenders=args.recommenders)
    return _run_flow(args, settings, _flow_call(args, params))


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    params = _flow_params(
        args,
        items=args.items,
        since=args.since,
        all_items=args.all_items,
        dry_run=args.dry_run,
        recommenders=args.recommenders,
    )
    _check_items_known(settings, params.items)
    return _run_flow(args, settings, _flow_call(args, params))


def _flow_params(args: argparse.Namespace, **fields: object) -> FlowParams:
    """The command's flow parameters validated as the flow will (flows.params): a wrong one is a
    user error before Prefect starts."""
    from flows import params

    model = getattr(params, FLOWS[args.command_name][0])
    try:
        return model.checked(config_path=_config_path(args), profile=args.profile, **fields)
    except ValueError as err:
        raise UserError(str(err)) from None


def _check_items_known(settings: Settings, item_ids: list[str]) -> None:
    """Item ids a backfill names that the ingested catalog does not hold: a user error."""
    if not item_ids:
        return
    from storage.sql import query
    from storage.store import Store

    store = Store(settings.storage.root)
    if not store.exists("items"):
        return  # the flow says what is missing
    known = query(
        store, "SELECT item_id FROM items WHERE list_contains($ids, item_id)", ids=item_ids
    )
    found = {row[0] for row in known.fetchall()} if known is not None else set()
    unknown = [item_id for item_id in item_ids if item_id not in found]
    if unknown:
        shown = ", ".join(unknown[:10]) + (
            f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        )
        raise UserError(f"unknown item id(s), not in the ingested catalog: {shown}")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from None


def _config_path(args: argparse.Namespace) -> str | None:
    return str(args.config) if args.config else None


def _flow_call(args: argparse.Namespace, params: FlowParams) -> Callable[[], dict]:
    """The command's flow called with `params`, imported only when called (see FLOWS)."""

    def call() -> dict:
        _, module, name = FLOWS[args.command_name]
        return getattr(importlib.import_module(module), name)(**params.model_dump())

    return call


def _run_flow(args: argparse.Namespace, settings: Settings, run: Callable[[], dict]) -> int:
    """Run a flow (imported inside `run`, once the environment is in place) with the progress
    view on the terminal and the log in a file, then print how it went."""
    set_run_environment(settings.prefect.ephemeral_startup_timeout_s, verbose=args.verbose)
    with run_console(settings, args):
        summary = run()
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
    from genair_core.run_summary import render_run_summary

    return render_run_summary(summary, *_last_run(settings))


def _overview(settings: Settings, summary: dict) -> str:
    """The end of a run on the terminal: the run and its stages, the results table when the
    run trained or tabulated recommenders, and where the report and the tables are."""
    from genair_core.run_summary import render_run_overview, results_table

    lines = [render_run_overview(summary, *_last_run(settings))]
    if "recommenders" in summary or "results" in summary:
        lines += [
            "recommenders, test, full ranking (mean ± std over seeds):",
            "",
            results_table(_grid_metric_rows(settings)),
        ]
    if settings.smoke_run:
        lines.append(smoke_note(settings))
    root = settings.storage.root
    html = root / "reports" / "report.html"
    if html.is_file():
        lines.append(f"report: {html}")
    elif "results" in summary and summary["results"].get("report"):
        lines.append(f"report: {summary['results']['report']}")
    lines.append(f"tables: {root / 'tables'}")
    return "\n".join(lines)


def smoke_note(settings: Settings) -> str:
    return (
        f"profile {settings.profile}: a SMOKE RUN on trimmed data and training, to check that the "
        "pipeline runs end to end; its numbers are not results"
    )


def _grid_metric_rows(settings: Settings) -> list[dict]:
    """The `metrics` rows of the configured runs (and the popularity baseline) for the results
    table; none when no run has finished."""
    from storage.sql import query
    from storage.store import Store

    cfg = settings.recommenders
    wanted = {(b, v, s, cfg.for_backbone(b)[1].loss) for b, v, s in cfg.runs()}
    store = Store(settings.storage.root)
    if "metrics" not in store.existing_datasets():
        return []
    relation = query(
        store,
        'SELECT backbone, variant, seed, loss, protocol, split, "group", metric, value '
        "FROM metrics WHERE split = 'test' AND protocol = 'full' AND \"group\" = 'all'",
    )
    rows = relation.to_arrow_table().to_pylist() if relation is not None else []
    return [
        row
        for row in rows
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


@contextmanager
def run_console(settings: Settings, args: argparse.Namespace) -> Iterator[ProgressView]:
    """The progress view on the terminal and the log in <root>/logs/genair-<time>.log
    (`args.log_path`) for the block. Unless --verbose, the terminal shows nothing else: the
    handlers that print logs (Prefect's console handler, vLLM's, Python's warnings) write to the
    file instead, and so does whatever this process and its children write on stdout and stderr
    (C-level warnings of torch, vLLM's workers). Prefect's API log handler (the UI) is
    untouched."""
    from flows.progress_view import ProgressView, StepLogHandler
    from genair_core import progress

    logs = settings.storage.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    args.log_path = (
        logs / f"genair-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}.log"
    )
    with (
        open(args.log_path, "a", encoding="utf-8", buffering=1) as log_file,
        routed_logs(log_file, quiet=not args.verbose) as terminal,
    ):
        view = ProgressView(terminal, live=False if args.verbose else None)
        steps = StepLogHandler(view)
        task_runs = logging.getLogger("prefect.task_runs")
        task_runs.addHandler(steps)
        try:
            with view, progress.listening(view):
                view.message(f"genair {args.command_name}: log in {args.log_path}")
                if settings.smoke_run:
                    view.message(smoke_note(settings))
                yield view
        finally:
            task_runs.removeHandler(steps)


@contextmanager
def routed_logs(log_file: TextIO, *, quiet: bool) -> Iterator[TextIO]:
    """Python logging and warnings into `log_file` for the block; with `quiet`, the console
    handlers set up so far are detached and file descriptors 1 and 2 point to `log_file`, so the
    terminal gets nothing but what is written to the stream this yields (the terminal's
    stderr). After a quiet block, Prefect's console handler shows warnings only."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.formatters import PrefectFormatter
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # Prefect's handlers in place before they are changed

    to_file = logging.StreamHandler(log_file)
    to_file.setFormatter(
        PrefectFormatter(
            format=LOG_FORMAT,
            flow_run_fmt=LOG_FORMAT.replace("%(name)s", "flow run %(flow_run_name)r"),
            task_run_fmt=LOG_FORMAT.replace("%(name)s", "task run %(task_run_name)r"),
        )
    )
    detached: list[tuple[logging.Logger, logging.Handler]] = []
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    if quiet:
        for logger in loggers:
            for handler in list(logger.handlers):
                if _prints(handler, PrefectConsoleHandler):
                    logger.removeHandler(handler)
                    detached.append((logger, handler))
    # The root logger, and the loggers that do not pass their records on to it.
    receivers = list(
        dict.fromkeys([logging.getLogger(), *(lg for lg, _ in detached if not lg.propagate)])
    )
    for logger in receivers:
        logger.addHandler(to_file)
    captured_warnings = logging._warnings_showwarning is not None  # type: ignore[attr-defined]
    logging.captureWarnings(True)
    try:
        with ExitStack() as stack:
            terminal = sys.stderr
            if quiet:
                terminal = stack.enter_context(_std_streams_into(log_file))
            yield terminal
    finally:
        if not captured_warnings:
            logging.captureWarnings(False)
        for logger in receivers:
            logger.removeHandler(to_file)
        for logger, handler in detached:
            if isinstance(handler, PrefectConsoleHandler):
                # Back for the rest of the process, but for warnings only: the temporary
                # server's closing line at exit is not one.
                handler.setLevel(max(handler.level, logging.WARNING))
            logger.addHandler(handler)


@contextmanager
def _std_streams_into(log_file: TextIO) -> Iterator[TextIO]:
    """File descriptors 1 and 2 (stdout and stderr of this process and of its children) write
    to `log_file` for the block; yields a stream on the stderr they had before."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    for fd in saved:
        os.dup2(log_file.fileno(), fd)
    try:
        with open(saved[2], "w", encoding="utf-8", buffering=1, closefd=False) as terminal:
            yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def _prints(handler: logging.Handler, console_class: type) -> bool:
    """A handler that writes to the terminal (stdout or stderr), not to a file or the API."""
    if isinstance(handler, console_class):
        return True
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream = getattr(handler, "stream", None)
    return stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


def _sql(args: argparse.Namespace, settings: Settings) -> int:
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


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from tasks.report import write_report

    if args.output is not None:
        print(write_report(settings, args.output))
    else:
        print(write_report(settings))
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


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _config(args: argparse.Namespace, settings: Settings) -> int:
    import json

    labels = {"profile": settings.profile, "smoke_run": settings.smoke_run}
    print(json.dumps({**labels, **settings.model_dump(mode="json")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
