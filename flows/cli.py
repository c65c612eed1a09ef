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

This module runs a command: parse, load the settings, run, turn every way out into an exit status.
The commands and their options are declared in flows/cli_table.py, written in
flows/cli_commands.py; what reaches the terminal and what goes to the log, in flows/cli_console.py.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from flows.cli_console import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USER_ERROR,
    UserError,
    report_error,
)
from flows.cli_table import parse_args
from tasks.settings import ConfigError, load_settings


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
    args = parse_args(argv)
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
        return report_error(args, err, EXIT_USER_ERROR)
    except Exception as err:
        return report_error(args, err, EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
