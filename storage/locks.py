"""Run locks: one holder at a time, the holder named in the lock file, a dead holder's lock taken
over, and nothing a dead holder started left running.

    with hold(root / ".genair.lock", on_wait=say_waiting, guard=True) as dead_owner:
        ...  # dead_owner: the LockOwner of a run that died holding the lock, or None

The lock is an `flock` on the file. The kernel releases it when its holder dies, however it
dies (SIGKILL and the OOM killer included), so a dead run never blocks the next one. What the
kernel does not say is that the previous holder died: the file holds its owner's record (pid,
host, process start, command) while the lock is held and is emptied on a clean release, so a
run that takes the lock and finds a record knows that owner died holding it, and logs one line.

`guard=True` also starts a watchdog process that outlives the holder: it notes the holder's
descendant processes every GUARD_POLL_S, and if the holder dies without releasing the lock it
ends them (SIGTERM, then SIGKILL after GUARD_GRACE_S). A SIGKILLed run otherwise leaves its
children running, reparented to init: Prefect's temporary API server, engine or Dask worker
processes, still holding their memory and possibly writing under the storage root. On a clean
release the watchdog exits and ends nothing. With GENAIR_LOCK_GUARD_TRACE naming a file, the
watchdog appends the pid of each process it starts watching to it: what a test waits for before
it kills the holder, and a way to see what a guard would end.

This file runs as that watchdog (`python -I locks.py`), so it imports the standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

GUARD_POLL_S = 1.0  # how often the watchdog lists the holder's descendants
GUARD_GRACE_S = 5.0  # SIGTERM to SIGKILL
GUARD_TRACE_ENV = "GENAIR_LOCK_GUARD_TRACE"
_RELEASED = b"r"  # the holder's word to its watchdog that it released the lock cleanly

logger = logging.getLogger(__name__)

# The lock files held and the watchdog pipes open in this process. A child made by fork() (not
# spawn) would otherwise keep both: the lock held, and its watchdog blind, after this process dies.
_HELD_FDS: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or held) a lock: enough to find the process and to tell a reused pid."""

    pid: int
    host: str
    started_at: str  # the process's start, ISO 8601 UTC
    command: str

    @classmethod
    def this_process(cls) -> LockOwner:
        started = _start_time(os.getpid())
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=started.isoformat(timespec="seconds") if started else "unknown",
            command=shlex.join(sys.argv) if sys.argv and sys.argv[0] else sys.executable,
        )

    @classmethod
    def parse(cls, text: str) -> LockOwner | None:
        """The owner a lock file names; None when it names none (released cleanly)."""
        if not text.strip():
            return None
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as err:  # a record cut short by a crash while writing it
            return cls(pid=0, host="?", started_at="?", command=f"(unreadable record: {err})")

    def is_running(self) -> bool:
        """Whether this process still runs: same host, live pid, same start time."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False
        started = _start_time(self.pid)
        return started is not None and started.isoformat(timespec="seconds") == self.started_at

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started_at}: {self.command}"


@contextlib.contextmanager
def hold(
    path: Path,
    *,
    on_wait: Callable[[LockOwner | None], None] | None = None,
    guard: bool = False,
) -> Iterator[LockOwner | None]:
    """Hold the lock at `path` for the block; yield the owner of a run that died holding it (its
    lock is taken over, with a warning saying so) or None. While another process holds it,
    `on_wait(that owner)` is called once, then this waits. `guard`: end this process's
    descendants if it dies in the block (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    _HELD_FDS.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(LockOwner.parse(_read(fd)))
            fcntl.flock(fd, fcntl.LOCK_EX)
        dead = LockOwner.parse(_read(fd))
        if dead is not None:
            state = "still runs but" if dead.is_running() else "died and"
            logger.warning(
                "%s: taking over the lock from a run that %s never released it (%s)",
                path,
                state,
                dead,
            )
        _write(fd, _record())
        watchdog = _start_guard() if guard else None
        try:
            yield dead
        finally:
            if watchdog is not None:
                _stop_guard(*watchdog)
            os.ftruncate(fd, 0)  # released cleanly: the next holder finds no owner
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _HELD_FDS.discard(fd)
        os.close(fd)


def read_owner(path: Path) -> LockOwner | None:
    """The owner a lock file names (the holder, or a run that died holding it), or None."""
    try:
        return LockOwner.parse(Path(path).read_text())
    except FileNotFoundError:
        return None


def _record() -> str:
    return json.dumps(asdict(LockOwner.this_process()), sort_keys=True) + "\n"


def _read(fd: int) -> str:
    return os.pread(fd, 1 << 16, 0).decode(errors="replace")


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)
    os.fsync(fd)


