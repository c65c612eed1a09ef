"""The `runs` table: one row per run over a storage root, the lineage every stored row points to
through its `run_id` column.

    runs/<run id>.parquet    one row (storage.schemas.RUNS): written when the run takes the storage
                             lock (state Running) and rewritten when it ends (Completed, Failed or
                             Crashed)
    runs/<run id>/steps/<step>.json
                             each step the run went through: ran or up to date, seconds, rows
                             read and written (the run summary's figures)
    logs/genair-<UTC time>-<pid>.log
                             the log of one `genair` command that ran a flow (Prefect, vLLM,
                             torch, and whatever its processes wrote)

A run killed with SIGKILL leaves its row in state Running. While the run held the storage lock no
other run could start, so the next run to take the lock marks every Running row it finds Crashed
(`abandon_runs`); until then `owner_state` tells a live owner from a dead one by the process id
and host the row records.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from storage.schemas import RUNS
from storage.sources import input_fingerprint
from storage.store import Store, atomic_write, atomic_write_bytes

RUNNING, COMPLETED, FAILED, CRASHED = "Running", "Completed", "Failed", "Crashed"


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    flow: str
    parameters: dict[str, object]
    state: str
    started_at: datetime
    inputs: dict[str, str] = field(default_factory=dict)  # {input: sha256 at the start}
    model_id: str | None = None
    prompt_version: str | None = None
    code_version: str = ""
    config_hash: str = ""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    ended_at: datetime | None = None
    error: str | None = None

    def row(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "flow": self.flow,
            "parameters": json.dumps(self.parameters, sort_keys=True, default=str),
            "state": self.state,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "error": self.error,
            "inputs": json.dumps(self.inputs, sort_keys=True),
            "model_id": self.model_id,
            "prompt_version": self.prompt_version,
            "code_version": self.code_version,
            "config_hash": self.config_hash,
            "host": self.host,
            "pid": self.pid,
        }

    @classmethod
    def from_row(cls, row: dict[str, object]) -> RunRecord:
        return cls(
            **{
                **row,
                "parameters": json.loads(str(row["parameters"])),
                "inputs": json.loads(str(row["inputs"])),
            }
        )


@dataclass(frozen=True)
class StepRecord:
    step: str
    skipped: bool  # up to date: its manifest matched its inputs
    seconds: float
    rows_in: int  # table rows the step read
    rows_out: dict[str, int]  # {table: rows} it wrote (or, skipped, that its manifest holds)
    finished_at: str


def write_step(store: Store, run_id: str, record: StepRecord) -> None:
    text = json.dumps(asdict(record), indent=1, sort_keys=True)
    atomic_write_bytes(store.step_record_path(run_id, record.step), text.encode())


def read_steps(store: Store, run_id: str) -> list[StepRecord]:
    """The steps a run recorded, in the order they finished."""
    folder = store.step_record_path(run_id, "x").parent
    records = [StepRecord(**json.loads(p.read_text())) for p in folder.glob("*.json")]
    return sorted(records, key=lambda r: (r.finished_at, r.step))


def new_log_path(store: Store) -> Path:
    """`logs/genair-<UTC time>-<pid>.log` for a command that starts now; the folder is made."""
    logs = store.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"genair-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}.log"


def write_run(store: Store, record: RunRecord) -> None:
    """Write (or rewrite) a run's row, atomically."""
    table = pa.Table.from_pylist([record.row()], schema=RUNS)
    atomic_write(store.run_path(record.run_id), lambda tmp: pq.write_table(table, tmp))


def read_run(store: Store, run_id: str) -> RunRecord | None:
    path = store.run_path(run_id)
    if not path.is_file():
        return None
    return RunRecord.from_row(pq.read_table(path).to_pylist()[0])


def read_runs(store: Store) -> list[RunRecord]:
    """Every recorded run, the newest first."""
    records = [
        RunRecord.from_row(pq.read_table(path).to_pylist()[0])
        for path in store.runs_dir().glob("*.parquet")
    ]
    return sorted(records, key=lambda r: r.started_at, reverse=True)


def finish_run(store: Store, record: RunRecord, state: str, error: str | None = None) -> RunRecord:
    """Record how a run ended."""
    done = replace(record, state=state, ended_at=datetime.now(UTC), error=error)
    write_run(store, done)
    return done


def abandon_runs(store: Store, current: str) -> list[RunRecord]:
    """Mark Crashed every run still recorded as Running but `current`. Call it holding the
    storage lock: no other run can be alive then, whatever its row says."""
    abandoned = []
    for record in read_runs(store):
        if record.state == RUNNING and record.run_id != current:
            error = (
                f"abandoned: its process (pid {record.pid} on {record.host}) was gone when run "
                f"{current} took the storage lock"
            )
            abandoned.append(finish_run(store, record, CRASHED, error))
    return abandoned


