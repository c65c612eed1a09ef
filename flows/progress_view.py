"""The terminal's view of a run: genair_core.progress events as live bars (rich) on a terminal,
as plain lines anywhere else (CI, pipes, tests): at most one per stage every `interval_s` seconds
(a part: every 4 × `interval_s`), and one when it ends; and one line per finished Prefect step.

    with ProgressView(stream) as view, progress.listening(view):
        run()

A stage shows from its first advance or note, so work that was planned but never started (the
archetypes of a run that stops at pooling) stays out of sight. A part ("recommenders/<run>")
shows under its stage while it runs and goes when it ends.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from genair_core.progress import Event

# Steps whose progress the stages already show, one task run per batch or per recommender run.
STEPS_SHOWN_AS_STAGES = ("generate-archetypes", "train-", "record-archetype-failure")
_TASK_RUN_SUFFIX = re.compile(r"-[0-9a-f]{3}$")  # Prefect's task run names: "<task>-3fa"
RATE_WINDOW_S = 60.0  # rates and times left are over the last minute ...
RATE_WINDOW_UNITS = 4  # ... and the last 4 units at least, for units that take minutes (runs)
# No rate before this share of the work is done: the first item out of a batch says how long the
# engine took to start, not how fast it goes ("1/1,682 items, 34 s/item, 15 h left").
RATE_MIN_SHARE = 0.02


@dataclass
class StageState:
    name: str
    total: float | None = None
    completed: float = 0
    unit: str = "items"
    detail: str = ""
    began_at: float = 0.0
    began_with: float = 0  # units done when it began (a resumed run)
    visible: bool = False
    ended: bool = False
    ended_at: float = 0.0
    last_line_at: float | None = None
    task_id: TaskID | None = None

    @property
    def is_part(self) -> bool:
        return "/" in self.name

    marks: list[tuple[float, float]] = field(default_factory=list)  # (time, completed)

    def rate(self, now: float) -> float | None:
        """Units per second over the last RATE_WINDOW_S seconds and RATE_WINDOW_UNITS units up to
        the latest unit, or since the stage began while it is younger or once it ended; None
        before any unit is done, and while less than RATE_MIN_SHARE of a planned total is.

        The window drops what came before the work (an engine's start-up) and follows a rate
        that changes. Ending it at the latest advance rather than now keeps the rate of units
        that end minutes apart (recommender runs) from sagging between them; once the next
        advance is overdue, it counts as coming now, so a stalled stage slows down smoothly."""
        done = self.completed - self.began_with
        if self.ended and done > 0:
            elapsed = now - self.began_at
            return done / elapsed if elapsed > 0 else None
        pace = self._pace(now)
        return pace[0] if pace else None

    def eta_s(self, now: float) -> float | None:
        """Seconds until the planned total at the current rate, less the time already spent on
        the next advance."""
        pace = self._pace(now)
        if pace is None or self.total is None:
            return None
        rate, step, since_latest = pace
        left = max(self.total - self.completed, 0.0)
        if since_latest * rate > step:  # overdue: the next advance counts as coming now
            return max(left - step, 0.0) / rate
        return max(left / rate - since_latest, 0.0)

    def _pace(self, now: float) -> tuple[float, float, float] | None:
        """(units per second, units per advance, seconds since the latest advance)."""
        done = self.completed - self.began_with
        planned = (self.total or 0) - self.began_with
        if done <= 0 or done < RATE_MIN_SHARE * planned:
            return None
        latest_at = now
        for when, count in reversed(self.marks):  # when the count became what it is
            if count != self.completed:
                break
            latest_at = when
        since, done_then, first = self.began_at, self.began_with, 0
        for i, (when, count) in enumerate(self.marks):
            if not self._window_may_start_at(when, count, latest_at):
                break
            since, done_then, first = when, count, i + 1
        units = self.completed - done_then
        if latest_at <= since or units <= 0:  # or a failed batch took back what it reported
            return None
        step = units / len({count for _, count in self.marks[first:] if count > done_then})
        rate = units / (latest_at - since)
        if (now - latest_at) * rate > step:
            rate = (units + step) / (now - since)
        return rate, step, now - latest_at

    def mark(self, now: float) -> None:
        """Record the count at `now`, keeping one mark from before the window."""
        self.marks.append((now, self.completed))
        while len(self.marks) > 1 and self._window_may_start_at(*self.marks[1], now):
            del self.marks[0]

    def _window_may_start_at(self, when: float, count: float, end: float) -> bool:
        return when <= end - RATE_WINDOW_S and self.completed - count >= RATE_WINDOW_UNITS


class ProgressView:
    """A progress listener (genair_core.progress) that draws on `stream`: rich bars when `live`
    (default: `stream` is a terminal), plain lines otherwise."""

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool | None = None,
        interval_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.interval_s = interval_s
        self.clock = clock
        self.stages: dict[str, StageState] = {}
        self._lock = threading.RLock()
        self._bars: Progress | None = None
        self._by_task: dict[TaskID, StageState] = {}  # what the bars' columns read

    def __enter__(self) -> ProgressView:
        if self.live:
            console = Console(file=self.stream, force_terminal=True)
            self._bars = Progress(
                TextColumn("{task.description}", table_column=Column(no_wrap=True)),
                BarColumn(bar_width=20),
                _CountColumn(self, table_column=Column(no_wrap=True)),
                _RateColumn(self, table_column=Column(no_wrap=True)),
                TextColumn(
                    "[dim]{task.fields[detail]}",
                    table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
                ),
                console=console,
                refresh_per_second=4,
                # What others print belongs in the log (flows/cli_console.py routes it), not
                # above the bars.
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            if self._bars is not None:
                self._bars.stop()
                self._bars = None

    def __call__(self, event: Event) -> None:
        with self._lock:
            now = self.clock()
            stage = self.stages.get(event.stage)
            if event.kind == "begin" or stage is None:
                stage = self._begin(event, now)
                if event.kind == "begin":
                    return
            if event.kind == "advance":
                stage.completed += event.amount
                stage.mark(now)
            if event.detail or event.kind == "end":  # what it was doing is over at its end
                stage.detail = event.detail
            if event.kind == "end":
                stage.ended = True
                stage.ended_at = now
            if not stage.visible:
                stage.visible = True
                self._show(stage)
            if self._bars is not None:
                self._draw(stage)
            else:
                self._line(stage, now, force=event.kind == "end")

    def step_finished(self, name: str, state: str) -> None:
        """A Prefect step (task run) ended in `state` ("Completed", "Failed", ...)."""
        if name.startswith(STEPS_SHOWN_AS_STAGES):
            return
        mark = "✓" if state == "Completed" else "✗"
        with self._lock:
            if self._bars is not None:
                style = "green" if state == "Completed" else "red"
                self._bars.console.print(f"[{style}]{mark}[/] {name}: {state}")
            else:
                self._write(f"{mark} {name}: {state}")

    def message(self, text: str) -> None:
        """A line of the command's own (where the log is)."""
        with self._lock:
            if self._bars is not None:
                self._bars.console.print(text, markup=False, highlight=False)
            else:
                self._write(text)

    def _begin(self, event: Event, now: float) -> StageState:
        old = self.stages.get(event.stage)
        stage = StageState(
            event.stage,
            total=event.total,
            completed=event.completed,
            unit=event.unit or "items",
            began_at=now,
            began_with=event.completed,
        )
        if old is not None:  # begun again (a retried task): the same row, counted afresh
            stage.visible, stage.task_id = old.visible, old.task_id
            if old.task_id is not None:
                self._by_task[old.task_id] = stage
        self.stages[event.stage] = stage
        return stage

    def _show(self, stage: StageState) -> None:
        if self._bars is not None:
            indent = "  " if stage.is_part else ""
            label = stage.name.split("/", 1)[-1]
            stage.task_id = self._bars.add_task(
                f"{indent}{label}", total=stage.total, completed=stage.completed, detail=""
            )
            self._by_task[stage.task_id] = stage

    def _draw(self, stage: StageState) -> None:
        assert self._bars is not None
        assert stage.task_id is not None
        if stage.ended and stage.is_part:
            self._bars.remove_task(stage.task_id)
            del self.stages[stage.name]
            self._by_task.pop(stage.task_id, None)
            return
        self._bars.update(
            stage.task_id, total=stage.total, completed=stage.completed, detail=stage.detail
        )
        if stage.ended:
            self._bars.stop_task(stage.task_id)

    def _line(self, stage: StageState, now: float, *, force: bool) -> None:
        # A part (one of several runs going at once) writes a quarter as often as a stage.
        interval = self.interval_s * (4 if stage.is_part else 1)
        due = stage.last_line_at is None or now - stage.last_line_at >= interval
        if not (due or force):
            return
        stage.last_line_at = now
        self._write(f"{stage.name}: {self._figures(stage, now)}")
        if stage.ended and stage.is_part:
            del self.stages[stage.name]

    def _figures(self, stage: StageState, now: float) -> str:
        """ "128/1,682 items (8%), 1.52 items/s, 17 min left; <detail>" or, once ended,
        "done: 1,682 items in 20 min (1.39 items/s); <detail>"."""
        count = _count(stage.completed)
        if stage.total is not None:
            count += f"/{_count(stage.total)}"
        count += f" {stage.unit}"
        if stage.total and not stage.ended:
            count += f" ({100 * stage.completed / stage.total:.0f}%)"
        rate = stage.rate(now)
        if stage.ended:
            parts = [f"done: {count} in {_duration(now - stage.began_at)}"]
            if rate is not None:
                parts[0] += f" ({_rate(rate, stage.unit)})"
        else:
            parts = [count]
            if rate is not None:
                parts.append(_rate(rate, stage.unit))
            eta = stage.eta_s(now)
            if eta is not None:
                parts.append(f"{_duration(eta)} left")
        text = ", ".join(parts)
        return f"{text}; {stage.detail}" if stage.detail else text

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def stage_of(self, task: Task) -> StageState | None:
        return self._by_task.get(task.id)


class _CountColumn(ProgressColumn):
    def __init__(self, view: ProgressView, table_column: Column | None = None) -> None:
        super().__init__(table_column=table_column)
        self.view = view

    def render(self, task: Task) -> Text:
        stage = self.view.stage_of(task)
        if stage is None:
            return Text("")
        total = f"/{_count(stage.total)}" if stage.total is not None else ""
        return Text(f"{_count(stage.completed)}{total} {stage.unit}", style="progress.download")


class _RateColumn(ProgressColumn):
    """Units per second (or seconds per unit) and the time left, or the time taken once done."""

    def __init__(self, view: ProgressView, table_column: Column | None = None) -> None:
        super().__init__(table_column=table_column)
        self.view = view

    def render(self, task: Task) -> Text:
        stage = self.view.stage_of(task)
        if stage is None:
            return Text("")
        now = self.view.clock()
        rate = stage.rate(now)
        if stage.ended:
            return Text(
                f"done in {_clock(stage.ended_at - stage.began_at)}", style="progress.elapsed"
            )
        if rate is None:  # nothing done yet: how long it has been going
            return Text(f"{_clock(now - stage.began_at)} so far", style="progress.elapsed")
        eta = stage.eta_s(now)
        left = f", ETA {_clock(eta)}" if eta is not None else ""
        return Text(f"{_rate(rate, stage.unit)}{left}", style="progress.remaining")


class StepLogHandler(logging.Handler):
    """Turns Prefect's "Finished in state ..." task-run records into `view.step_finished`."""

    def __init__(self, view: ProgressView) -> None:
        super().__init__(level=logging.INFO)
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        name = getattr(record, "task_run_name", None)
        if name and message.startswith("Finished in state "):
            state = message.removeprefix("Finished in state ").split("(", 1)[0].strip()
            self.view.step_finished(_TASK_RUN_SUFFIX.sub("", str(name)), state)


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _rate(per_second: float, unit: str) -> str:
    if per_second >= 1:
        return f"{per_second:.2f} {unit}/s"
    per_unit = 1 / per_second
    return f"{per_unit:.{1 if per_unit < 10 else 0}f} s/{unit.removesuffix('s')}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _clock(seconds: float) -> str:
    """1:04:12, or 4:01 under an hour."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