# -- the watchdog ------------------------------------------------------------------------------


def _start_guard() -> tuple[subprocess.Popen, int]:
    """Start the watchdog of this process; return it and the pipe end that keeps it waiting.

    The pipe's write end is this process's alone (not inherited by children: PEP 446), so it
    closes exactly when this process dies or stops the guard. The watchdog is a session of its
    own: a signal to the holder's whole process group (Ctrl-C, `kill -- -PGID`, up to SIGKILL)
    leaves it to end what the group's death leaves behind."""
    read_end, write_end = os.pipe()
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(os.getpid()), str(read_end)],
            pass_fds=(read_end,),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(read_end)
    _HELD_FDS.add(write_end)
    return watchdog, write_end


def _stop_guard(watchdog: subprocess.Popen, write_end: int) -> None:
    try:
        with contextlib.suppress(BrokenPipeError):  # the watchdog is gone already
            os.write(write_end, _RELEASED)
    finally:
        _HELD_FDS.discard(write_end)
        os.close(write_end)
    watchdog.wait()


def _guard(holder: int, pipe: int) -> None:
    """Wait for the holder's word or death; on death end every process it left behind."""
    seen: dict[int, int] = {}  # pid -> start ticks, to never signal a reused pid
    trace = os.environ.get(GUARD_TRACE_ENV)
    while True:
        found = _descendants([holder], exclude=os.getpid())
        if trace and found.keys() - seen.keys():
            with open(trace, "a") as handle:
                handle.writelines(f"{pid}\n" for pid in found.keys() - seen.keys())
        seen.update(found)
        ready, _, _ = select.select([pipe], [], [], GUARD_POLL_S)
        if ready:
            if os.read(pipe, 1) == _RELEASED:
                return
            break  # end of file: the holder died holding the lock
    left = _still_running(seen)
    left.update(_descendants(list(left), exclude=os.getpid()))
    for sig, wait in ((signal.SIGTERM, GUARD_GRACE_S), (signal.SIGKILL, GUARD_GRACE_S)):
        for pid, ticks in left.items():
            if _ticks(pid) == ticks:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            left = _still_running(left)
            if not left:
                return
            time.sleep(0.1)


def _descendants(roots: list[int], exclude: int) -> dict[int, int]:
    """Every living descendant of `roots` (not `exclude`) with its start ticks."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(entry.name))
                ticks[int(entry.name)] = int(stat[19])
    found: dict[int, int] = {}
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child != exclude and child not in found:
                found[child] = ticks[child]
                todo.append(child)
    return found


def _still_running(processes: dict[int, int]) -> dict[int, int]:
    return {pid: t for pid, t in processes.items() if _ticks(pid) == t}


def _ticks(pid: int) -> int | None:
    stat = _stat(pid)
    # A zombie has exited; its parent (if alive) will reap it.
    return int(stat[19]) if stat is not None and stat[0] != "Z" else None


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: [state, ppid, ...]; field 22 (start ticks) is
    item 19. None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and ")"


def _start_time(pid: int) -> datetime | None:
    """When the process started (UTC, to the second), from /proc; None when it is gone."""
    ticks = _ticks(pid)
    if ticks is None:
        return None
    try:
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    seconds = boot + ticks / os.sysconf("SC_CLK_TCK")
    return datetime.fromtimestamp(round(seconds), UTC)


if __name__ == "__main__":
    _guard(int(sys.argv[1]), int(sys.argv[2]))
