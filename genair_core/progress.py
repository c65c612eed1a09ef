"""Progress events: a plain channel from the pipeline's code to whoever shows them (the CLI).

    progress.begin("archetypes", total=1682, unit="items")
    progress.advance("archetypes", 64, detail="batch 3 of 27")
    progress.note("archetypes", "starting the LLM engine")
    progress.end("archetypes")

    with progress.listening(listener):   # listener(event) for every event, from any thread
        run()

A stage named "parent/part" is a part of the stage "parent" (one recommender run's epochs within
"recommenders"). Every call returns at once when nobody listens. Listeners are called in the
emitting thread, one event at a time (under a lock); a listener that raises is dropped, with a
warning in the log, and the work goes on.

Work whose parts finish one by one inside a library call (vLLM's requests within a batch) runs
inside `counting(stage, amount)`: `engine_progress()` hands the library a tqdm-like bar that
advances the stage as each request finishes, and the end of the block advances what was not
reported yet, or takes back what was if the block failed (a retry reports it again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

EventKind = Literal["begin", "advance", "note", "end"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    stage: str
    total: float | None = None  # begin: units planned (None: unknown)
    completed: float = 0  # begin: units already done (a resumed run)
    unit: str = ""  # begin: what a unit is ("items", "runs", "epochs")
    amount: float = 0  # advance: units done since the last advance (negative: taken back)
    detail: str = ""  # advance, note: what is happening now
    at: float = field(default_factory=time.monotonic)


Listener = Callable[[Event], None]

_listeners: list[Listener] = []
_lock = threading.RLock()
_local = threading.local()


def begin(
    stage: str, total: float | None = None, unit: str = "items", *, completed: float = 0
) -> None:
    """`stage` starts: `total` units are planned, `completed` of them done already."""
    if _listeners:
        _emit(Event("begin", stage, total=total, completed=completed, unit=unit))


def advance(stage: str, amount: float = 1, detail: str = "") -> None:
    """`amount` more units of `stage` are done."""
    if _listeners:
        _emit(Event("advance", stage, amount=amount, detail=detail))


def note(stage: str, detail: str) -> None:
    """What `stage` is doing now, without units done (an engine starting)."""
    if _listeners:
        _emit(Event("note", stage, detail=detail))


def end(stage: str, detail: str = "") -> None:
    """`stage` is over (done, or stopped early: a run's early stopping)."""
    if _listeners:
        _emit(Event("end", stage, detail=detail))


def listening_now() -> bool:
    return bool(_listeners)


@contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """Deliver every event to `listener` inside the block."""
    with _lock:
        _listeners.append(listener)
    try:
        yield listener
    finally:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)


def _emit(event: Event) -> None:
    with _lock:
        for listener in list(_listeners):
            try:
                listener(event)
            except Exception:
                if listener in _listeners:  # a nested emit may have dropped it already
                    _listeners.remove(listener)
                log.warning("progress listener %r failed; dropped", listener, exc_info=True)


@dataclass(eq=False)  # scopes are removed by identity, never an equal outer one
class _Counting:
    stage: str
    amount: float
    reported: float = 0


@contextmanager
def counting(stage: str, amount: float, detail: str = "") -> Iterator[None]:
    """`amount` units of `stage` done by the block; reported as they finish if the library
    inside reports them (`engine_progress`), else all at once when it ends."""
    scope = _Counting(stage, amount)
    stack = _scopes()
    stack.append(scope)
    try:
        yield
    except BaseException:
        if scope.reported:
            advance(stage, -scope.reported)
        raise
    else:
        advance(stage, amount - scope.reported, detail)
    finally:
        stack.remove(scope)


def _scopes() -> list[_Counting]:
    if not hasattr(_local, "scopes"):
        _local.scopes = []
    return _local.scopes


def engine_progress() -> Callable[..., RequestBar] | bool:
    """What to pass as vLLM's `use_tqdm`: a factory of tqdm-like bars that advance the current
    `counting` block of this thread as requests finish; False (no bar at all) when nobody
    listens or no block is open."""
    if not _listeners or not _scopes():
        return False
    scope = _scopes()[-1]

    def make_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> RequestBar:
        return RequestBar(scope, iterable, **kwargs)

    return make_bar


class RequestBar:
    """The part of tqdm that vLLM's offline engine uses (`update`, `n`, `format_dict`,
    `postfix`, `refresh`, `close`, and iteration for the prompt-rendering pass, which reports
    nothing), reporting finished requests to a `counting` block."""

    def __init__(
        self, scope: _Counting, iterable: Iterable[Any] | None = None, **kwargs: Any
    ) -> None:
        self._scope = scope
        self._iterable = iterable
        self.total = kwargs.get("total")
        self.desc = kwargs.get("desc", "")
        self.postfix = kwargs.get("postfix", "")
        self.n = 0
        self._started = time.monotonic()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable if self._iterable is not None else ())

    def __len__(self) -> int:
        return len(self._iterable) if self._iterable is not None else 0  # type: ignore[arg-type]

    @property
    def format_dict(self) -> dict[str, float]:
        # vLLM divides token counts by the elapsed time: never 0.
        return {"elapsed": max(time.monotonic() - self._started, 1e-6), "n": self.n}

    def update(self, n: float = 1) -> None:
        self.n += n
        step = min(n, self._scope.amount - self._scope.reported)
        if step > 0:
            self._scope.reported += step
            advance(self._scope.stage, step)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass
