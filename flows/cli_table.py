"""The `genair` command line as data: each command once, with its help, examples, options and the
function that runs it (flows.cli_commands); `parse_args` builds the argparse parser from it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from flows import cli_commands
from flows.stages import BACKFILL, FULL, REFRESH, STAGES, stages_of
from genair_core.tables import VECTOR_SPACES
from tasks.settings import Settings


@dataclass(frozen=True)
class Option:
    """One `add_argument` call: its flags (or positional name) and keyword arguments."""

    flags: tuple[str, ...]
    spec: dict[str, Any]


def option(*flags: str, **spec: Any) -> Option:
    return Option(flags, spec)


@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # its line in `genair --help`
    description: str  # the text of `genair NAME --help`
    examples: tuple[str, ...]
    options: tuple[Option, ...]
    run: Callable[[argparse.Namespace, Settings], int]  # the exit status


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


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from None


DESCRIPTION = (
    "Archetype item vectors from a product catalog (vLLM) and sequential recommenders trained on "
    "them, as Prefect flows over Parquet tables."
)
EPILOG = (
    _examples(
        "genair run",
        "GENAIR_LLM__MAX_ITEMS=64 genair run --until pooling",
        "genair status",
        'genair sql "SELECT split, count(*) FROM sequences GROUP BY split"',
        "genair COMMAND --help",
    )
    + "\n\nexit status: 0 ok, 1 a stage or command failed, 2 a user error"
)
# Accepted before or after the command (see parse_args).
GLOBAL_OPTIONS = (
    option(
        "--config",
        type=Path,
        default=None,
        help="TOML settings (default: ./genair.toml if present)",
    ),
    option(
        "--verbose",
        action="store_true",
        default=False,
        help="show the log (Prefect, vLLM, torch) on the terminal too",
    ),
    option("--debug", action="store_true", default=False, help="show the traceback of an error"),
)
# Every command takes it.
PROFILE = option(
    "--profile",
    default=None,
    metavar="NAME",
    help="lay the config file's [profiles.NAME] over its settings (default: $GENAIR_PROFILE)",
)
RECOMMENDERS_POLICY = option(
    "--recommenders",
    choices=("never", "if-inputs-changed", "always"),
    default=None,
    help="retrain and evaluate the recommenders never, only runs whose inputs changed, or "
    "always (default: the [refresh] recommenders setting)",
)

COMMANDS = (
    Command(
        name="run",
        summary="run the pipeline flow (genair-full)",
        description="Run the pipeline's stages from --from to --until. Steps whose inputs did "
        "not change are skipped. Shows each stage's progress and ends with the results table "
        f"and where the report and the log are.\n\n{_stage_list(FULL)}",
        examples=(
            "genair run",
            "genair run --until pooling --profile quick",
            "genair run --from negatives          # retrain the recommenders on today's vectors",
            "genair run --from results            # rebuild the results table",
        ),
        options=(
            option("--force", action="store_true", help="rerun steps whose inputs are unchanged"),
            option(
                "--until",
                default=STAGES[-1],
                metavar="STAGE",
                help=f"last stage to run: {', '.join(STAGES)} (default: {STAGES[-1]})",
            ),
            option(
                "--from",
                dest="start",
                default=STAGES[0],
                metavar="STAGE",
                help="first stage to run; earlier stages' tables must exist "
                f"(default: {STAGES[0]})",
            ),
        ),
        run=cli_commands.run,
    ),
    Command(
        name="refresh",
        summary="the nightly refresh (genair-nightly-refresh): only what changed",
        description="Ingest the latest catalog and interactions, send only new or changed items "
        "through the LLM, project them with the stored PCA bases and calibration adapter, "
        "rebuild the indexes whose vectors changed, and retrain as --recommenders says."
        f"\n\n{_stage_list(REFRESH)}",
        examples=("genair refresh", "genair refresh --recommenders never"),
        options=(RECOMMENDERS_POLICY,),
        run=cli_commands.refresh,
    ),
    Command(
        name="backfill",
        summary="regenerate chosen items' archetypes and embeddings (genair-backfill)",
        description="Regenerate the archetypes and embeddings of the chosen items even when "
        "their metadata is unchanged (after a prompt or model change), then the stages "
        f"downstream. Give item ids, --since or --all.\n\n{_stage_list(BACKFILL)}",
        examples=(
            "genair backfill 50 181 --dry-run",
            "genair backfill --since 2026-11-01",
            "genair backfill --all --recommenders never",
        ),
        options=(
            option("items", nargs="*", metavar="ITEM_ID", help="item ids to regenerate"),
            option(
                "--since",
                type=_day,
                default=None,
                metavar="DAY",
                help="items added or changed on or after DAY (UTC, YYYY-MM-DD)",
            ),
            option("--all", dest="all_items", action="store_true", help="every item"),
            option(
                "--dry-run",
                action="store_true",
                help="report what would be regenerated; write nothing",
            ),
            RECOMMENDERS_POLICY,
        ),
        run=cli_commands.backfill,
    ),
    Command(
        name="cold-start",
        summary="score the runs trained as of T on every interaction after it (genair-cold-start)",
        description="In a storage root whose runs were trained with `[dataset] as_of = T` and "
        "whose tables were refreshed since (genair refresh --recommenders never), score every "
        "interaction after T with each finished run and the baselines (popularity, content-only "
        "on both spaces, random among the new items), against the whole catalog. Writes the "
        "`cold_start_targets` rows and reports/cold_start.md.",
        examples=("genair cold-start --as-of 1998-02-01",),
        options=(
            option(
                "--as-of",
                required=True,
                metavar="TIME",
                help="the time the runs were trained as of (ISO 8601; a date is its midnight UTC)",
            ),
        ),
        run=cli_commands.cold_start,
    ),
    Command(
        name="similar",
        summary="the items most like one item (from the FAISS index of a vector space)",
        description="The top-k items by cosine, with title, score and the first line of each "
        "one's archetype: read from the nightly `similar_items` export when its current version "
        "was made from today's index of that space with at least k neighbours an item, else "
        "searched in the index. Exit status 2 when ITEM names no item or several (they are "
        "listed).",
        examples=(
            'genair similar "toy story" --k 5 --space raw',
            "genair similar 50 --profile quick",
        ),
        options=(
            option("item", metavar="ITEM", help="an item_id or a piece of a title"),
            option("--k", type=int, default=10, help="how many items (default: 10)"),
            option(
                "--space",
                choices=sorted(VECTOR_SPACES),
                default="calibrated",
                help="calibrated_embeddings or the raw item_embeddings (default: calibrated)",
            ),
        ),
        run=cli_commands.similar,
    ),
    Command(
        name="recommend",
        summary="a user's list from the nightly `recommendations` table",
        description="Print USER's top-K list from the Delta table `recommendations` (the "
        "`recommend` stage's export), with titles; new items (the served run never trained on "
        "them) are marked. --version reads an earlier version the table keeps. Exit status 2 "
        "for a user the table does not hold.",
        examples=("genair recommend 196", "genair recommend 196 --version 3"),
        options=(
            option("user", metavar="USER", help="a user_id"),
            option("--version", type=int, default=None, help="a kept version (default: current)"),
        ),
        run=cli_commands.recommend,
    ),
    Command(
        name="sql",
        summary="query the tables (one DuckDB view per table)",
        description="Run one SQL statement on DuckDB views of the tables (one view per table, "
        "named as the table, plus `runs` and `current_archetypes`; a Delta table's view is its "
        "current version). --csv writes CSV on stdout; "
        "list and struct columns become JSON text.",
        examples=(
            'genair sql "SELECT split, count(*) FROM sequences GROUP BY split"',
            'genair sql "SELECT reason, count(*) FROM rejects GROUP BY reason" --csv',
            'genair sql "SELECT * FROM items LIMIT 5" --csv > items.csv',
            'genair sql "SELECT count(*) FROM current_archetypes" --profile quick',
        ),
        options=(
            option("query"),
            option("--csv", action="store_true", help="machine-readable CSV on stdout"),
            option("--max-rows", type=int, default=40, help="rows shown in the readable table"),
        ),
        run=cli_commands.sql,
    ),
    Command(
        name="report",
        summary="write the HTML report of what the storage holds",
        description="Write <storage root>/reports/report.html from the tables and reports the "
        "runs left (results table, retrieval, the last runs) and print its path.",
        examples=(
            "genair report",
            "genair report --output /tmp/genair-report.html --profile quick",
        ),
        options=(
            option(
                "--output",
                type=Path,
                default=None,
                metavar="PATH",
                help="write it there instead (default: <storage root>/reports/report.html)",
            ),
        ),
        run=cli_commands.report,
    ),
    Command(
        name="status",
        summary="what the storage holds: tables, the last runs, open failures",
        description="Reads the storage root only (Prefect is not started): every table's rows, "
        "hash and the run that wrote it, the last runs with their state (a run whose process is "
        "gone reads Crashed), and the failures no later run has settled.",
        examples=(
            "genair status",
            "genair status --runs 3 --json",
            "genair status --profile quick",
        ),
        options=(
            option("--runs", type=int, default=10, help="how many runs (default: 10)"),
            option("--json", action="store_true", help="machine-readable JSON on stdout"),
        ),
        run=cli_commands.status,
    ),
    Command(
        name="config",
        summary="print the effective settings as JSON",
        description="Print the settings a run would use, validated: the config file, the "
        "profile laid over it, then GENAIR_<SECTION>__<KEY> environment variables.",
        examples=(
            "genair config",
            "genair config --profile quick",
            "GENAIR_LLM__MAX_ITEMS=64 genair config",
        ),
        options=(),
        run=cli_commands.config,
    ),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """`argv` (default: sys.argv) parsed by the table; `command` is the function to run and
    `command_name` its name."""
    # The same flags before or after the command: the command's copy has no default, so it
    # only sets a flag given after it.
    before, after, profile = (argparse.ArgumentParser(add_help=False) for _ in range(3))
    for global_option in GLOBAL_OPTIONS:
        before.add_argument(*global_option.flags, **global_option.spec)
        after.add_argument(
            *global_option.flags, **{**global_option.spec, "default": argparse.SUPPRESS}
        )
    profile.add_argument(*PROFILE.flags, **PROFILE.spec)
    parser = argparse.ArgumentParser(
        prog="genair",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[before],
        epilog=EPILOG,
    )
    subparsers = parser.add_subparsers(required=True, metavar="COMMAND", dest="command_name")
    for command in COMMANDS:
        sub = subparsers.add_parser(
            command.name,
            help=command.summary,
            description=command.description,
            epilog=_examples(*command.examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[after, profile],
        )
        for command_option in command.options:
            sub.add_argument(*command_option.flags, **command_option.spec)
        sub.set_defaults(command=command.run)
    return parser.parse_args(argv)