def input_snapshot(store: Store) -> dict[str, str]:
    """{"table <name>": TableInfo.sha256} of every stored table, and for a part dataset a digest
    of its parts' paths, sizes and times (storage.sources.input_fingerprint)."""
    snapshot = {f"table {name}": store.table_info(name).sha256 for name in store.existing_tables()}
    for name in store.existing_datasets():
        snapshot[f"dataset {name}"] = input_fingerprint(store.part_paths(name))
    return snapshot


def owner_state(record: RunRecord) -> str:
    """A run's state as far as can be told now: a Running row whose process is gone on this host
    reads "Crashed (owner gone)"; one from another host "Running (on <host>)"."""
    if record.state != RUNNING:
        return record.state
    if record.host != socket.gethostname():
        return f"Running (on {record.host})"
    return RUNNING if _alive(record.pid) else "Crashed (owner gone)"


def _alive(pid: int) -> bool:
    """Whether `pid` runs; a killed process its parent has not reaped yet is a zombie, and dead."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def code_version() -> str:
    """The git commit of the checkout the code runs from (`-dirty` with uncommitted changes), or
    the installed package's version outside a checkout."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / ".git").exists():
        try:
            done = subprocess.run(
                ["git", "-C", str(checkout), "describe", "--always", "--dirty", "--abbrev=40"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass  # no git on this machine: the package version below
    try:
        return "genair " + importlib.metadata.version("genair")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def storage_status(store: Store, last: int = 10) -> dict[str, object]:
    """What the storage root holds, for `genair status` (JSON-ready): every table with its rows,
    hash and the run and step that wrote it (from the step manifests), the `last` runs newest
    first with their state as far as can be told now (`owner_state`), and the open failures:
    runs that failed or crashed with no completed run of their flow since, and the items in
    `archetype_failures` by reason."""
    written = {}
    for manifest in sorted(store.manifests(), key=lambda m: m.completed_at):
        for info in manifest.outputs.values():
            if info.part is None:
                written[info.name] = (manifest, info)
    tables = []
    for name in store.existing_tables():
        info = store.table_info(name)
        manifest, recorded = written.get(name, (None, None))
        tables.append(
            {
                "table": name,
                "rows": info.rows,
                "sha256": info.sha256,
                "step": manifest.step if manifest else None,
                "run_id": manifest.run_id if manifest else None,
                "written_at": manifest.completed_at if manifest else None,
                "matches_manifest": recorded is not None and recorded.sha256 == info.sha256,
            }
        )
    for name in store.existing_datasets():
        paths = store.part_paths(name)
        newest = max(paths, key=lambda p: p.stat().st_mtime_ns)
        tables.append(
            {
                "table": name,
                "rows": sum(pq.read_metadata(p).num_rows for p in paths),
                "parts": len(paths),
                "sha256": input_fingerprint(paths),
                "written_at": datetime.fromtimestamp(newest.stat().st_mtime, UTC).isoformat(
                    timespec="seconds"
                ),
            }
        )
    runs = read_runs(store)
    shown = [_run_status(record) for record in runs[:last]]
    open_runs, settled = [], set()
    for record in runs:  # newest first: a completed run settles its flow's earlier failures
        state = owner_state(record)
        if state == COMPLETED:
            settled.add(record.flow)
        elif state != RUNNING and not state.startswith(RUNNING) and record.flow not in settled:
            open_runs.append(_run_status(record))
    failed_items: dict[str, int] = {}
    failures = store.read_parts("archetype_failures", columns=["reason"])
    for reason in failures["reason"].to_pylist() if failures is not None else []:
        failed_items[reason] = failed_items.get(reason, 0) + 1
    return {
        "root": str(store.root),
        "tables": tables,
        "runs": shown,
        "runs_total": len(runs),
        "open_failures": {"runs": open_runs, "archetype_failures": failed_items},
    }


def _run_status(record: RunRecord) -> dict[str, object]:
    return {
        "run_id": record.run_id,
        "flow": record.flow,
        "state": owner_state(record),
        "started_at": record.started_at.isoformat(timespec="seconds"),
        "ended_at": record.ended_at.isoformat(timespec="seconds") if record.ended_at else None,
        "seconds": (record.ended_at - record.started_at).total_seconds()
        if record.ended_at
        else None,
        "error": record.error,
        "host": record.host,
        "pid": record.pid,
        "parameters": record.parameters,
        "model_id": record.model_id,
        "code_version": record.code_version,
    }
