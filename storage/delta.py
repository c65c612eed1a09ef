"""Delta Lake tables (delta-rs, no JVM): the nightly exports downstream teams read from Spark,
Databricks, Trino, Polars or DuckDB.

Layout under the storage root: `delta/<name>/`, a Delta table of the schema
storage.schemas.DELTA_TABLES declares: `_delta_log/` (one JSON entry per version, a checkpoint
every 100) and the Parquet data files.

One export, one commit. `commit_version` replaces the table's rows in a single Delta commit whose
`userMetadata` (what Spark's DESCRIBE HISTORY shows) is a JSON object: the run id, how many
versions are kept and the caller's figures. delta-rs writes the data files first and the commit
last, as one atomic create of the next `_delta_log/<version>.json`: until it lands readers see the
previous version, and a process killed before it leaves only files no version references, which
the next commit's vacuum deletes. A run whose id is already in an export's metadata commits
nothing again, so a rerun after a crash between the commit and the end of its flow adds no
version.

History. The last `keep_versions` exports stay readable by version (time travel); the data files
of older ones are vacuumed, and so are data files no version references (a killed write's).
delta-rs's vacuum decides which files (retention 0 with the kept versions named); `_vacuum` says
why it deletes them itself. Version numbers go up by one an export: version N is the (N+1)th.
The log is kept: time travel to a version needs the log from a checkpoint at or before it, and
delta-rs's expired-log cleanup cuts the log by age (`delta.logRetentionDuration`, 30 days),
which a weekly export keeping 7 versions outlives. An entry is a few KB.

Callers hold the storage root's lock (Store.exclusive, as every flow run does): vacuum at
retention 0 would delete the files of a write in progress.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, write_deltalake

from storage.schemas import DELTA_TABLES, LINEAGE_COLUMN
from storage.store import MissingTableError, Store

# Checkpoints as usual, but the log is never cut by age (the module docstring says why).
_KEEP_LOG = PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)
# Keys of a commit's metadata that commit_version sets itself.
RESERVED_KEYS = ("run_id", "keep_versions")


@dataclass(frozen=True)
class DeltaCommit:
    version: int  # the Delta version holding the run's export
    created: bool  # False: the run had committed it before, and nothing was written


@dataclass(frozen=True)
class _Export:
    version: int
    timestamp: datetime
    metadata: dict[str, object]


class UnknownDeltaTableError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown delta table {name!r}; delta tables: {', '.join(sorted(DELTA_TABLES))}"
        )


class VersionNotKeptError(LookupError):
    """A version that was vacuumed or never written; the message names the kept ones."""


def table_path(store: Store, name: str) -> Path:
    """`delta/<name>/` under the storage root."""
    if name not in DELTA_TABLES:
        raise UnknownDeltaTableError(name)
    return store.root / "delta" / name


def exists(store: Store, name: str) -> bool:
    return DeltaTable.is_deltatable(str(table_path(store, name)))


def existing_tables(store: Store) -> list[str]:
    """The delta tables written so far."""
    return [name for name in DELTA_TABLES if exists(store, name)]


def commit_version(
    store: Store,
    name: str,
    data: pa.Table | pa.RecordBatchReader,
    *,
    run_id: str,
    metadata: Mapping[str, str | int | float],
    keep_versions: int,
) -> DeltaCommit:
    """Replace the rows of delta table `name` with `data` in one commit of run `run_id`, then
    vacuum all but the last `keep_versions` exports; the version the run's export is.

    `data` takes the table's declared columns (extra ones are dropped); `run_id` is stamped on
    every row. `metadata` (figures of the export: counts, what it was made from) goes into the
    commit's metadata beside the run id. If an export already carries `run_id`, nothing is
    written and that export's version comes back with `created` False."""
    if keep_versions < 1:
        raise ValueError(f"keep_versions must be at least 1, got {keep_versions}")
    if not run_id:
        raise ValueError(f"delta table {name!r}: a commit needs the run's id")
    body = {**_checked_metadata(name, metadata), "run_id": run_id, "keep_versions": keep_versions}
    path = table_path(store, name)
    if exists(store, name):
        done = next((e for e in _exports(DeltaTable(path)) if e.metadata["run_id"] == run_id), None)
        if done is not None:
            _vacuum(DeltaTable(path), path)  # what a crash after that commit may have left undone
            return DeltaCommit(done.version, created=False)
    path.mkdir(parents=True, exist_ok=True)
    write_deltalake(
        str(path),
        _conformed(data, DELTA_TABLES[name], run_id, name),
        mode="overwrite",
        schema_mode="overwrite",  # a schema changed in genair_core.tables lands as a version
        commit_properties=CommitProperties(
            custom_metadata={"userMetadata": json.dumps(body, sort_keys=True)}
        ),
        post_commithook_properties=_KEEP_LOG,
    )
    table = DeltaTable(path)
    version = next(e.version for e in reversed(_exports(table)) if e.metadata["run_id"] == run_id)
    _vacuum(table, path)
    return DeltaCommit(version, created=True)


def read_version(
    store: Store,
    name: str,
    version: int | None = None,
    *,
    columns: list[str] | None = None,
    filter: pc.Expression | None = None,
) -> pa.Table:
    """The rows of a kept version of delta table `name` (the current one if None), with only
    `columns` and the rows `filter` selects if given. VersionNotKeptError for a version that is
    not kept, MissingTableError before the first commit."""
    dataset = _open(store, name, version).to_pyarrow_dataset()
    table = dataset.to_table(columns=columns, filter=filter)
    declared = DELTA_TABLES[name]
    return table.cast(pa.schema([declared.field(column) for column in table.column_names]))


