"""What the `genair` command shows on the terminal and what goes to its log.

- An error is one line on stderr (`report_error`), with its traceback under --debug; its exit
  status says what kind it was (EXIT_*).
- A flow-running command (run, refresh, backfill) shows its progress view on the terminal and
  sends the log of Prefect, vLLM and torch to <storage root>/logs/genair-<time>-<pid>.log
  (`run_console`), and to the terminal too with --verbose.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, TextIO

from tasks.settings import Settings

if TYPE_CHECKING:
    from flows.progress_view import ProgressView

EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command killed by it
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class UserError(Exception):
    """Something the user asked for that cannot be done as asked (exit status 2)."""


def report_error(args: argparse.Namespace, err: BaseException, code: int) -> int:
    """`err` as one line on stderr (and its traceback with --debug); returns `code`. A user
    error keeps every line of its message (each wrong setting), joined into one; a failure shows
    its first line, its type and where the log is."""
    if args.debug:
        traceback.print_exception(err, file=sys.stderr)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    if code == EXIT_USER_ERROR:
        print(f"genair: {' '.join([lines[0], '; '.join(lines[1:])]).strip()}", file=sys.stderr)
        return code
    message = lines[0]
    where = f" (log: {args.log_path})" if getattr(args, "log_path", None) else ""
    hint = "" if args.debug else "; --debug shows the traceback"
    print(f"genair: failed: {type(err).__name__}: {message}{where}{hint}", file=sys.stderr)
    return code


def smoke_note(settings: Settings) -> str:
    return (
        f"profile {settings.profile}: a SMOKE RUN on trimmed data and training, to check that the "
        "pipeline runs end to end; its numbers are not results"
    )


@contextmanager
def run_console(settings: Settings, args: argparse.Namespace) -> Iterator[ProgressView]:
    """The progress view on the terminal and the log in <root>/logs/genair-<time>-<pid>.log
    (`args.log_path`) for the block. Unless --verbose, the terminal shows nothing else: the
    handlers that print logs (Prefect's console handler, vLLM's, Python's warnings) write to the
    file instead, and so does whatever this process and its children write on stdout and stderr
    (C-level warnings of torch, vLLM's workers). Prefect's API log handler (the UI) is
    untouched."""
    from flows.progress_view import ProgressView, StepLogHandler
    from genair_core import progress
    from storage.runs import new_log_path
    from storage.store import Store

    args.log_path = new_log_path(Store(settings.storage.root))
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
