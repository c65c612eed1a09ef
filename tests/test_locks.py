"""The run lock (storage.locks): who holds it, taking over a killed holder's, waiting for a live
one, and the guard that ends a killed holder's child processes. These tests start processes."""

import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from subprocess import PIPE, Popen

from storage import locks

HOLD_LOCK = """
import os, subprocess, sys, time
from pathlib import Path
from storage.locks import GUARD_TRACE_ENV, hold
with hold(sys.argv[1], guard=sys.argv[2] == "guard"):
    child = subprocess.Popen(["sleep", "600"])
    trace, deadline = Path(os.environ[GUARD_TRACE_ENV]), time.monotonic() + 120
    while sys.argv[2] == "guard" and time.monotonic() < deadline:  # until the guard watches it
        if trace.exists() and str(child.pid) in trace.read_text().split():
            break
        time.sleep(0.05)
    print(child.pid, flush=True)
    if sys.argv[3] == "hold":
        time.sleep(600)
print("released", flush=True)
"""


def hold_lock_in_a_process(lock: Path, *, guard: bool, release: bool) -> tuple[Popen, int]:
    """A python process that holds `lock` and starts `sleep 600`; returns it and sleep's pid,
    once a guard's watchdog watches it (the watchdog lists what it watches in `<lock>.trace`)."""
    proc = Popen(
        [
            sys.executable,
            "-c",
            HOLD_LOCK,
            str(lock),
            "guard" if guard else "-",
            "release" if release else "hold",
        ],
        stdout=PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, locks.GUARD_TRACE_ENV: f"{lock}.trace"},
    )
    return proc, int(proc.stdout.readline())


def watched(lock: Path, pid: int) -> bool:
    """Whether the watchdog of `lock`'s holder watches (or watched) `pid`."""
    trace = Path(f"{lock}.trace")
    return trace.exists() and str(pid) in trace.read_text().split()


# The checks below that a process is *not* ended wait NOT_ENDED_S for it to end. Nothing is left
# that could end it (no watchdog was started, or it exited before the holder did), so the window
# only has to let a signal sent before that point take effect: the kernel delivers a SIGTERM or
# SIGKILL and the process turns zombie within milliseconds, a loaded machine's scheduler ticks
# included; two seconds is a thousand times that.
NOT_ENDED_S = 2.0


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_a_lock_names_its_holder_and_is_cleared_on_release(tmp_path, caplog):
    lock = tmp_path / "run.lock"
    with locks.hold(lock) as dead:
        owner = locks.read_owner(lock)
        assert dead is None
        assert owner.pid == os.getpid()
        assert owner.host == socket.gethostname()
        assert owner.is_running()
        assert "pytest" in owner.command
    assert lock.read_text() == ""
    assert locks.read_owner(lock) is None
    with locks.hold(lock) as dead:
        assert dead is None
    assert "taking over" not in caplog.text


def test_the_lock_of_a_killed_holder_is_taken_over_with_one_line_naming_it(tmp_path, caplog):
    lock = tmp_path / "run.lock"
    holder, sleeper = hold_lock_in_a_process(lock, guard=False, release=False)
    assert locks.read_owner(lock).pid == holder.pid
    holder.kill()
    holder.wait()
    try:
        with caplog.at_level(logging.WARNING, logger="storage.locks"), locks.hold(lock) as dead:
            assert dead.pid == holder.pid
            assert not dead.is_running()
            assert locks.read_owner(lock).pid == os.getpid()
        assert not gone_within(sleeper, NOT_ENDED_S)  # without a guard, a child outlives it
    finally:
        os.kill(sleeper, signal.SIGKILL)
    lines = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert len(lines) == 1
    assert f"died and never released it (pid {holder.pid} on {socket.gethostname()}" in lines[0]


def test_a_second_holder_is_told_who_holds_the_lock_then_waits(tmp_path):
    lock = tmp_path / "run.lock"
    holder, sleeper = hold_lock_in_a_process(lock, guard=False, release=False)
    waited_for = []

    def told(owner: locks.LockOwner | None) -> None:
        waited_for.append(owner)
        holder.terminate()  # SIGTERM: Python dies without its finally, the kernel frees the lock

    try:
        with locks.hold(lock, on_wait=told):
            # Taken only once the holder is gone: it exits (then turns zombie) right after the
            # kernel frees its lock, so it is reaped here at once.
            assert holder.wait(timeout=60) == -signal.SIGTERM
    finally:
        holder.kill()
        holder.wait()
        os.kill(sleeper, signal.SIGKILL)
    assert [owner.pid for owner in waited_for] == [holder.pid]


def test_a_guarded_holder_killed_takes_its_children_with_it(tmp_path):
    lock = tmp_path / "run.lock"
    holder, sleeper = hold_lock_in_a_process(lock, guard=True, release=False)
    assert watched(lock, sleeper)
    holder.kill()
    holder.wait()
    assert gone_within(sleeper, 15)


def test_a_guarded_holder_that_releases_ends_nothing(tmp_path):
    lock = tmp_path / "run.lock"
    holder, sleeper = hold_lock_in_a_process(lock, guard=True, release=True)
    assert holder.stdout.readline() == "released\n"
    assert holder.wait() == 0
    try:
        assert locks.read_owner(lock) is None
        assert watched(lock, sleeper)  # and the holder waited for its watchdog to exit
        assert not gone_within(sleeper, NOT_ENDED_S)  # left running, as without a guard
    finally:
        os.kill(sleeper, signal.SIGKILL)
