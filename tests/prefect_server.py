"""A real `prefect server start` on a free localhost port, and the processes a test starts beside
it (a worker, which starts flow-run processes), all ended when the test ends, failed or not.

    with prefect_server(tmp_path) as server:
        server.processes.start("worker", [BIN / "prefect", "worker", "start", ...], server.env)
        runs = server.post("/flow_runs/filter")

A busy machine makes the server answer 503 (its SQLite database timed out) now and then. The
test's own API calls go through Prefect's HTTP client, which retries 429, 502 and 503 with
exponential backoff (PREFECT_CLIENT_MAX_RETRIES times: 2, 4, 8, 16, 32 s); a call that creates
a flow run carries an idempotency key, so a retried one cannot create a second run. The CLI
commands and workers a test starts use the same client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from prefect.client.base import PrefectHttpxSyncClient

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Processes:
    """Processes started for one test, each the leader of a process group of its own (which its
    children join: Prefect starts flow runs without a new session). `stop` ends every group and
    every descendant still known, SIGTERM first, then SIGKILL."""

    folder: Path
    started: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, args: list, env: dict[str, str], **popen) -> subprocess.Popen:
        """Start `args` with stdout and stderr in `<folder>/<name>.log`."""
        with open(self.folder / f"{name}.log", "w") as log:
            proc = subprocess.Popen(
                [str(a) for a in args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **popen,
            )
        self.started[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def stop(self, grace_s: float = 30) -> list[str]:
        """End everything started; return what was still alive after SIGKILL (nothing, if all
        went well), as 'pid name' lines."""
        tree: list[psutil.Process] = []
        for proc in self.started.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                tree.extend(psutil.Process(proc.pid).children(recursive=True))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.started.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            for child in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.send_signal(sig)
            deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 10)
            for proc in self.started.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            _, alive = psutil.wait_procs(tree, timeout=max(deadline - time.monotonic(), 0.1))
            tree = alive
        leaders = [p for p in self.started.values() if p.poll() is None]
        return [f"{p.pid} {p.args[0]}" for p in leaders] + [f"{p.pid} {p.name()}" for p in tree]


@dataclass
class Server:
    api: str  # http://127.0.0.1:<port>/api
    env: dict[str, str]  # for processes that talk to it: PREFECT_API_URL, its own PREFECT_HOME
    processes: Processes
    client: PrefectHttpxSyncClient  # retries on 429, 502, 503; raises on other errors

    def post(self, path: str, body: dict | None = None) -> object:
        return self.client.post(f"{self.api}{path}", json=body or {}).json()

    def get(self, path: str) -> object:
        return self.client.get(f"{self.api}{path}").json()

    def create_flow_run(self, deployment_id: str, **parameters: object) -> dict:
        """A run of the deployment, created once however often the request is retried."""
        body = {"parameters": parameters, "idempotency_key": f"test-{uuid.uuid4()}"}
        return self.post(f"/deployments/{deployment_id}/create_flow_run", body)


@contextlib.contextmanager
def prefect_server(folder: Path, startup_timeout_s: float = 180) -> Iterator[Server]:
    """A Prefect server with its own PREFECT_HOME under `folder`; its log and those of the other
    processes the test starts are `folder/<name>.log`. Fails the test if anything started
    outlives it."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(folder / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)
    processes = Processes(folder)
    try:
        proc = processes.start(
            "server",
            [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
            env,
        )
        api = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start: {processes.log('server')}")
            time.sleep(1)
        with PrefectHttpxSyncClient(timeout=30) as client:
            yield Server(api, {**env, "PREFECT_API_URL": api}, processes, client)
    finally:
        survivors = processes.stop()
    assert not survivors, f"processes left running: {survivors}"
