"""Prefect's temporary API server, started in a session of its own.

With no server configured (`PREFECT_API_URL` unset), Prefect starts a temporary one as a child
of the genair process, in its process group. A signal sent to the whole group (Ctrl-C in a
terminal, `kill -- -PGID`, `timeout`) then stops the server in the same instant as genair, and
genair's way out (the flow run marked Crashed, its last logs and events) meets a closed port:
every call retried for a minute, and the run reported failed instead of interrupted. In a
session of its own the server hears only genair, which stops it at exit (Prefect's atexit
handler); should genair die first, the run lock's watchdog ends it (storage/locks.py).
"""

from __future__ import annotations

import subprocess
from functools import partial
from types import SimpleNamespace
from unittest import mock


def start_temporary_server_in_own_session() -> None:
    """Make the temporary server Prefect starts on first use (if it starts one) a session
    leader. Call once the run's environment is set (Prefect reads it at import)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return
    from prefect.server.api import server as prefect_server  # the server app: only when used

    class OwnSessionServer(prefect_server.SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            # Prefect offers no option for it: its module's Popen, for this call only.
            own_session = SimpleNamespace(Popen=partial(subprocess.Popen, start_new_session=True))
            with mock.patch.object(prefect_server, "subprocess", own_session):
                return super()._run_uvicorn_command()

    # One instance per port: from now on Prefect's `SubprocessASGIServer()` returns this one
    # (or the server this process already runs, left as it is).
    OwnSessionServer()
