"""Where every table lives and how it is written.

Layout under the storage root (injected, so tests use a temporary folder):

    tables/<name>.parquet                    one Parquet file per table (storage.schemas)
    datasets/<name>/<partition>/part-<key>.parquet
                                             tables written a batch at a time, one file per
                                             batch key: a retried batch replaces its own part
    manifests/<step>.json                    what a finished step read and wrote
    runs/<run id>.parquet                    one row per run: its flow, inputs, versions, state
                                             (storage.runs)
    logs/genair-<time>-<pid>.log             the log of a `genair` command (storage.runs)
    models/recommenders/<run>/               a recommender run's checkpoints and best weights
                                             (storage.checkpoints)
    delta/<name>/                            the nightly exports as Delta Lake tables, one
                                             version per run (storage.delta)

Writes are atomic: rows stream into `<name>.parquet.<random>.tmp` beside the target and the file
is renamed over the target only when complete, so a crash leaves the previous table intact and
never a half-written one.

Every row carries the run that wrote it (`run_id`, storage.schemas.LINEAGE_COLUMN), stamped here
from the run id the store is given; reads leave it out unless asked for by name. Everything else
in a file depends only on the rows, and a table's hash (`TableInfo.sha256`, what step
fingerprints read) is that of the file as written without the lineage column, kept in the file's
footer: a step run twice on the same inputs leaves tables of the same hash, and the steps
downstream of it stay up to date.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from storage import locks
from storage.schemas import (
    LINEAGE_COLUMN,
    PART_DATASETS,
    TABLES,
    VECTOR_COLUMN,
    schema_for,
    with_lineage,
)

COMPRESSION = "zstd"
# Footer key of the SHA-256 of a table file as written without its lineage column.
CONTENT_SHA256_KEY = "genair.content_sha256"


class UnknownTableError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown table {name!r}; known tables: {', '.join(sorted(TABLES))}")


class MissingTableError(FileNotFoundError):
    """A step needs a table that no earlier step has written."""


@dataclass(frozen=True)
class TableInfo:
    name: str
    rows: int
    sha256: str  # of the file as written without the lineage column (see the module docstring)
    part: str | None = None  # "<partition>/<key>" for one part of a part dataset


@dataclass
class StepManifest:
    """Proof that a step finished: its input fingerprint and what it wrote."""

    step: str
    fingerprint: str
    outputs: dict[str, TableInfo]
    summary: dict[str, object] = field(default_factory=dict)
    completed_at: str = ""
    run_id: str | None = None  # the run that wrote the outputs

    def to_json(self) -> str:
        body = asdict(self)
        return json.dumps(body, indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StepManifest:
        body = json.loads(text)
        body["outputs"] = {k: TableInfo(**v) for k, v in body["outputs"].items()}
        return cls(**body)


class Store:
    """The tables of one storage root. `run_id` is stamped on every row written through this
    store (None: rows written outside any run, whose lineage column is null)."""

    def __init__(self, root: Path, run_id: str | None = None) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self.rows_read = 0  # rows read through this store, for the run summary's "rows in"

    @contextlib.contextmanager
    def exclusive(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the storage root's lock (`.genair.lock`): two runs over the same tables wait for
        each other instead of racing (whatever started them: a schedule, a backfill, a shell).
        The lock of a run that died is taken over with a warning, and whatever that run started
        is ended (storage.locks)."""
        wait = None if on_wait is None else lambda _owner: on_wait()
        with locks.hold(self.root / ".genair.lock", on_wait=wait, guard=True):
            yield

    # -- paths -------------------------------------------------------------------------------
    def tables_dir(self) -> Path:
        """`tables/`: one Parquet file per whole table."""
        return self.root / "tables"

    def table_path(self, name: str) -> Path:
        if name not in TABLES:
            raise UnknownTableError(name)
        return self.tables_dir() / f"{name}.parquet"

    def manifest_path(self, step: str) -> Path:
        return self.root / "manifests" / f"{step}.json"

    def manifests(self) -> list[StepManifest]:
        """Every step's manifest, in step name order."""
        paths = sorted((self.root / "manifests").glob("*.json"))
        return [StepManifest.from_json(path.read_text()) for path in paths]

    def runs_dir(self) -> Path:
        """`runs/`: one file per run, and a folder per run of its steps (storage.runs)."""
        return self.root / "runs"

    def run_path(self, run_id: str) -> Path:
        return self.runs_dir() / f"{_safe_name(run_id)}.parquet"

    def step_record_path(self, run_id: str, step: str) -> Path:
        return self.runs_dir() / _safe_name(run_id) / "steps" / f"{_safe_name(step)}.json"

    def exists(self, name: str) -> bool:
        return self.table_path(name).is_file()

    def existing_tables(self) -> list[str]:
        return [name for name in TABLES if self.exists(name)]

    def dataset_dir(self, name: str) -> Path:
        if name not in PART_DATASETS:
            raise UnknownTableError(name)
        return self.root / "datasets" / name

    def part_path(self, name: str, partition: str, key: str) -> Path:
        return self.dataset_dir(name) / _safe_name(partition) / f"part-{_safe_name(key)}.parquet"

    def part_paths(self, name: str, partition: str | None = None) -> list[Path]:
        base = self.dataset_dir(name)
        pattern = f"{_safe_name(partition)}/part-*.parquet" if partition else "*/part-*.parquet"
        return sorted(base.glob(pattern))

    def recommenders_dir(self) -> Path:
        """`models/recommenders/`: one folder per recommender run."""
        return self.root / "models" / "recommenders"

    def recommender_dir(self, run_name: str) -> Path:
        """`models/recommenders/<run>/`: a run's checkpoints and its published best weights
        (layout: storage.checkpoints)."""
        return self.recommenders_dir() / _safe_name(run_name)

    def checkpoint_dir(self, run_name: str, run_id: str) -> Path:
        """`models/recommenders/<run>/checkpoints-<run_id>/`: one folder per run key, so a run
        whose inputs or settings changed starts afresh instead of resuming another key's epochs."""
        return self.recommender_dir(run_name) / f"checkpoints-{_safe_name(run_id)}"

    def best_weights_path(self, run_name: str) -> Path:
        return self.recommender_dir(run_name) / "best.safetensors"

    def prune_checkpoints(self, run_name: str, keep_run_id: str) -> None:
        """Delete the run's checkpoint folders of every other run key."""
        keep = self.checkpoint_dir(run_name, keep_run_id)
        for stale in self.recommender_dir(run_name).glob("checkpoints-*"):
            if stale != keep:
                shutil.rmtree(stale, ignore_errors=True)

    def report_path(self, name: str) -> Path:
        return self.root / "reports" / f"{_safe_name(name)}.md"

    def write_report(self, name: str, markdown: str) -> Path:
        path = self.report_path(name)
        atomic_write_bytes(path, markdown.encode())
        return path

    def existing_datasets(self) -> list[str]:
        return [name for name in PART_DATASETS if self.part_paths(name)]

    # -- writing -----------------------------------------------------------------------------
    def write_table(self, name: str, table: pa.Table) -> TableInfo:
        """Write a whole table atomically (its columns cast to the table's schema)."""
        schema = schema_for(TABLES, name, table.schema)
        with self._writers({name: (self.table_path(name), schema)}) as writers:
            writers[name].write_table(self._stamped(table, schema, name))
        return self.table_info(name)

    def write_part(
        self, name: str, partition: str, key: str, table: pa.Table | list[dict]
    ) -> TableInfo:
        """Write one batch's part of a dataset atomically, replacing an earlier part of that key.

        `table` may be a list of row dicts; a sized schema then takes its size from the first
        row's vector."""
        if isinstance(table, list):
            table = _from_rows(PART_DATASETS, name, table)
        schema = schema_for(PART_DATASETS, name, table.schema)
        path = self.part_path(name, partition, key)
        with self._writers({name: (path, schema)}) as writers:
            writers[name].write_table(self._stamped(table, schema, name))
        return TableInfo(
            name=name, rows=table.num_rows, sha256=content_sha256(path), part=f"{partition}/{key}"
        )

    def delete_part(self, name: str, partition: str, key: str) -> None:
        """Remove a part written by an earlier attempt of a batch that now writes none."""
        self.part_path(name, partition, key).unlink(missing_ok=True)

    def read_parts(
        self,
        name: str,
        partition: str | None = None,
        columns: list[str] | None = None,
        filter: pc.Expression | None = None,
    ) -> pa.Table | None:
        """Every part of a dataset (of one partition if given), or None if none is written."""
        paths = self.part_paths(name, partition)
        if not paths:
            return None
        parts = ds.dataset([str(p) for p in paths], format="parquet")
        table = parts.to_table(columns=columns, filter=filter)
        self.rows_read += table.num_rows
        return _declared_columns(table, PART_DATASETS, name, columns)

    def write_streams(
        self, names: Sequence[str], batches: Iterable[tuple[str, list[dict]]]
    ) -> dict[str, TableInfo]:
        """Stream row batches tagged with their table into several tables.

        Every table in `names` is written, empty if no rows arrive for it. If the stream raises,
        no table is replaced. The finished files are renamed into place one after another, so a
        crash in that instant can leave a new table beside an old one: the step's manifest,
        written last, is what marks the step done, and a rerun redoes it.
        """
        targets = {name: (self.table_path(name), with_lineage(TABLES[name])) for name in names}
        with self._writers(targets) as writers:
            for name, rows in batches:
                if name not in writers:
                    raise UnknownTableError(name)
                if rows:
                    table = pa.Table.from_pylist(rows, schema=TABLES[name])
                    writers[name].write_table(self._stamped(table, targets[name][1], name))
        return {name: self.table_info(name) for name in names}

    def _stamped(self, table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
        """`table` in `schema`'s columns and types, its lineage column set to this store's run
        (or, outside a run, kept as the rows have it, else null)."""
        if self.run_id is not None or LINEAGE_COLUMN not in table.column_names:
            lineage = pa.repeat(pa.scalar(self.run_id, pa.string()), table.num_rows)
            if LINEAGE_COLUMN in table.column_names:
                table = table.drop_columns([LINEAGE_COLUMN])
            table = table.append_column(LINEAGE_COLUMN, lineage)
        return _conform(table, schema, name)

    @contextlib.contextmanager
    def _writers(
        self, targets: dict[str, tuple[Path, pa.Schema]]
    ) -> Iterator[dict[str, _TableWriter]]:
        temps: dict[str, Path] = {}
        writers: dict[str, _TableWriter] = {}
        try:
            for name, (target, schema) in targets.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(
                    prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
                )
                os.close(fd)
                temps[name] = Path(tmp)
                writers[name] = _TableWriter(Path(tmp), schema)
            yield writers
            for writer in writers.values():
                writer.close()
            for name, tmp in temps.items():
                _fsync(tmp)
                os.replace(tmp, targets[name][0])
                _fsync(targets[name][0].parent)
        finally:
            for writer in writers.values():
                with contextlib.suppress(Exception):
                    writer.abort()
            for tmp in temps.values():
                tmp.unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------
    def read_table_where(
        self, name: str, column: str, values: Sequence[object], columns: list[str] | None = None
    ) -> pa.Table:
        """The rows of a table whose `column` is one of `values` (filter pushed into the read)."""
        path = self.table_path(name)
        if not path.is_file():
            raise MissingTableError(f"table {name!r} has not been written yet ({path})")
        table = pq.read_table(path, columns=columns, filters=[(column, "in", list(values))])
        self.rows_read += table.num_rows
        table = _as_declared(table, schema_for(TABLES, name, table.schema))
        return _declared_columns(table, TABLES, name, columns)

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        path = self.table_path(name)
        if not path.is_file():
            raise MissingTableError(f"table {name!r} has not been written yet ({path})")
        table = pq.read_table(path, columns=columns)
        self.rows_read += table.num_rows
        table = _as_declared(table, schema_for(TABLES, name, table.schema))
        return _declared_columns(table, TABLES, name, columns)

    def table_info(self, name: str) -> TableInfo:
        path = self.table_path(name)
        if not path.is_file():
            raise MissingTableError(f"table {name!r} has not been written yet ({path})")
        rows = pq.ParquetFile(path).metadata.num_rows
        return TableInfo(name=name, rows=rows, sha256=content_sha256(path))

    def table_hashes(self, names: list[str]) -> dict[str, str]:
        """{table: its TableInfo.sha256}, for the fingerprint of a step that reads `names`."""
        return {name: self.table_info(name).sha256 for name in names}

    def columns_sha256(self, name: str, columns: list[str]) -> str:
        """SHA-256 of the values of `columns` of a table, in its row order: for the fingerprint
        of a step that reads only those, which a rewrite of the same values with other
        timestamps (a refresh) leaves unchanged. Reads the columns; TableInfo.sha256 does not."""
        table = self.read_table(name, columns=columns)
        digest = hashlib.sha256(json.dumps(columns).encode())
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
        digest.update(sink.getvalue())
        return digest.hexdigest()

    # -- manifests ---------------------------------------------------------------------------
    def write_manifest(self, manifest: StepManifest) -> None:
        manifest.completed_at = datetime.now(UTC).isoformat(timespec="seconds")
        _atomic_write_text(self.manifest_path(manifest.step), manifest.to_json())

    def read_manifest(self, step: str) -> StepManifest | None:
        path = self.manifest_path(step)
        if not path.is_file():
            return None
        return StepManifest.from_json(path.read_text())

    def fresh_manifest(self, step: str, fingerprint: str) -> StepManifest | None:
        """The step's manifest if it ran on these exact inputs and its outputs are untouched."""
        manifest = self.read_manifest(step)
        if manifest is None or manifest.fingerprint != fingerprint:
            return None
        for info in manifest.outputs.values():
            if info.part is None and info.name not in TABLES:
                return None  # an older manifest that did not record which part it wrote
            if info.part is None:
                path = self.table_path(info.name)
            else:
                path = self.part_path(info.name, *info.part.rsplit("/", 1))
            if not path.is_file() or content_sha256(path) != info.sha256:
                return None
        return manifest


def fingerprint(*parts: object) -> str:
    """A stable digest of JSON-serialisable parts (configs, upstream table hashes, versions)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _TableWriter:
    """A Parquet file written a table at a time, beside a second encoding of the same rows
    without the lineage column into a hash: the file's footer keeps that hash (TableInfo.sha256),
    the hash of exactly the bytes a table without lineage would have had."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._file = pq.ParquetWriter(path, schema, compression=COMPRESSION, write_statistics=True)
        self._lineage = LINEAGE_COLUMN in schema.names
        self._hash = _HashSink()
        content = schema.remove(schema.get_field_index(LINEAGE_COLUMN)) if self._lineage else schema
        self._content = pq.ParquetWriter(
            self._hash, content, compression=COMPRESSION, write_statistics=True
        )

    def write_table(self, table: pa.Table) -> None:
        self._file.write_table(table)
        self._content.write_table(table.drop_columns([LINEAGE_COLUMN]) if self._lineage else table)

    def close(self) -> None:
        self._content.close()
        self._file.add_key_value_metadata({CONTENT_SHA256_KEY: self._hash.hexdigest()})
        self._file.close()

    def abort(self) -> None:
        for writer in (self._content, self._file):
            with contextlib.suppress(Exception):
                writer.close()


class _HashSink(io.RawIOBase):
    """A write-only file that keeps only the SHA-256 of what was written to it."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._digest.update(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def content_sha256(path: Path) -> str:
    """TableInfo.sha256 of a table file: the hash its footer keeps, or the file's own SHA-256
    for a file written without one (before tables carried their lineage)."""
    metadata = pq.read_metadata(path).metadata or {}
    stored = metadata.get(CONTENT_SHA256_KEY.encode())
    return stored.decode() if stored is not None else _sha256(path)


def _conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"table {name!r} is missing columns {missing}")
    return table.select(schema.names).cast(schema)


def _declared_columns(
    table: pa.Table, registry: dict, name: str, columns: list[str] | None
) -> pa.Table:
    """Without the lineage column, unless asked for by `columns` or declared by the table's own
    schema: the code that computes never sees which run wrote a row (`genair sql` shows it)."""
    if columns is not None or LINEAGE_COLUMN not in table.column_names:
        return table
    declared = registry[name]
    names = declared.names if isinstance(declared, pa.Schema) else declared(1).names
    return table if LINEAGE_COLUMN in names else table.drop_columns([LINEAGE_COLUMN])


def _as_declared(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Parquet has no second-resolution timestamps (they come back as ms): restore the schema."""
    return table.cast(pa.schema([schema.field(name) for name in table.column_names]))


def _from_rows(registry: dict, name: str, rows: list[dict]) -> pa.Table:
    declared = registry[name]
    if isinstance(declared, pa.Schema):
        return pa.Table.from_pylist(rows, schema=declared)
    if not rows:
        raise ValueError(f"cannot size the schema of {name!r} from no rows")
    column = VECTOR_COLUMN[name]
    return pa.Table.from_pylist(rows, schema=declared(len(rows[0][column])))


def _safe_name(text: str) -> str:
    """A file name for a model id or batch key: keeps [A-Za-z0-9._=-], replaces the rest."""
    return re.sub(r"[^A-Za-z0-9._=-]", "_", text)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write a file whole or not at all: `write` fills a temp file beside it, which is fsynced
    and renamed over `path`, then the folder is fsynced (a rename is durable only once it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _fsync(Path(tmp))
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """atomic_write of a small file's bytes."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (a rename is durable only once its folder is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
