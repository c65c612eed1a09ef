"""Every environment variable genair sets, in one place. A value already in the environment wins
(LD_PRELOAD is the one variable composed with what is there).

The variables are read by Prefect and vLLM when they are imported or started, and by the
processes they spawn, which inherit this process's environment; so each group is set at its own
moment, by the code that is about to start them:

- `set_run_environment`: the `genair` command, before a flow (and with it Prefect and vLLM) is
  imported. Prefect's settings, telemetry off, and where vLLM's and genair's loggers write.
- `set_engine_environment`: the vLLM engine, before vLLM's first import and before each `LLM()`.
  Offline models, no usage stats, the CPU worker's thread binding, the engine core in this
  process, and a socket folder of this process's own.
- `preload_for_worker`: the vLLM engine, before an `LLM()` on the CPU when
  `llm.preload_libraries` is on: tcmalloc and Intel OpenMP in LD_PRELOAD for the spawned worker.

Nothing else in genair_core, storage, tasks or flows writes to `os.environ`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import psutil

SOCKET_FOLDER_PREFIX = "genair-vllm-"


def set_run_environment(prefect_startup_timeout_s: int, *, verbose: bool = False) -> None:
    """Environment for Prefect and vLLM, set before they are imported (a flow's import imports
    both); `verbose`: vLLM's log shows on the terminal, so only its warnings."""
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(prefect_startup_timeout_s)
    )
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # vLLM logs on stdout by default, in this process and in its workers: on stderr, which
    # the CLI's run console sends to the log file (the workers inherit it). Every engine start
    # writes dozens of INFO lines: into the log, or, with --verbose, only its warnings on the
    # terminal.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING" if verbose else "INFO")
    # genair_core and storage log through the standard library (they know no Prefect): into the
    # run's logs (the lock takeover line among them).
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "genair_core,storage")


def set_engine_environment() -> None:
    """Environment for vLLM, set before its first import and before each `LLM()`: read by the
    spawned engine processes too."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are local folders only
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The default binding reserves one core for the frontend: on 2 cores that halves the
    # throughput (measured: docs/engines.md). Bind all of them.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind_list())
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # The engine core in this process, not in a process of its own: vLLM 0.32's EngineCore
    # process outlives a parent killed by SIGKILL (and keeps its worker and memory), while the
    # workers it starts watch a pipe from their parent and exit when it closes. It costs no
    # speed and starts faster (measured: docs/engines.md).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM binds its ZeroMQ sockets as files in the temp folder and never removes them (8 a
    # run, one nightly run after another); a folder of this process's own, removed at its exit.
    if "VLLM_RPC_BASE_PATH" not in os.environ:
        os.environ["VLLM_RPC_BASE_PATH"] = _socket_folder()


def preload_for_worker(libraries: list[str]) -> None:
    """`libraries` first in LD_PRELOAD, unless an OpenMP runtime or tcmalloc is there already."""
    # The CPU worker is a spawned process, so LD_PRELOAD set here reaches it; this process is
    # already running and is not affected. vLLM adds torch's libgomp itself when no OpenMP
    # runtime is listed, and refuses libgomp and libiomp together; an explicit setting wins.
    current = os.environ.get("LD_PRELOAD", "")
    if not libraries or "libiomp" in current or "libtcmalloc" in current:
        return
    if "libgomp" in current:  # left by an earlier vLLM start-up in this process
        current = ":".join(p for p in current.split(":") if "libgomp" not in p)
    os.environ["LD_PRELOAD"] = ":".join([*libraries, *filter(None, current.split(":"))])


def cpu_bind_list() -> str:
    """The CPUs this process may run on, as vLLM's bind list ("0-1", "0,2-5")."""
    cpus = sorted(os.sched_getaffinity(0))
    ranges: list[list[int]] = []
    for c in cpus:
        if ranges and c == ranges[-1][1] + 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


# A socket's path holds at most 107 bytes (sun_path); vLLM names each socket by a uuid4 (36).
SOCKET_PATH_MAX = 107
_SOCKET_NAME_CHARS = 1 + 36


def _socket_folder() -> str:
    """A temp folder named by this process's pid, removed at its exit: in the temp folder, or
    in /tmp when that one's path is too long for the sockets in it. A process killed with
    SIGKILL runs no exit handler: the folders of processes no longer running are removed
    here."""
    temp = socket_parent(Path(tempfile.gettempdir()), os.getpid())
    for stale in temp.glob(f"{SOCKET_FOLDER_PREFIX}*"):
        pid = stale.name[len(SOCKET_FOLDER_PREFIX) :]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = temp / f"{SOCKET_FOLDER_PREFIX}{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)  # left by a dead process that had this pid
    folder.mkdir(mode=0o700)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(folder)


def socket_parent(temp: Path, pid: int) -> Path:
    """`temp`, or /tmp if a socket in `temp`'s folder for `pid` would have too long a path."""
    folder = temp / f"{SOCKET_FOLDER_PREFIX}{pid}"
    if len(os.fsencode(folder)) + _SOCKET_NAME_CHARS <= SOCKET_PATH_MAX:
        return temp
    return Path("/tmp")


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