def arrow_dataset(store: Store, name: str, version: int | None = None) -> ds.Dataset:
    """A kept version of delta table `name` (the current one if None) as an Arrow dataset over
    exactly that version's files: what `genair sql` registers as a view."""
    return _open(store, name, version).to_pyarrow_dataset()


def current_version(store: Store, name: str) -> int | None:
    """The version of the latest export of delta table `name`; None before the first."""
    if not exists(store, name):
        return None
    exports = _exports(DeltaTable(table_path(store, name)))
    return exports[-1].version if exports else None


def commits(store: Store, name: str) -> list[dict[str, object]]:
    """The kept exports of delta table `name`, newest first: {version, timestamp (UTC),
    metadata (the commit's: run_id, keep_versions and the caller's figures)}; none before the
    first commit."""
    if not exists(store, name):
        return []
    kept = _kept(_exports(DeltaTable(table_path(store, name))))
    return [
        {"version": e.version, "timestamp": e.timestamp, "metadata": e.metadata}
        for e in reversed(kept)
    ]


def rows_where(
    store: Store, name: str, column: str, value: str, version: int | None = None
) -> tuple[dict[str, object], list[dict[str, object]]] | None:
    """A kept export of delta table `name` (the current one if `version` is None), as `commits`
    gives it, and, as dicts, its rows whose `column` equals `value`; None before the first
    commit. VersionNotKeptError for a version that is not kept."""
    kept = commits(store, name)
    if not kept:
        return None
    rows = read_version(store, name, version, filter=pc.field(column) == value)
    commit = kept[0] if version is None else next(c for c in kept if c["version"] <= version)
    return commit, rows.to_pylist()


def _open(store: Store, name: str, version: int | None) -> DeltaTable:
    path = table_path(store, name)
    if not exists(store, name):
        raise MissingTableError(f"delta table {name!r} has not been written yet ({path})")
    table = DeltaTable(path)
    if version is None:
        return table
    exports = _exports(table)
    kept = [e.version for e in _kept(exports)]
    governing = max((e.version for e in exports if e.version <= version), default=None)
    if version > table.version() or governing not in kept:
        listed = ", ".join(map(str, kept)) or "none"
        raise VersionNotKeptError(
            f"delta table {name!r} has no version {version} to read; it keeps versions {listed} "
            "(the latest exports; older ones are vacuumed)"
        )
    table.load_as_version(version)
    return table


def _exports(table: DeltaTable) -> list[_Export]:
    """The commits commit_version made, oldest first (not the vacuum's own)."""
    found = []
    for commit in table.history():
        try:
            metadata = json.loads(commit.get("userMetadata", ""))
        except json.JSONDecodeError:
            continue
        if isinstance(metadata, dict) and "run_id" in metadata and "keep_versions" in metadata:
            when = datetime.fromtimestamp(commit["timestamp"] / 1000, tz=UTC)
            found.append(_Export(commit["version"], when, metadata))
    return sorted(found, key=lambda e: e.version)


def _kept(exports: list[_Export]) -> list[_Export]:
    """The exports the latest one keeps (its `keep_versions`), oldest first."""
    if not exports:
        return []
    return exports[-int(exports[-1].metadata["keep_versions"]) :]


def _vacuum(table: DeltaTable, path: Path) -> None:
    """Delete the data files of every version the kept exports do not need, and those of writes
    that never committed.

    delta-rs's vacuum decides which files (retention 0, the kept versions named); they are
    deleted here rather than by its own deleting run, which logs itself as two more versions
    (VACUUM START, VACUUM END) and lists the files of vacuumed versions again until their
    tombstones expire (a week): every export and every rerun would add two versions. Spark's
    VACUUM without vacuum logging leaves the log alike."""
    kept = [e.version for e in _kept(_exports(table))]
    unreferenced = table.vacuum(
        retention_hours=0,
        dry_run=True,
        enforce_retention_duration=False,
        full=True,  # also the files no commit references: a killed write's
        keep_versions=kept,
    )
    for relative in unreferenced:
        (path / relative).unlink(missing_ok=True)
    # A killed write can also leave the data file it was writing, staged by delta-rs's object
    # store as `<file>#<part>`, which vacuum does not list.
    for staged in path.glob("*.parquet#*"):
        staged.unlink(missing_ok=True)


def _conformed(
    data: pa.Table | pa.RecordBatchReader, schema: pa.Schema, run_id: str, name: str
) -> pa.RecordBatchReader:
    """`data` in `schema`'s columns and types, every row's run_id set to `run_id`, batch by batch
    (a reader is streamed, never collected)."""
    reader = data.to_reader() if isinstance(data, pa.Table) else data
    content = [column for column in schema.names if column != LINEAGE_COLUMN]
    missing = [column for column in content if column not in reader.schema.names]
    if missing:
        raise ValueError(f"delta table {name!r}: the data has no columns {missing}")

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            stamped = batch.select(content).append_column(
                LINEAGE_COLUMN, pa.repeat(pa.scalar(run_id, pa.string()), batch.num_rows)
            )
            yield stamped.cast(schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def _checked_metadata(
    name: str, metadata: Mapping[str, str | int | float]
) -> dict[str, str | int | float]:
    for key, value in metadata.items():
        if key in RESERVED_KEYS:
            raise ValueError(f"delta table {name!r}: commit metadata key {key!r} is set by genair")
        if not isinstance(value, str | int | float):
            raise TypeError(
                f"delta table {name!r}: commit metadata {key!r} is a {type(value).__name__}, "
                "not a str, int or float"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"delta table {name!r}: commit metadata {key!r} is {value}")
    return dict(metadata)
